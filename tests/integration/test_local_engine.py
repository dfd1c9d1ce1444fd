"""The local continuous-batching engine through HTTP: `cumulo serve` with the demo model.

Two models share the same weights in one process (two engine threads):
`demo-tiny` batches up to 16 requests, `demo-one` runs one at a time with a
queue of one. Both load float32 weights so that greedy replies do not depend
on what else is in the batch (see tests/engine/test_scheduler.py).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cumulo.engine.demo import build_demo_model
from support import ApiKey, CumuloServer, wait_until

NO_ROUTING = {"retries": 0, "breaker": {"consecutive_failures": 1_000_000, "error_rate": 1.0}}
PROMPTS = [f"Tell me about clouds number {i} and {'rain ' * (i % 5)}" for i in range(32)]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, cumulo_factory: Callable[..., CumuloServer]
) -> CumuloServer:
    path = build_demo_model(tmp_path_factory.mktemp("local-engine") / "demo-tiny", seed=0)

    def local(**limits: Any) -> dict[str, Any]:
        return {"provider": "local", "path": str(path), "dtype": "float32", **limits}

    return cumulo_factory(
        {
            "usage": {"flush_interval_s": 0.1},
            "models": [
                {
                    "name": "demo-tiny",
                    "routing": NO_ROUTING,
                    "deployments": [local(max_running=16)],
                },
                {
                    "name": "demo-one",
                    "routing": NO_ROUTING,
                    "deployments": [local(max_running=1, max_queue=1)],
                },
            ],
        }
    )


@pytest.fixture(scope="module")
def key(server: CumuloServer) -> ApiKey:
    return server.create_key("local-engine")


def body(model: str, prompt: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        **extra,
    }


async def stream_text(http: httpx.AsyncClient, prompt: str) -> tuple[str, int]:
    """The streamed reply's text and completion tokens, from the SSE chunks in order."""
    parts, completion = [], -1
    req = body(
        "demo-tiny", prompt, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    async with http.stream("POST", "/v1/chat/completions", json=req) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            assert "error" not in chunk, chunk
            for choice in chunk["choices"]:
                parts.append(choice["delta"].get("content") or "")
            if chunk.get("usage"):
                completion = chunk["usage"]["completion_tokens"]
    return "".join(parts), completion


def test_32_concurrent_streams_each_get_every_token_in_order(
    server: CumuloServer, key: ApiKey
) -> None:
    auth = {"Authorization": f"Bearer {key.token}"}
    expected = []
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        for prompt in PROMPTS:
            resp = http.post("/v1/chat/completions", json=body("demo-tiny", prompt, max_tokens=12))
            assert resp.status_code == 200, resp.text
            expected.append(
                (
                    resp.json()["choices"][0]["message"]["content"],
                    resp.json()["usage"]["completion_tokens"],
                )
            )

    async def clients() -> list[tuple[str, int]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(
            base_url=server.url, headers=auth, timeout=120, limits=limits
        ) as http:
            return list(await asyncio.gather(*(stream_text(http, p) for p in PROMPTS)))

    assert asyncio.run(clients()) == expected
    with server.admin() as admin:
        engines = {e["model"]: e for e in admin.get("/admin/engine").json()["data"]}
    tiny = engines["demo-tiny"]
    assert tiny["loaded"] and tiny["max_running"] == 16 and tiny["kv_cache_bytes"] > 0
    assert tiny["total_requests"] >= 64 and tiny["total_tokens"] >= 64
    assert tiny["ttft_ms_p50"] is not None and tiny["queue_ms_p50"] is not None
    assert engines["demo-one"]["max_running"] == 1
    query = (
        "SELECT count(*) FROM usage WHERE key_id = ? AND model = 'demo-tiny' AND stream = 1 "
        "AND status = 200 AND queue_ms IS NOT NULL AND cost_usd = 0"
    )  # no compute rate
    assert wait_until(lambda: server.sql(query, (key.id,))[0][0] == len(PROMPTS), timeout=10)


def test_a_full_queue_is_429_with_retry_after_and_cancel_frees_the_slot(
    server: CumuloServer, key: ApiKey
) -> None:
    auth = {"Authorization": f"Bearer {key.token}"}
    http = httpx.Client(base_url=server.url, headers=auth, timeout=60)
    admin = server.admin()

    def engine() -> dict[str, Any]:
        data = admin.get("/admin/engine").json()["data"]
        return next(e for e in data if e["model"] == "demo-one")

    waiting_result: dict[str, Any] = {}

    def waiting_request() -> None:
        with httpx.Client(base_url=server.url, headers=auth, timeout=60) as own:
            resp = own.post("/v1/chat/completions", json=body("demo-one", "later", max_tokens=3))
        waiting_result.update(status=resp.status_code, body=resp.json())

    with http, admin:
        long = http.stream(
            "POST",
            "/v1/chat/completions",
            json=body("demo-one", "Tell me about clouds.", max_tokens=2000, stream=True),
        )
        resp = long.__enter__()
        try:
            assert resp.status_code == 200
            lines = resp.iter_lines()  # kept: closing the iterator would close the response
            next(lines)  # the first token has arrived: the stream holds the only slot
            waiter = threading.Thread(target=waiting_request)
            waiter.start()
            assert wait_until(lambda: engine()["waiting"] == 1, timeout=30), engine()
            full = http.post("/v1/chat/completions", json=body("demo-one", "no room"))
            assert full.status_code == 429
            assert int(full.headers["retry-after"]) >= 1
            assert full.json()["error"]["type"] == "rate_limit_error"
            anthropic = http.post(
                "/v1/messages",
                json={
                    "model": "demo-one",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "no room"}],
                },
            )
            assert anthropic.status_code == 429 and int(anthropic.headers["retry-after"]) >= 1
            time.sleep(0.3)
            assert waiter.is_alive()  # still queued behind the long stream
        finally:
            long.__exit__(None, None, None)  # the client goes away mid-stream
        waiter.join(60)
        assert waiting_result["status"] == 200
        assert waiting_result["body"]["usage"]["completion_tokens"] == 3
        assert wait_until(lambda: engine()["running"] == 0, timeout=10)
    rows: list[tuple[Any, ...]] = []

    def queued_row() -> bool:
        rows[:] = server.sql(
            "SELECT queue_ms FROM usage WHERE key_id = ? AND model = 'demo-one' "
            "AND status = 200 AND stream = 0",
            (key.id,),
        )
        return bool(rows)

    assert wait_until(queued_row, timeout=10)
    assert rows[0][0] is not None and rows[0][0] >= 300


def test_engine_view_needs_an_admin_key(server: CumuloServer, key: ApiKey) -> None:
    resp = httpx.get(server.url + "/admin/engine", headers={"Authorization": f"Bearer {key.token}"})
    assert resp.status_code == 403


def test_a_local_model_s_label_never_shows_its_path(
    server: CumuloServer, key: ApiKey, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The label callers, metrics and usage see is derived from the model's name."""
    resp = httpx.post(
        server.url + "/v1/chat/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {key.token}"},
        json=body("demo-tiny", "hello", max_tokens=2),
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-cumulo-deployment"] == "local:demo-tiny"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'deployment="local:demo-tiny"' in metrics and 'deployment="local:demo-one"' in metrics
    assert str(tmp_path_factory.getbasetemp()) not in metrics
    assert wait_until(
        lambda: server.sql(
            "SELECT deployment FROM usage WHERE key_id = ? AND model = 'demo-tiny'", (key.id,)
        )
    )
    labels = {row[0] for row in server.sql("SELECT deployment FROM usage")}
    assert labels <= {"local:demo-tiny", "local:demo-one", None}
