"""Migrations on SQLite and PostgreSQL: an existing database (at 0004, before tenants)
is upgraded to the newest revision with its keys and usage kept; downgrading and
upgrading again keeps them too; the chain is linear; and the tables the migrations
build are exactly the ones `cumulo.store.schema` declares."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from cumulo.governance.identity import keys
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.governance.telemetry.usage import UsageRecord
from cumulo.store.db import MIGRATIONS, KeyRow, Store
from cumulo.store.schema import metadata

BEFORE_TENANTS = "0004"
KEY_COLUMNS = (
    "id",
    "name",
    "role",
    "secret_hash",
    "created_at",
    "revoked_at",
    "last_used_at",
    "secret_enc",
)
USAGE_COLUMNS = (
    "ts",
    "key_id",
    "endpoint",
    "model",
    "deployment",
    "stream",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "ttft_ms",
    "status",
    "error_type",
    "served_model",
    "attempts",
    "queue_ms",
)


def existing_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Keys and usage as a 0004 deployment has them, and one key's bearer secret."""
    master = MasterKey(os.urandom(32))
    admin, caller, revoked = keys.generate(), keys.generate(), keys.generate()
    t0 = 1_700_000_000.25
    api_keys = [
        {
            "id": admin.id,
            "name": "admin",
            "role": "admin",
            "secret_hash": keys.hash_secret(admin.secret),
            "created_at": t0,
            "revoked_at": None,
            "last_used_at": t0 + 50.5,
            "secret_enc": master.encrypt(admin.id, admin.secret),
        },
        {
            "id": caller.id,
            "name": "search-team",
            "role": "caller",
            "secret_hash": keys.hash_secret(caller.secret),
            "created_at": t0 + 1,
            "revoked_at": None,
            "last_used_at": None,
            "secret_enc": None,
        },  # from before 0002
        {
            "id": revoked.id,
            "name": "old",
            "role": "caller",
            "secret_hash": keys.hash_secret(revoked.secret),
            "created_at": t0 + 2,
            "revoked_at": t0 + 3,
            "last_used_at": t0 + 2.5,
            "secret_enc": master.encrypt(revoked.id, revoked.secret),
        },
    ]
    usage = [
        {
            "ts": t0 + 10,
            "key_id": caller.id,
            "endpoint": "chat.completions",
            "model": "gpt-4o-mini",
            "deployment": "openai:gpt-4o-mini",
            "stream": True,
            "prompt_tokens": 12,
            "completion_tokens": 30,
            "latency_ms": 812.5,
            "ttft_ms": 140.25,
            "status": 200,
            "error_type": None,
            "served_model": "gpt-4o-mini",
            "attempts": 1,
            "queue_ms": None,
        },
        {
            "ts": t0 + 11,
            "key_id": caller.id,
            "endpoint": "chat.completions",
            "model": "gpt-4o-mini",
            "deployment": "openai:gpt-4o-mini",
            "stream": False,
            "prompt_tokens": 12,
            "completion_tokens": 0,
            "latency_ms": 30000.0,
            "ttft_ms": None,
            "status": 504,
            "error_type": "upstream_timeout",
            "served_model": None,
            "attempts": 3,
            "queue_ms": None,
        },
        {
            "ts": t0 + 12,
            "key_id": admin.id,
            "endpoint": "embeddings",
            "model": "minilm-embed",
            "deployment": "local:minilm-embed",
            "stream": False,
            "prompt_tokens": 5,
            "completion_tokens": 0,
            "latency_ms": 4.5,
            "ttft_ms": None,
            "status": 200,
            "error_type": None,
            "served_model": "minilm-embed",
            "attempts": 1,
            "queue_ms": 0.75,
        },
        {
            "ts": t0 + 13,
            "key_id": None,
            "endpoint": "chat.completions",
            "model": "gpt-4o-mini",
            "deployment": None,
            "stream": False,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "latency_ms": 0.5,
            "ttft_ms": None,
            "status": 401,
            "error_type": "authentication_error",
            "served_model": None,
            "attempts": 0,
            "queue_ms": None,
        },
    ]
    return api_keys, usage, caller.secret


async def insert_raw(store: Store, table: str, rows: list[dict[str, Any]]) -> None:
    """Rows written with plain SQL: the tables of an old revision, not today's schema."""
    cols = list(rows[0])
    sql = text(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(':' + c for c in cols)})"
    )
    async with store.engine.begin() as conn:
        await conn.execute(sql, rows)


async def select_raw(
    store: Store, table: str, columns: tuple[str, ...], order: str
) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            text(f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}")
        )
        return [dict(r) for r in rows.mappings()]


async def revision(store: Store) -> str:
    async with store.engine.connect() as conn:
        return str(
            (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        )


def test_upgrading_an_existing_database_keeps_its_keys_and_usage(db_url: str) -> None:
    old_keys, old_usage, caller_secret = existing_rows()
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()

    async def scenario() -> None:
        store = Store(db_url)
        try:
            await store.migrate(BEFORE_TENANTS)
            assert await revision(store) == BEFORE_TENANTS
            await insert_raw(store, "api_keys", old_keys)
            await insert_raw(store, "usage", old_usage)
            old_ids = [r["id"] for r in await select_raw(store, "usage", ("id",), "id")]

            await store.migrate()
            assert await revision(store) == head
            await check_upgraded(store, old_ids)

            # Down to 0004 and up again: the rows from before are still all there.
            await store.downgrade(BEFORE_TENANTS)
            assert await revision(store) == BEFORE_TENANTS
            assert "tenants" not in await table_names(store)
            assert await select_raw(store, "api_keys", KEY_COLUMNS, "created_at") == old_keys
            assert await select_raw(store, "usage", USAGE_COLUMNS, "id") == old_usage
            await store.migrate()
            assert await revision(store) == head
            await check_upgraded(store, old_ids)

            # And the upgraded database takes today's writes.
            await store.add_tenant("t1", "acme", models=["gpt-4o-mini"], budget={"usd": 10.0})
            await store.add_key("newkey", "svc", "caller", "h" * 64, tenant_id="t1")
            record = UsageRecord(
                "newkey",
                "chat.completions",
                "gpt-4o-mini",
                "openai:gpt-4o-mini",
                False,
                1,
                2,
                3.0,
                None,
                200,
                None,
                tenant_id="t1",
                cost_usd=0.5,
                ts=time.time(),
            )
            await store.insert_usage([record.as_row()])
            ids = [r["id"] for r in await select_raw(store, "usage", ("id",), "id")]
            assert ids[:-1] == old_ids and ids[-1] > max(old_ids)
            assert await store.spend_since(record.ts) == {
                ("tenant", "t1"): 0.5,
                ("key", "newkey"): 0.5,
            }
        finally:
            await store.close()

    async def check_upgraded(store: Store, old_ids: list[int]) -> None:
        # Keys: every old value kept; the new columns say "no tenant, not narrowed".
        rows = await store.list_keys(include_revoked=True)
        assert rows == [KeyRow(**k) for k in old_keys]
        assert [(r.tenant_id, r.models, r.limits, r.budget, r.expires_at) for r in rows] == [
            (None, None, None, None, None)
        ] * 3
        assert [k.id for k in await store.list_keys()] == [k["id"] for k in old_keys[:2]]
        assert await store.has_admin_key()
        assert keys.matches(caller_secret, rows[1].secret_hash)  # the old bearer key still verifies
        # Usage: every old value kept; no tenant, no known cost, no guardrail interventions.
        assert await select_raw(store, "usage", USAGE_COLUMNS, "id") == old_usage
        new_cols = await select_raw(
            store, "usage", ("id", "tenant_id", "cost_usd", "guardrail_interventions"), "id"
        )
        assert new_cols == [
            {"id": i, "tenant_id": None, "cost_usd": None, "guardrail_interventions": 0}
            for i in old_ids
        ]
        summary = await store.usage_summary()
        by_model = {
            r["model"]: (r["requests"], r["errors"], r["prompt_tokens"])
            for r in summary["by_model"]
        }
        assert by_model == {"gpt-4o-mini": (3, 2, 24), "minilm-embed": (1, 0, 5)}

    asyncio.run(scenario())


async def table_names(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        return await conn.run_sync(lambda c: set(inspect(c).get_table_names()))


def test_the_migration_chain_is_linear_and_numbered() -> None:
    """One base, one head, each revision revising the one before; files named by revision."""
    script = ScriptDirectory(str(MIGRATIONS))
    assert len(script.get_bases()) == 1
    assert len(script.get_heads()) == 1, f"several heads: {script.get_heads()}"
    chain = list(reversed(list(script.walk_revisions())))
    assert [r.revision for r in chain] == [f"{i:04d}" for i in range(1, len(chain) + 1)]
    for before, rev in zip([None, *chain], chain, strict=False):
        assert rev.down_revision == (before.revision if before else None)
        assert Path(rev.path).name.startswith(rev.revision + "_")
    files = sorted(p.name for p in (MIGRATIONS / "versions").glob("*.py"))
    assert len(files) == len(chain), f"files outside the chain: {files}"


def test_the_migrations_build_exactly_the_declared_schema(db_url: str) -> None:
    """Autogenerate's comparison of a freshly migrated database with `schema.metadata`."""

    async def diff() -> list[Any]:
        store = Store(db_url)
        try:
            await store.migrate()
            async with store.engine.connect() as conn:
                return await conn.run_sync(
                    lambda c: compare_metadata(
                        MigrationContext.configure(
                            c, opts={"compare_type": True, "compare_server_default": True}
                        ),
                        metadata,
                    )
                )
        finally:
            await store.close()

    assert asyncio.run(diff()) == []
