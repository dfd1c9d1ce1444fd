"""The store on a real SQLite file and a real PostgreSQL database: migrations, keys,
tenants and usage. Every test runs on both (`db_url`, tests/store/conftest.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from cumulo.governance.telemetry.usage import UsageRecord
from cumulo.store import sqlite_rows
from cumulo.store.db import MIGRATIONS, Store
from support.pg import database_names, postgres_database

T = TypeVar("T")


def with_store(url: str, fn: Callable[[Store], Awaitable[T]], migrate: bool = True) -> T:
    async def main() -> T:
        store = Store(url)
        try:
            if migrate:
                await store.migrate()
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(main())


def usage_row(**over: Any) -> dict[str, Any]:
    row = {
        "ts": time.time(),
        "key_id": "k1",
        "endpoint": "chat.completions",
        "model": "m",
        "deployment": "openai:m",
        "stream": False,
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "latency_ms": 10.0,
        "ttft_ms": None,
        "status": 200,
        "error_type": None,
        "tenant_id": None,
        "cost_usd": None,
        "guardrail_interventions": 0,
    }
    return {**row, **over}


def test_migrate_creates_the_schema_and_is_idempotent(db_url: str) -> None:
    async def twice(store: Store) -> tuple[set[str], list[Any]]:
        await store.migrate()  # the second time is a no-op
        await store.ping()
        async with store.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        return tables, [tuple(r) for r in version]

    tables, version = with_store(db_url, twice)
    assert {"api_keys", "usage", "tenants", "alembic_version"} <= tables
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert version == [(head,)]


def test_keys_add_list_revoke(db_url: str) -> None:
    async def scenario(store: Store) -> None:
        assert await store.list_keys() == []
        assert not await store.has_admin_key()
        v0 = await store.keys_version()
        a = await store.add_key("aaaa", "first", "admin", "h" * 64)
        await store.add_key("bbbb", "second", "caller", "g" * 64, "v1.sealed")
        v1 = await store.keys_version()
        assert v1 != v0
        assert await store.has_admin_key()
        assert [k.id for k in await store.list_keys()] == ["aaaa", "bbbb"]
        assert (await store.list_keys())[0] == a
        assert (await store.get_key("bbbb")).secret_enc == "v1.sealed"  # type: ignore[union-attr]
        assert await store.get_key("nope") is None

        assert await store.revoke_key("aaaa")
        assert not await store.revoke_key("aaaa")  # already revoked
        assert not await store.revoke_key("nope")
        assert await store.keys_version() != v1
        assert not await store.has_admin_key()
        assert [k.id for k in await store.list_keys()] == ["bbbb"]
        everything = {k.id: k for k in await store.list_keys(include_revoked=True)}
        assert everything["aaaa"].revoked_at is not None

        await store.touch_keys({"bbbb": 1234.5})
        [b] = await store.list_keys()
        assert b.last_used_at == 1234.5

    with_store(db_url, scenario)


def test_tenants_and_scoped_keys(db_url: str) -> None:
    async def scenario(store: Store) -> None:
        v0 = await store.keys_version()
        acme = await store.add_tenant(
            "t1",
            "acme",
            models=["m1", "m2"],
            limits={"rpm": 60},
            budget={"usd": 12.5, "period": "month"},
            guardrails=["pii"],
            log_invocations=True,
            log_retention_days=7,
        )
        assert (acme.models, acme.limits, acme.budget, acme.guardrails) == (
            ["m1", "m2"],
            {"rpm": 60},
            {"usd": 12.5, "period": "month"},
            ["pii"],
        )
        assert (acme.log_invocations, acme.log_retention_days) == (True, 7)
        other = await store.add_tenant("t2", "other")
        assert (other.models, other.log_invocations) == (None, False)
        assert await store.tenant_by_name("acme") == acme
        assert [t.id for t in await store.list_tenants()] == ["t1", "t2"]
        assert await store.keys_version() != v0

        old = await store.add_key(
            "k1",
            "svc",
            "caller",
            "h" * 64,
            tenant_id="t1",
            models=["m1"],
            limits={"tpm": 1000},
            budget={"usd": 1.0},
        )
        assert await store.get_key("k1") == old
        at = time.time() + 3600
        await store.add_key("k2", "svc", "caller", "g" * 64, tenant_id="t1", expire_key=("k1", at))
        assert (await store.get_key("k1")).expires_at == at  # type: ignore[union-attr]
        await store.add_key("k3", "x", "caller", "f" * 64, tenant_id="t2")
        assert [k.id for k in await store.list_keys(tenant_id="t1")] == ["k1", "k2"]

        v1 = await store.keys_version()
        updated = await store.update_tenant("t1", limits={"rpm": 5}, log_invocations=False)
        assert updated is not None
        assert (updated.limits, updated.log_invocations, updated.models) == (
            {"rpm": 5},
            False,
            ["m1", "m2"],
        )
        assert await store.keys_version() != v1
        assert await store.update_tenant("nope", limits={}) is None

        assert await store.delete_tenant("t1")
        assert not await store.delete_tenant("t1")
        assert await store.get_tenant("t1") is None
        assert await store.tenant_by_name("acme") is None
        assert await store.list_keys(tenant_id="t1") == []  # its keys are revoked with it
        assert [k.id for k in await store.list_keys(tenant_id="t2")] == ["k3"]  # others stay
        again = await store.add_tenant("t3", "acme")  # the name is free again
        assert [t.id for t in await store.list_tenants()] == ["t2", "t3"]
        assert again.name == "acme"

    with_store(db_url, scenario)


def test_usage_insert_and_summary(db_url: str) -> None:
    async def scenario(store: Store) -> dict[str, Any]:
        empty = await store.usage_summary()
        assert empty == {"by_key": [], "by_model": [], "by_tenant": []}
        await store.insert_usage(
            [
                usage_row(
                    ts=100,
                    key_id="k1",
                    model="a",
                    prompt_tokens=3,
                    completion_tokens=4,
                    tenant_id="t1",
                    cost_usd=0.25,
                ),
                usage_row(
                    ts=200,
                    key_id="k1",
                    model="b",
                    status=502,
                    error_type="upstream_error",
                    prompt_tokens=0,
                    completion_tokens=0,
                    latency_ms=30.0,
                    tenant_id="t1",
                ),
                usage_row(
                    ts=300,
                    key_id="k2",
                    model="a",
                    prompt_tokens=5,
                    completion_tokens=6,
                    tenant_id="t2",
                    cost_usd=0.5,
                    guardrail_interventions=2,
                ),
                usage_row(
                    ts=300, key_id=None, model="a", status=401, error_type="authentication_error"
                ),
            ]
        )
        await store.insert_usage([])
        assert await store.count_usage() == 4
        assert await store.spend_since(150) == {
            ("tenant", "t1"): 0.0,
            ("key", "k1"): 0.0,
            ("tenant", "t2"): 0.5,
            ("key", "k2"): 0.5,
        }
        return {
            "all": await store.usage_summary(),
            "since": await store.usage_summary(since=250),
            "t1": await store.usage_summary(tenant_id="t1"),
        }

    got = with_store(db_url, scenario)
    by_key = {r["key"]: r for r in got["all"]["by_key"]}
    assert by_key["k1"] == {
        "key": "k1",
        "requests": 2,
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "errors": 1,
        "avg_latency_ms": 20.0,
        "cost_usd": 0.25,
        "guardrail_interventions": 0,
    }
    assert (by_key["k2"]["requests"], by_key[None]["errors"]) == (1, 1)
    by_model = {r["model"]: r for r in got["all"]["by_model"]}
    assert (by_model["a"]["requests"], by_model["a"]["prompt_tokens"], by_model["a"]["errors"]) == (
        3,
        9,
        1,
    )
    assert (by_model["b"]["requests"], by_model["b"]["errors"]) == (1, 1)
    by_tenant = {r["tenant"]: r for r in got["all"]["by_tenant"]}
    assert (by_tenant["t2"]["cost_usd"], by_tenant["t2"]["guardrail_interventions"]) == (0.5, 2)
    assert {r["key"] for r in got["since"]["by_key"]} == {"k2", None}
    assert [r["model"] for r in got["since"]["by_model"]] == ["a"]
    assert [(r["key"], r["requests"]) for r in got["t1"]["by_key"]] == [("k1", 2)]
    # Same types on both databases (PostgreSQL's SUM/COUNT are BIGINT, AVG of FLOAT is FLOAT).
    for row in got["all"]["by_key"]:
        assert {type(row[c]) for c in ("requests", "prompt_tokens", "errors")} == {int}
        assert type(row["avg_latency_ms"]) is float
        assert type(row["cost_usd"]) is float


def test_usage_records_as_the_recorder_writes_them(db_url: str) -> None:
    records = [
        UsageRecord(
            "k1",
            "chat.completions",
            "m",
            "local:m",
            True,
            7,
            9,
            12.5,
            3.25,
            200,
            None,
            served_model="m",
            attempts=1,
            queue_ms=0.5,
            tenant_id="t1",
            cost_usd=0.001,
            guardrail_interventions=1,
            ts=time.time(),
        ),
        UsageRecord(
            None,
            "embeddings",
            "e",
            None,
            False,
            0,
            0,
            1.0,
            None,
            401,
            "authentication_error",
            ts=time.time(),
        ),
    ]

    async def scenario(store: Store) -> list[tuple[Any, ...]]:
        await store.insert_usage([r.as_row() for r in records])
        async with store.engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT key_id, stream, ttft_ms, queue_ms, attempts, served_model, cost_usd, "
                    "guardrail_interventions FROM usage ORDER BY id"
                )
            )
            return [tuple(r) for r in rows]

    first, second = with_store(db_url, scenario)
    assert first == ("k1", True, 3.25, 0.5, 1, "m", 0.001, 1)
    assert second == (None, False, None, None, 0, None, None, 0)


def test_a_batch_larger_than_one_statement_is_written_whole_and_in_order(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite writes a batch as multi-row INSERTs of as many rows as its parameter limit
    allows; here the limit is lowered so that 1,000 rows take several statements."""
    monkeypatch.setattr(sqlite_rows, "MAX_VARIABLES", 999)  # SQLite's before 3.32: 66 rows

    async def scenario(store: Store) -> list[tuple[Any, ...]]:
        await store.insert_usage([usage_row(ts=i, prompt_tokens=i) for i in range(1000)])
        async with store.engine.connect() as conn:
            rows = await conn.execute(text("SELECT ts, prompt_tokens FROM usage ORDER BY id"))
            return [tuple(r) for r in rows]

    assert with_store(db_url, scenario) == [(float(i), i) for i in range(1000)]


def test_values_longer_than_their_column_do_not_fail_the_write(db_url: str) -> None:
    """PostgreSQL refuses what SQLite would store (too long, NUL); the store keeps both the
    same, and the rest of the batch is written."""
    long_model = "m" * 300  # a model name a caller made up (answered 404, still metered)

    async def scenario(store: Store) -> None:
        await store.insert_usage(
            [
                usage_row(key_id="k1", model=long_model, status=404, error_type="not_found_error"),
                usage_row(key_id="k1", model="a"),
                usage_row(key_id="k1", model="nul\x00model", status=404),  # JSON allows "\u0000"
            ]
        )
        by_model = {r["model"]: r["requests"] for r in (await store.usage_summary())["by_model"]}
        assert by_model == {"m" * 128: 1, "a": 1, "nul\ufffdmodel": 1}

        longest = "n" * 200  # the longest name the admin API accepts
        await store.add_tenant("t1", longest)
        assert await store.delete_tenant("t1")
        assert await store.tenant_by_name(longest) is None
        assert (await store.add_tenant("t2", longest)).name == longest

    with_store(db_url, scenario)


MIGRATE = (
    "import asyncio, sys; from cumulo.store.db import Store; "
    "s = Store(sys.argv[1]); asyncio.run(s.migrate()); asyncio.run(s.close())"
)


def test_postgres_replicas_migrating_a_new_database_at_once(postgres_url: str) -> None:
    """Replicas starting together on an empty database take turns; all of them start."""
    replicas = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, postgres_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in replicas]
    assert [p.returncode for p in replicas] == [0, 0, 0], outputs

    async def version(store: Store) -> list[tuple[Any, ...]]:
        async with store.engine.connect() as conn:
            return [
                tuple(r)
                for r in await conn.execute(text("SELECT version_num FROM alembic_version"))
            ]

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert with_store(postgres_url, version, migrate=False) == [(head,)]


def test_postgres_test_databases_are_dropped_even_when_the_test_fails() -> None:
    """`support.pg` drops its database after a failure, even with a connection left open."""
    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(RuntimeError), postgres_database(prefix="cumulo_dropcheck") as url:
            name = url.rsplit("/", 1)[-1]
            left_open = loop.run_until_complete(
                asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
            )
            assert name in database_names("cumulo_dropcheck")
            raise RuntimeError("the test failed")
        assert name not in database_names("cumulo_dropcheck")
        assert left_open.is_closed() or loop.run_until_complete(left_open.close()) is None
    finally:
        loop.close()
