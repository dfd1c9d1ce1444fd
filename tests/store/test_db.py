"""The store on a real SQLite file: migrations, keys and usage."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic.script import ScriptDirectory

from cumulo.store.db import MIGRATIONS, Store

T = TypeVar("T")


def with_store(path: Path, fn: Callable[[Store], Awaitable[T]], migrate: bool = True) -> T:
    async def main() -> T:
        store = Store(f"sqlite+aiosqlite:///{path}")
        try:
            if migrate:
                await store.migrate()
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(main())


def usage_row(**over: Any) -> dict[str, Any]:
    row = {"ts": time.time(), "key_id": "k1", "endpoint": "chat.completions", "model": "m",
           "deployment": "openai:m", "stream": False, "prompt_tokens": 1, "completion_tokens": 2,
           "latency_ms": 10.0, "ttft_ms": None, "status": 200, "error_type": None}
    return {**row, **over}


def test_migrate_creates_the_schema_and_is_idempotent(tmp_path: Path) -> None:
    db = tmp_path / "nested" / "dir" / "cumulo.db"

    async def twice(store: Store) -> None:
        await store.migrate()  # the second time is a no-op
        await store.ping()

    with_store(db, twice)
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {"api_keys", "usage", "alembic_version"} <= tables
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert version == [(head,)]


def test_keys_add_list_revoke(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        assert await store.list_keys() == []
        assert not await store.has_admin_key()
        v0 = await store.keys_version()
        a = await store.add_key("aaaa", "first", "admin", "h" * 64)
        await store.add_key("bbbb", "second", "caller", "g" * 64)
        v1 = await store.keys_version()
        assert v1 != v0
        assert await store.has_admin_key()
        assert [k.id for k in await store.list_keys()] == ["aaaa", "bbbb"]
        assert (await store.list_keys())[0] == a

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

    with_store(tmp_path / "cumulo.db", scenario)


def test_usage_insert_and_summary(tmp_path: Path) -> None:
    async def scenario(store: Store) -> dict[str, Any]:
        empty = await store.usage_summary()
        assert empty == {"by_key": [], "by_model": []}
        await store.insert_usage([
            usage_row(ts=100, key_id="k1", model="a", prompt_tokens=3, completion_tokens=4),
            usage_row(ts=200, key_id="k1", model="b", status=502, error_type="upstream_error",
                      prompt_tokens=0, completion_tokens=0, latency_ms=30.0),
            usage_row(ts=300, key_id="k2", model="a", prompt_tokens=5, completion_tokens=6),
            usage_row(ts=300, key_id=None, model="a", status=401, error_type="authentication_error"),
        ])
        await store.insert_usage([])
        assert await store.count_usage() == 4
        return {"all": await store.usage_summary(), "since": await store.usage_summary(since=250)}

    got = with_store(tmp_path / "cumulo.db", scenario)
    by_key = {r["key"]: r for r in got["all"]["by_key"]}
    assert by_key["k1"] == {"key": "k1", "requests": 2, "prompt_tokens": 3, "completion_tokens": 4,
                            "errors": 1, "avg_latency_ms": 20.0}
    assert (by_key["k2"]["requests"], by_key[None]["errors"]) == (1, 1)
    by_model = {r["model"]: r for r in got["all"]["by_model"]}
    assert (by_model["a"]["requests"], by_model["a"]["prompt_tokens"], by_model["a"]["errors"]) == (3, 9, 1)
    assert (by_model["b"]["requests"], by_model["b"]["errors"]) == (1, 1)
    assert {r["key"] for r in got["since"]["by_key"]} == {"k2", None}
    assert [r["model"] for r in got["since"]["by_model"]] == ["a"]
