"""A store for a test: run a scenario against a migrated store, on SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from cumulo.store.db import Store


def sqlite_url(tmp_path: Path) -> str:
    """A SQLite database file in the test's directory."""
    return f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}"


def run_with_store(url: str, fn: Callable[[Store], Awaitable[None]], migrate: bool = True) -> None:
    """`fn(store)` in a fresh event loop, the store migrated first (unless `migrate` is
    false) and closed afterwards."""

    async def main() -> None:
        store = Store(url)
        try:
            if migrate:
                await store.migrate()
            await fn(store)
        finally:
            await store.close()

    asyncio.run(main())
