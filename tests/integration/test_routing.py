"""Routing end to end: two fake upstreams on loopback, one `cumulo serve` subprocess.

`primary` is an upstream this module stops (and brings back on the same port)
while cumulo is under load; the shared `upstream` fixture is the second one.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes import FakeOpenAIUpstream
from support import ApiKey, CumuloServer, openai_deployment, wait_until

BREAKER = {"consecutive_failures": 3, "cooldown_s": 1.0}


def dep(upstream: FakeOpenAIUpstream, behaviour: str, name: str) -> dict[str, Any]:
    return {**openai_deployment(upstream, behaviour), "name": name}


def routing_config(primary: FakeOpenAIUpstream, secondary: FakeOpenAIUpstream) -> dict[str, Any]:
    def model(name: str, *deployments: dict[str, Any], **extra: Any) -> dict[str, Any]:
        routing = {"backoff_s": 0.01, "breaker": BREAKER, **extra.pop("routing", {})}
        return {"name": name, "deployments": list(deployments), "routing": routing, **extra}

    return {
        "usage": {"flush_interval_s": 0.1},
        "models": [
            model("ha", dep(primary, "slow:0.1", "primary"), dep(secondary, "echo", "secondary")),
            model("rate-limited", dep(secondary, "ratelimit-once:0.3", "rl")),
            model(
                "broken",
                dep(secondary, "status:503", "broken"),
                fallbacks=["backup"],
                routing={"retries": 0},
            ),
            model("backup", dep(secondary, "echo", "backup")),
            model(
                "stream-early",
                dep(secondary, "disconnect:0", "dies-early"),
                dep(secondary, "echo", "steady"),
            ),
            model(
                "stream-late",
                dep(secondary, "disconnect:2", "dies-late"),
                dep(secondary, "echo", "steady"),
            ),
            model("hang", dep(secondary, "slow:3", "hang")),
        ],
    }


@pytest.fixture(scope="module")
def primaries() -> Iterator[list[FakeOpenAIUpstream]]:
    """The first deployment's upstream; a test appends the one it restarts."""
    started = [FakeOpenAIUpstream().start()]
    yield started
    for fake in started:
        fake.stop()


@pytest.fixture(scope="module")
def server(
    primaries: list[FakeOpenAIUpstream],
    upstream: FakeOpenAIUpstream,
    cumulo_factory: Callable[..., CumuloServer],
) -> CumuloServer:
    return cumulo_factory(routing_config(primaries[0], upstream))


@pytest.fixture
def key(server: CumuloServer, request: pytest.FixtureRequest) -> ApiKey:
    return server.create_key(request.node.name[:200])


@pytest.fixture
def http(server: CumuloServer, key: ApiKey) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {key.token}"}
    ) as c:
        yield c


def body(model: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def deployments(server: CumuloServer) -> dict[str, dict[str, Any]]:
    """`/admin/deployments` as {model: {label: deployment view}}."""
    with server.admin() as admin:
        resp = admin.get("/admin/deployments")
    assert resp.status_code == 200, resp.text
    return {m["model"]: {d["label"]: d for d in m["deployments"]} for m in resp.json()["data"]}


def usage(server: CumuloServer, key: ApiKey, expect: int) -> list[tuple[Any, ...]]:
    query = (
        "SELECT model, served_model, deployment, attempts, status FROM usage "
        "WHERE key_id = ? ORDER BY id"
    )
    assert wait_until(lambda: len(server.sql(query, (key.id,))) >= expect, timeout=10)
    return server.sql(query, (key.id,))


def metric(server: CumuloServer, name: str, **labels: str) -> float | None:
    """One sample of `GET /metrics` (no key needed), or None if absent."""
    resp = httpx.get(server.url + "/metrics")
    assert resp.status_code == 200
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def sse_data(resp: httpx.Response) -> list[str]:
    return [line.removeprefix("data: ") for line in resp.text.splitlines() if line]


async def _load(
    server: CumuloServer, key: ApiKey, primary: FakeOpenAIUpstream, total: int, concurrency: int
) -> list[httpx.Response]:
    """`total` requests to `ha`, `concurrency` at a time; `primary` stops after its 60th."""
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=server.url,
        timeout=30,
        limits=limits,
        headers={"Authorization": f"Bearer {key.token}"},
    ) as client:

        async def one(i: int) -> httpx.Response:
            async with gate:
                return await client.post("/v1/chat/completions", json=body("ha", f"request {i}"))

        async def kill() -> None:
            await asyncio.to_thread(wait_until, lambda: len(primary.received()) >= 60, 20, 0.005)
            await asyncio.to_thread(primary.stop)

        killer = asyncio.create_task(kill())
        responses = await asyncio.gather(*(one(i) for i in range(total)))
        await killer
    return responses


def test_first_deployment_dying_under_load_loses_no_request_and_its_circuit_recovers(
    server: CumuloServer, key: ApiKey, primaries: list[FakeOpenAIUpstream]
) -> None:
    primary = primaries[0]
    responses = asyncio.run(_load(server, key, primary, total=200, concurrency=50))
    assert [r.status_code for r in responses] == [200] * 200, [r.text for r in responses][:3]
    served = Counter(
        (r.headers["x-cumulo-deployment"], r.headers["x-cumulo-attempts"]) for r in responses
    )
    assert set(served) <= {
        ("primary", "1"),
        ("secondary", "1"),
        ("secondary", "2"),
        ("secondary", "3"),
    }
    assert served[("primary", "1")] >= 10  # before the kill
    assert served[("secondary", "2")] >= 3  # failed over at once while the circuit was closed
    assert all(r.headers["x-cumulo-model"] == "ha" for r in responses)
    rows = usage(server, key, expect=200)
    assert Counter((d, str(a)) for _, _, d, a, _ in rows) == served

    ha = deployments(server)["ha"]
    assert ha["primary"]["state"] == "open" and ha["primary"]["failures"] >= 3
    assert ha["secondary"]["state"] == "closed"
    assert metric(server, "cumulo_circuit_state", model="ha", deployment="primary") == 2
    assert metric(server, "cumulo_circuit_opened_total", model="ha", deployment="primary") >= 1

    # The upstream comes back on its port; after the cooldown a half-open probe closes the circuit.
    primaries.append(FakeOpenAIUpstream(port=primary.port).start())
    time.sleep(BREAKER["cooldown_s"] + 0.1)
    with httpx.Client(
        base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {key.token}"}
    ) as http:
        resp = http.post("/v1/chat/completions", json=body("ha"))
    assert resp.status_code == 200
    assert (resp.headers["x-cumulo-deployment"], resp.headers["x-cumulo-attempts"]) == (
        "primary",
        "1",
    )
    assert deployments(server)["ha"]["primary"]["state"] == "closed"


def test_429_retry_after_is_honoured(http: httpx.Client, marker: str) -> None:
    started = time.monotonic()
    resp = http.post("/v1/chat/completions", json=body("rate-limited", marker))
    assert resp.status_code == 200, resp.text
    assert time.monotonic() - started >= 0.3
    assert (resp.headers["x-cumulo-deployment"], resp.headers["x-cumulo-attempts"]) == ("rl", "2")


def test_fallback_model_serves_and_is_recorded(
    http: httpx.Client, server: CumuloServer, key: ApiKey, marker: str
) -> None:
    resp = http.post("/v1/chat/completions", json=body("broken", marker))
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["content"] == f"echo: {marker}"
    assert {
        k: resp.headers[k] for k in ("x-cumulo-model", "x-cumulo-deployment", "x-cumulo-attempts")
    } == {"x-cumulo-model": "backup", "x-cumulo-deployment": "backup", "x-cumulo-attempts": "2"}
    assert usage(server, key, expect=1) == [("broken", "backup", "backup", 2, 200)]


def test_stream_dying_before_the_first_byte_fails_over(http: httpx.Client, marker: str) -> None:
    resp = http.post("/v1/chat/completions", json=body("stream-early", marker, stream=True))
    assert resp.status_code == 200
    assert (resp.headers["x-cumulo-deployment"], resp.headers["x-cumulo-attempts"]) == (
        "steady",
        "2",
    )
    assert '"error"' not in resp.text and sse_data(resp)[-1] == "[DONE]"
    assert marker in resp.text


def test_stream_dying_after_the_first_byte_ends_with_an_error_event(
    http: httpx.Client, server: CumuloServer, key: ApiKey
) -> None:
    resp = http.post(
        "/v1/chat/completions", json=body("stream-late", "one two three four", stream=True)
    )
    assert resp.status_code == 200
    assert (resp.headers["x-cumulo-deployment"], resp.headers["x-cumulo-attempts"]) == (
        "dies-late",
        "1",
    )
    events = sse_data(resp)
    assert events[-1] == "[DONE]" and '"upstream_error"' in events[-2]
    assert usage(server, key, expect=1) == [("stream-late", "stream-late", "dies-late", 1, 502)]


def test_client_disconnect_cancels_the_upstream_call(
    server: CumuloServer, key: ApiKey, http: httpx.Client
) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", json=body("hang"), timeout=0.3)
    # The upstream would answer after 3 s; cumulo dropped the call when the client left.
    assert wait_until(lambda: deployments(server)["hang"]["hang"]["in_flight"] == 0, timeout=2)
    assert usage(server, key, expect=1) == [("hang", None, None, 0, 499)]
    assert time.monotonic() - started < 2.5
    assert deployments(server)["hang"]["hang"]["failures"] == 0


def test_admin_deployments_shows_routing_and_needs_an_admin_key(
    server: CumuloServer, http: httpx.Client
) -> None:
    assert http.get("/admin/deployments").status_code == 403
    assert httpx.get(server.url + "/admin/deployments").status_code == 401
    with server.admin() as admin:
        data = {m["model"]: m for m in admin.get("/admin/deployments").json()["data"]}
    broken = data["broken"]
    assert (broken["strategy"], broken["fallbacks"], broken["kind"]) == (
        "priority",
        ["backup"],
        "chat",
    )
    [view] = broken["deployments"]
    assert set(view) == {
        "label",
        "provider",
        "upstream_model",
        "state",
        "opened_count",
        "in_flight",
        "requests",
        "failures",
        "latency_ewma_ms",
        "ttft_ewma_ms",
        "price",
        "weight",
        "ready",
    }
    assert (
        view["label"],
        view["provider"],
        view["upstream_model"],
        view["weight"],
        view["ready"],
        view["price"],
    ) == ("broken", "openai", "status:503", 1.0, True, None)


def test_metrics_are_served_without_a_key(http: httpx.Client, server: CumuloServer) -> None:
    assert http.post("/v1/chat/completions", json=body("backup")).status_code == 200
    assert http.post("/v1/chat/completions", json=body("backup", stream=True)).status_code == 200
    resp = httpx.get(server.url + "/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert (
        metric(server, "cumulo_requests_total", model="backup", deployment="backup", status="200")
        >= 1
    )
    assert (
        metric(
            server, "cumulo_tokens_total", model="backup", deployment="backup", type="completion"
        )
        >= 1
    )
    assert (
        metric(server, "cumulo_request_duration_seconds_count", model="backup", deployment="backup")
        >= 1
    )
    assert (
        metric(
            server, "cumulo_time_to_first_token_seconds_count", model="backup", deployment="backup"
        )
        >= 1
    )
    assert metric(server, "cumulo_circuit_state", model="stream-early", deployment="steady") == 0
    assert metric(server, "cumulo_deployment_in_flight", model="backup", deployment="backup") == 0
