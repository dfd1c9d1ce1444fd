"""Two worker processes sharing one database: keys reach every worker at once, and
usage records survive a graceful shutdown (one per request, none lost, none doubled).

The server is shared by the module; the shutdown test stops it, so it comes last.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from fakes import FakeOpenAIUpstream
from support import CumuloServer, openai_deployment, wait_until


@pytest.fixture(scope="module")
def server(
    upstream: FakeOpenAIUpstream, cumulo_factory: Callable[..., CumuloServer]
) -> CumuloServer:
    return cumulo_factory(
        {
            "server": {"workers": 2},
            # The writers would not flush on their own during these tests: only shutdown writes.
            "usage": {"flush_interval_s": 3600, "batch_size": 1000},
            "models": [
                {"name": "chat-echo", "deployments": [openai_deployment(upstream, "echo")]},
                {"name": "chat-slow", "deployments": [openai_deployment(upstream, "slow:1")]},
                {
                    "name": "embed",
                    "kind": "embedding",
                    "deployments": [openai_deployment(upstream, "embed")],
                },
            ],
        }
    )


def test_a_new_key_works_at_once_on_every_worker(server: CumuloServer) -> None:
    # Each request opens a new connection, which either worker may accept.
    statuses = []
    for i in range(10):
        key = server.create_key(f"fresh-{i}")
        with httpx.Client(base_url=server.url) as http:
            resp = http.get("/v1/models", headers={"Authorization": f"Bearer {key.token}"})
        statuses.append(resp.status_code)
    assert statuses == [200] * 10


def test_a_revoked_key_is_refused_by_every_worker_within_a_second(server: CumuloServer) -> None:
    key = server.create_key("soon-revoked")
    with server.admin() as admin:
        assert admin.delete(f"/admin/keys/{key.id}").status_code == 200
    time.sleep(1.5)  # each worker polls the keys table every second
    for _ in range(4):
        with httpx.Client(base_url=server.url) as http:
            resp = http.get("/v1/models", headers={"Authorization": f"Bearer {key.token}"})
        assert resp.status_code == 401


def test_sigterm_right_after_n_requests_loses_no_usage_record(
    server: CumuloServer, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    key = server.create_key("load")
    headers = {"Authorization": f"Bearer {key.token}"}
    hello = [{"role": "user", "content": "hello there"}]
    requests = (
        [("/v1/chat/completions", {"model": "chat-echo", "messages": hello})] * 30
        + [("/v1/chat/completions", {"model": "chat-echo", "messages": hello, "stream": True})] * 10
        + [("/v1/embeddings", {"model": "embed", "input": ["a b", "c"]})] * 5
        + [("/v1/chat/completions", {"model": "no-such-model", "messages": hello})] * 4
    )

    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:

        def send(item: tuple[str, dict[str, object]]) -> int:
            return http.post(item[0], json=item[1]).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(send, requests))
        assert Counter(statuses) == {200: 45, 404: 4}

        # One more request is still in flight when SIGTERM arrives: it completes and counts.
        in_flight: list[int] = []
        slow_body = {"model": "chat-slow", "messages": [{"role": "user", "content": marker}]}
        slow = threading.Thread(
            target=lambda: in_flight.append(
                http.post("/v1/chat/completions", json=slow_body).status_code
            )
        )
        slow.start()
        assert wait_until(lambda: bool(upstream.received(marker)), timeout=10)
        assert server.sql("SELECT COUNT(*) FROM usage") == [(0,)]  # all still in memory
        server.stop()
        slow.join(10)
    assert in_flight == [200]

    rows = server.sql(
        "SELECT model, status, stream, prompt_tokens FROM usage WHERE key_id = ?", (key.id,)
    )
    assert len(rows) == len(requests) + 1
    assert Counter((model, status, stream) for model, status, stream, _ in rows) == {
        ("chat-echo", 200, 0): 30,
        ("chat-echo", 200, 1): 10,
        ("embed", 200, 0): 5,
        ("_unknown", 404, 0): 4,  # names not in the catalog share one bucket
        ("chat-slow", 200, 0): 1,
    }
    assert "Traceback" not in server.output()
    assert sum(tokens for *_, tokens in rows) == 30 * 2 + 10 * 2 + 5 * 3 + 1
