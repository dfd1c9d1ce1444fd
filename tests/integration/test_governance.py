"""Governance end to end: tenant and key limits, deployment limits, budgets, invocation
logging and alerts, through a real `cumulo serve` and the fake OpenAI upstream."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from fakes import FakeOpenAIUpstream
from support import UPSTREAM_KEY, CumuloServer, openai_deployment, start_cumulo, wait_until

HELLO = [{"role": "user", "content": "hello there"}]
_n = itertools.count()
# $1 per token: a few requests exhaust a budget of a few dollars.
EXPENSIVE = {"input_per_mtok": 1_000_000, "output_per_mtok": 1_000_000}


@pytest.fixture(scope="module")
def server(
    upstream: FakeOpenAIUpstream, cumulo_factory: Callable[..., CumuloServer]
) -> CumuloServer:
    return cumulo_factory(
        {
            "usage": {"flush_interval_s": 0.1},
            "models": [
                {"name": "chat-echo", "deployments": [openai_deployment(upstream, "echo")]},
                {"name": "chat-slow", "deployments": [openai_deployment(upstream, "slow:1")]},
                {
                    "name": "chat-priced",
                    "deployments": [openai_deployment(upstream, "echo", price=EXPENSIVE)],
                },
                {
                    "name": "chat-two",
                    "routing": {"retries": 1},
                    "deployments": [
                        openai_deployment(upstream, "echo", name="small", limits={"rpm": 2}),
                        openai_deployment(upstream, "echo", name="spare"),
                    ],
                },
            ],
        }
    )


def tenant(server: CumuloServer, **fields: Any) -> tuple[str, str]:
    """A new tenant with `fields` and one caller key: (tenant id, token)."""
    with server.admin() as admin:
        t = admin.post("/admin/tenants", json={"name": f"t{next(_n)}", **fields})
        assert t.status_code == 201, t.text
        k = admin.post("/admin/keys", json={"name": "caller", "tenant_id": t.json()["id"]})
        assert k.status_code == 201, k.text
    return t.json()["id"], k.json()["key"]


def chat(
    server: CumuloServer,
    token: str,
    model: str = "chat-echo",
    messages: list[dict[str, str]] = HELLO,
    **extra: Any,
) -> httpx.Response:
    with httpx.Client(
        base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        return http.post(
            "/v1/chat/completions", json={"model": model, "messages": messages, **extra}
        )


def test_a_tenant_rate_limit_holds_within_five_percent_under_concurrent_load(
    server: CumuloServer,
) -> None:
    _, token = tenant(server, limits={"rpm": 40})
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        statuses = Counter(
            r.status_code for r in pool.map(lambda _: chat(server, token), range(100))
        )
    # The bucket refills continuously (40 a minute): on a busy machine the burst takes long
    # enough for a request or two more to be due.
    refilled = (time.monotonic() - started) * 40 / 60
    assert set(statuses) <= {200, 429}
    assert 38 <= statuses[200] <= 42 + refilled, statuses  # 40 ± 5%, plus what refilled


def test_a_refusal_names_the_limit_with_retry_after_and_ratelimit_headers(
    server: CumuloServer,
) -> None:
    _, token = tenant(server, limits={"rpm": 1})
    ok = chat(server, token)
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-limit-requests"] == "1"
    assert ok.headers["x-ratelimit-remaining-requests"] == "0"
    refused = chat(server, token)
    assert refused.status_code == 429
    err = refused.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert "1 requests per minute" in err["message"] and "tenant" in err["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    assert refused.headers["x-ratelimit-reset-requests"]


def test_refusals_in_the_anthropic_and_bedrock_wire_formats(server: CumuloServer) -> None:
    _, token = tenant(server, limits={"rpm": 1})
    assert chat(server, token).status_code == 200
    with httpx.Client(base_url=server.url, timeout=30) as http:
        a = http.post(
            "/v1/messages",
            headers={"x-api-key": token, "anthropic-version": "2023-06-01"},
            json={"model": "chat-echo", "max_tokens": 10, "messages": HELLO},
        )
        b = http.post(
            "/model/chat-echo/converse",
            headers={"Authorization": f"Bearer {token}"},
            json={"messages": [{"role": "user", "content": [{"text": "hi"}]}]},
        )
    assert a.status_code == 429 and a.json()["error"]["type"] == "rate_limit_error"
    assert "retry-after" in a.headers
    assert b.status_code == 429 and b.headers["x-amzn-errortype"] == "ThrottlingException"
    assert "requests per minute" in b.json()["message"]


def test_a_key_limit_narrows_its_tenant_s(server: CumuloServer) -> None:
    tid, _ = tenant(server, limits={"rpm": 100})
    with server.admin() as admin:
        key = admin.post(
            "/admin/keys", json={"name": "tight", "tenant_id": tid, "limits": {"rpm": 2}}
        ).json()["key"]
    assert [chat(server, key).status_code for _ in range(3)] == [200, 200, 429]


def test_a_concurrency_limit_refuses_the_request_beyond_it(server: CumuloServer) -> None:
    _, token = tenant(server, limits={"concurrency": 2})
    with ThreadPoolExecutor(3) as pool:
        statuses = sorted(
            pool.map(lambda _: chat(server, token, "chat-slow").status_code, range(3))
        )
    assert statuses == [200, 200, 429]
    assert chat(server, token).status_code == 200  # the slots came back


def test_tokens_per_minute_count_completion_tokens(server: CumuloServer) -> None:
    _, token = tenant(server, limits={"tpm": 30})
    long = [{"role": "user", "content": "word " * 12}]
    statuses = [chat(server, token, messages=long).status_code for _ in range(4)]
    assert statuses[0] == 200 and 429 in statuses


def test_a_deployment_limit_moves_traffic_to_another_deployment(server: CumuloServer) -> None:
    _, token = tenant(server)
    served = [chat(server, token, "chat-two").headers["x-cumulo-deployment"] for _ in range(5)]
    assert served[:2] == ["small", "small"] and set(served[2:]) == {"spare"}


def test_an_exhausted_budget_refuses_further_requests_and_alerts_first(
    server: CumuloServer,
) -> None:
    tid, token = tenant(server, budget={"usd": 20, "period": "day", "soft_pct": 0.5})
    statuses = []
    for _ in range(10):
        statuses.append(chat(server, token, "chat-priced").status_code)
        if statuses[-1] != 200:
            break
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    refused = chat(server, token, "chat-priced")
    err = refused.json()["error"]
    assert refused.status_code == 429 and err["type"] == "insufficient_quota"
    assert err["code"] == "budget_exceeded" and "$20.00 per day" in err["message"]
    assert refused.headers["x-should-retry"] == "false"
    with server.admin() as admin:
        usage = admin.get("/admin/usage", params={"tenant_id": tid}).json()
        [row] = usage["by_tenant"]
        assert row["cost_usd"] >= 20
        alerts = admin.get("/admin/alerts", params={"tenant_id": tid}).json()["data"]
    assert [a["kind"] for a in alerts] == ["budget.soft_threshold"]


def test_invocations_are_logged_only_for_tenants_that_turn_it_on(server: CumuloServer) -> None:
    on, token_on = tenant(server, log_invocations=True)
    off, token_off = tenant(server)
    marker = f"marker-{time.time_ns()}"
    for token in (token_on, token_off):
        assert (
            chat(server, token, messages=[{"role": "user", "content": marker}]).status_code == 200
        )
    with server.admin() as admin:

        def logged(tid: str) -> list[dict[str, Any]]:
            return list(admin.get("/admin/invocations", params={"tenant_id": tid}).json()["data"])

        assert wait_until(lambda: logged(on), timeout=5)
        [entry] = logged(on)
        assert entry["request"] == [{"role": "user", "content": marker}]
        assert entry["response"] == f"echo: {marker}"
        assert logged(off) == []


def test_a_spent_budget_stays_spent_after_a_restart(
    upstream: FakeOpenAIUpstream, tmp_path: Path
) -> None:
    config = {
        "usage": {"flush_interval_s": 0.1},
        "models": [
            {
                "name": "chat-priced",
                "deployments": [openai_deployment(upstream, "echo", price=EXPENSIVE)],
            }
        ],
    }
    env = {"FAKE_UPSTREAM_KEY": UPSTREAM_KEY}
    first = start_cumulo(config, tmp_path, **env)
    try:
        _, token = tenant(first, budget={"usd": 5, "period": "month"})
        while chat(first, token, "chat-priced").status_code == 200:
            pass
    finally:
        first.stop()
    second = start_cumulo(config, tmp_path, **env)  # the same home: the same database
    try:
        resp = chat(second, token, "chat-priced")
        assert resp.status_code == 429 and resp.json()["error"]["code"] == "budget_exceeded"
    finally:
        second.stop()
