"""A throwaway PostgreSQL database per test, on the local server.

`postgres_database()` creates a uniquely named database through the maintenance
database (`CUMULO_TEST_POSTGRES`, default `postgresql://postgres@127.0.0.1:5432/postgres`),
yields its `postgresql+asyncpg://` URL and drops it afterwards, also when the test
failed and left connections open (`DROP DATABASE ... WITH (FORCE)`).
If the server cannot be reached the test fails, saying so: PostgreSQL is a required
service of the test suite (it runs on every development machine and in CI), and a
skip would let the PostgreSQL half of the suite vanish unnoticed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg
import pytest
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("CUMULO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _reachable() -> str | None:
    """None if the maintenance database answers, else why not."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@contextmanager
def postgres_database(prefix: str = "cumulo_test") -> Iterator[str]:
    """Create a fresh database; yield its async SQLAlchemy URL; drop it at the end."""
    problem = _reachable()
    if problem is not None:
        pytest.fail(
            f"PostgreSQL not reachable at {make_url(ADMIN_URL).render_as_string()}: "
            f"{problem} (set CUMULO_TEST_POSTGRES)"
        )
    name = f"{prefix}_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        url = make_url(ADMIN_URL).set(drivername="postgresql+asyncpg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def database_names(prefix: str = "cumulo_test") -> set[str]:
    """The databases whose name starts with `prefix` (to check none is left behind)."""

    async def names() -> set[str]:
        conn = await asyncpg.connect(ADMIN_URL, timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", prefix
            )
        finally:
            await conn.close()
        return {r["datname"] for r in rows}

    return asyncio.run(names())
