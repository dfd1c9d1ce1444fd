"""Two gateway replicas sharing one PostgreSQL database and one Redis.

Each replica is a separate `cumulo serve` process with its own CUMULO_HOME; all
they share is `database_url` and `redis_url` (with a prefix unique to the test).
A key or tenant changed through one replica is seen by the other at once, and a
limit is one limit for both.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import redis

from fakes import FakeOpenAIUpstream
from support import CumuloServer, openai_deployment, wait_until
from support.pg import postgres_database
from support.redis import REDIS_URL

HELLO = {"model": "chat-echo", "messages": [{"role": "user", "content": "hello"}]}
PRICED = {**HELLO, "model": "chat-priced"}  # $1 a token


@pytest.fixture(scope="module")
def replicas(
    upstream: FakeOpenAIUpstream, cumulo_factory: Callable[..., CumuloServer]
) -> Iterator[tuple[CumuloServer, CumuloServer]]:
    prefix = f"cumulo-test-{secrets.token_hex(6)}"
    with postgres_database() as url:
        config: dict[str, Any] = {
            "database_url": url,
            "redis_url": REDIS_URL,
            "redis_prefix": prefix,
            "usage": {"flush_interval_s": 0.1},
            "models": [
                {"name": "chat-echo", "deployments": [openai_deployment(upstream, "echo")]},
                {
                    "name": "chat-priced",
                    "deployments": [
                        openai_deployment(
                            upstream, "echo", price={"input_per_mtok": 1e6, "output_per_mtok": 1e6}
                        )
                    ],
                },
            ],
        }
        # Replicas sharing a database share the master key (key secrets for SigV4, ledger).
        env = {"CUMULO_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode()}
        a = cumulo_factory(config, **env)
        b = cumulo_factory(config, **env)
        try:
            yield a, b
        finally:
            a.stop()
            b.stop()
            r = redis.Redis.from_url(REDIS_URL)
            keys = list(r.scan_iter(match=f"{prefix}*"))
            if keys:
                r.delete(*keys)
            r.close()


def call(
    server: CumuloServer,
    token: str,
    path: str = "/v1/chat/completions",
    body: dict[str, Any] | None = None,
) -> httpx.Response:
    with httpx.Client(
        base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        if body is None:
            return http.get(path)
        return http.post(path, json=body)


def test_a_key_created_on_one_replica_works_on_the_other(
    replicas: tuple[CumuloServer, CumuloServer],
) -> None:
    a, b = replicas
    with a.admin() as admin:
        tenant = admin.post("/admin/tenants", json={"name": "shared"}).json()
        created = admin.post("/admin/keys", json={"name": "k", "tenant_id": tenant["id"]})
    assert created.status_code == 201, created.text
    assert call(b, created.json()["key"], body=HELLO).status_code == 200


def test_a_key_revoked_on_one_replica_is_refused_by_the_other_within_a_second(
    replicas: tuple[CumuloServer, CumuloServer],
) -> None:
    a, b = replicas
    with a.admin() as admin:
        created = admin.post("/admin/keys", json={"name": "doomed"}).json()
    token = created["key"]
    assert call(b, token, "/v1/models").status_code == 200  # cached on B
    with a.admin() as admin:
        assert admin.delete(f"/admin/keys/{created['id']}").status_code == 200
    assert wait_until(lambda: call(b, token, "/v1/models").status_code == 401, timeout=1.0)


def test_a_tenant_change_on_one_replica_applies_on_the_other(
    replicas: tuple[CumuloServer, CumuloServer],
) -> None:
    a, b = replicas
    with a.admin() as admin:
        tenant = admin.post("/admin/tenants", json={"name": "narrowed"}).json()
        token = admin.post("/admin/keys", json={"name": "k", "tenant_id": tenant["id"]}).json()[
            "key"
        ]
        assert call(b, token, body=HELLO).status_code == 200
        admin.patch(f"/admin/tenants/{tenant['id']}", json={"models": []})
    assert wait_until(lambda: call(b, token, body=HELLO).status_code == 404, timeout=1.0)


def test_both_replicas_enforce_one_shared_limit(
    replicas: tuple[CumuloServer, CumuloServer],
) -> None:
    a, b = replicas
    with a.admin() as admin:
        tenant = admin.post(
            "/admin/tenants", json={"name": "limited", "limits": {"rpm": 20}}
        ).json()
        token = admin.post("/admin/keys", json={"name": "k", "tenant_id": tenant["id"]}).json()[
            "key"
        ]

    def one(i: int) -> int:
        return call(a if i % 2 else b, token, body=HELLO).status_code

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        statuses = Counter(pool.map(one, range(60)))
    elapsed = time.monotonic() - started
    assert set(statuses) <= {200, 429}
    # One limit of 20, not 20 per replica. The bucket refills one request every 3 s, so
    # a burst slowed down by a busy machine may take what refilled meanwhile, and no more.
    refilled = int(elapsed / 3) + 1
    assert 19 <= statuses[200] <= 20 + refilled, (statuses, elapsed)
    assert statuses[200] < 40  # two separate limits would have let 40 through


def test_both_replicas_refuse_once_the_shared_budget_is_spent(
    replicas: tuple[CumuloServer, CumuloServer],
) -> None:
    a, b = replicas
    with a.admin() as admin:
        tenant = admin.post(
            "/admin/tenants", json={"name": "budgeted", "budget": {"usd": 10, "period": "day"}}
        ).json()
        token = admin.post("/admin/keys", json={"name": "k", "tenant_id": tenant["id"]}).json()[
            "key"
        ]
    spent = 0
    while call(a, token, body=PRICED).status_code == 200:
        spent += 1
        assert spent < 20
    assert wait_until(lambda: call(b, token, body=PRICED).status_code == 429, timeout=2.0)
