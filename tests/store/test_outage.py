"""A lost database is `Unavailable` at the store boundary, for every statement the store's
engine runs; a cancelled statement stays cancelled, and a failing statement on a working
connection keeps its own error. PostgreSQL through a proxy the test takes down, and a
SQLite file that cannot be opened.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from cumulo.errors import Unavailable
from cumulo.store import records
from cumulo.store.db import Store
from support.proxy import TcpProxy

MESSAGE = "The database is unavailable; try again shortly."


def test_a_database_going_away_is_unavailable_for_every_statement(postgres_url: str) -> None:
    database = make_url(postgres_url)
    with TcpProxy(database.port or 5432) as proxy:
        url = database.set(port=proxy.port)

        async def scenario() -> None:
            store = Store(url)
            try:
                await store.migrate()
                await store.add_key("k1", "first", "admin", "h" * 64)
                proxy.stop()  # open connections reset, new ones refused
                for call in (
                    store.list_keys(),
                    store.usage_summary(),
                    store.ping(),
                    store.add_key("k2", "second", "admin", "h" * 64),
                    records.recent_alerts(store),
                ):
                    with pytest.raises(Unavailable) as caught:
                        await call
                    err = caught.value
                    assert (err.status, err.retry_after, err.message) == (503, 5.0, MESSAGE)
                proxy.start()
                assert [k.id for k in await store.list_keys()] == ["k1"]  # back by itself
            finally:
                await store.close()

        asyncio.run(scenario())


def test_a_cancelled_statement_stays_cancelled(postgres_url: str) -> None:
    async def scenario() -> None:
        store = Store(postgres_url)
        try:

            async def slow() -> None:
                async with store.engine.connect() as conn:
                    await conn.execute(text("SELECT pg_sleep(5)"))

            task = asyncio.create_task(slow())
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_failing_statement_on_a_working_connection_keeps_its_error(postgres_url: str) -> None:
    async def scenario() -> None:
        store = Store(postgres_url)
        try:
            await store.migrate()
            await store.add_key("k1", "first", "admin", "h" * 64)
            with pytest.raises(IntegrityError):
                await store.add_key("k1", "again", "admin", "h" * 64)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'volume' / 'cumulo.db'}")
        (tmp_path / "volume").rmdir()  # the volume went away before the first connection
        (tmp_path / "volume").write_text("")
        try:
            with pytest.raises(Unavailable) as caught:
                await store.list_keys()
            assert caught.value.message == MESSAGE
        finally:
            await store.close()

    asyncio.run(scenario())
