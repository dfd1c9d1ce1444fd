"""Redis and the database going away under a running `cumulo serve`, as callers and
operators see it: budgets stay closed when Redis loses its data, readiness reports Redis,
and the admin API answers 503 with Retry-After (never a 500, never the driver's text)
while the database is down. Outages are real: a TCP proxy between cumulo and the service
is taken down (`support.proxy`), or Redis loses this test's keys (its own prefix only).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy.engine import make_url

from fakes import FakeOpenAIUpstream
from support import UPSTREAM_KEY, CumuloServer, openai_deployment, start_cumulo, wait_until
from support.proxy import TcpProxy
from support.redis import REDIS_PORT, REDIS_URL, redis_prefix

PRICED = {"input_per_mtok": 1_000_000, "output_per_mtok": 1_000_000}  # $1 a token
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A Redis key prefix of this test's own; every key under it is deleted afterwards."""
    with redis_prefix() as name:
        yield name


def wipe(prefix: str) -> None:
    """Redis loses this platform's data (as a restart without persistence does)."""
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def start(config: dict[str, Any], workdir: Path) -> CumuloServer:
    return start_cumulo(config, workdir, FAKE_UPSTREAM_KEY=UPSTREAM_KEY)


def models(upstream: FakeOpenAIUpstream) -> list[dict[str, Any]]:
    return [
        {"name": "chat-priced", "deployments": [openai_deployment(upstream, "echo", price=PRICED)]}
    ]


def test_a_spent_budget_stays_closed_when_redis_loses_its_data(
    upstream: FakeOpenAIUpstream, prefix: str, tmp_path: Path
) -> None:
    server = start(
        {
            "redis_url": REDIS_URL,
            "redis_prefix": prefix,
            "usage": {"flush_interval_s": 0.1},
            "models": models(upstream),
        },
        tmp_path,
    )
    try:
        with server.admin() as admin:
            tenant = admin.post(
                "/admin/tenants", json={"name": "acme", "budget": {"usd": 20, "period": "day"}}
            ).json()
            key = admin.post("/admin/keys", json={"name": "app", "tenant_id": tenant["id"]}).json()
        headers = {"Authorization": f"Bearer {key['key']}"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:

            def chat() -> int:
                return http.post(
                    "/v1/chat/completions", json={"model": "chat-priced", "messages": HELLO}
                ).status_code

            assert wait_until(lambda: chat() == 429, timeout=20)  # spent: refused
            counter = redis.Redis.from_url(REDIS_URL)
            pattern = f"{prefix}:budget:tenant:{tenant['id']}:d*"

            def stored() -> bool:  # the spend is in Redis (synced every 0.5 s)
                return any(not k.endswith(b":alerted") for k in counter.scan_iter(pattern))

            assert wait_until(stored, timeout=5)
            wipe(prefix)
            # The gateway notices within a sync or two and puts the spend back.
            wait_until(stored, timeout=5)
            counter.close()
            assert [chat() for _ in range(10)] == [429] * 10
    finally:
        server.stop()
    assert "re-seeded from the usage table" in server.output()


def test_readiness_reports_redis_down_and_back(
    upstream: FakeOpenAIUpstream, prefix: str, tmp_path: Path
) -> None:
    with TcpProxy(REDIS_PORT) as proxy:
        server = start(
            {
                "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
                "redis_prefix": prefix,
                "models": models(upstream),
            },
            tmp_path,
        )
        try:
            with httpx.Client(base_url=server.url, timeout=10) as http:
                ready = http.get("/health/ready")
                assert (ready.status_code, ready.json()["checks"]["redis"]) == (200, True)
                proxy.stop()
                ready = http.get("/health/ready")
                assert ready.status_code == 503
                assert ready.json()["checks"] == {
                    "config": True,
                    "store": True,
                    "models": True,
                    "redis": False,
                }
                proxy.start()
                assert wait_until(lambda: http.get("/health/ready").status_code == 200, timeout=10)
        finally:
            server.stop()


def test_admin_calls_answer_503_with_retry_after_while_the_database_is_down(
    upstream: FakeOpenAIUpstream, postgres_url: str, tmp_path: Path
) -> None:
    database = make_url(postgres_url)
    with TcpProxy(database.port or 5432) as proxy:
        url = database.set(port=proxy.port).render_as_string(hide_password=False)
        server = start({"database_url": url, "models": models(upstream)}, tmp_path)
        try:
            with server.admin() as admin:
                calls = [
                    ("GET", "/admin/keys", None),
                    ("POST", "/admin/keys", {"name": "during-outage"}),
                    ("GET", "/admin/usage", None),
                    ("GET", "/admin/tenants", None),
                    ("POST", "/admin/tenants", {"name": "acme"}),
                    ("GET", "/admin/ledger", None),
                    ("GET", "/admin/alerts", None),
                ]
                proxy.stop()
                for method, path, body in calls:
                    resp = admin.request(method, path, json=body)
                    assert resp.status_code == 503, (path, resp.text)
                    assert resp.headers["retry-after"] == "5"
                    error = resp.json()["error"]
                    assert error["type"] == "service_unavailable"
                    assert error["message"] == "The database is unavailable; try again shortly."
                    for leak in (str(proxy.port), "127.0.0.1", "postgres", "asyncpg", "Errno"):
                        assert leak not in resp.text
                proxy.start()
                assert wait_until(lambda: admin.get("/admin/keys").status_code == 200, timeout=10)
                assert admin.post("/admin/tenants", json={"name": "acme"}).status_code == 201
        finally:
            server.stop()
