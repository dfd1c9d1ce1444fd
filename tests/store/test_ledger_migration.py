"""Migration 0006 (the ledger tables) on SQLite and PostgreSQL (`db_url`,
tests/store/conftest.py): up, down to 0005 and up again."""

from __future__ import annotations

import asyncio

from sqlalchemy import inspect

from cumulo.store.db import Store


def test_migration_0006_creates_and_drops_the_ledger_tables(db_url: str) -> None:
    async def tables(store: Store) -> set[str]:
        async with store.engine.connect() as conn:
            return await conn.run_sync(lambda c: set(inspect(c).get_table_names()))

    async def scenario() -> list[set[str]]:
        store = Store(db_url)
        try:
            seen = []
            await store.migrate("0006")
            seen.append(await tables(store))
            await store.downgrade("0005")
            seen.append(await tables(store))
            await store.migrate()
            seen.append(await tables(store))
            return seen
        finally:
            await store.close()

    up, down, again = asyncio.run(scenario())
    assert {"ledger", "ledger_head", "tenants"} <= up
    assert "ledger" not in down and "ledger_head" not in down and "tenants" in down
    assert {"ledger", "ledger_head"} <= again
