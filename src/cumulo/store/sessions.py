"""SQL for the `console_sessions` table (migration 0012): the console's sign-in sessions.

A row holds the SHA-256 of a session id, never the id itself: a copy of the table does
not let anyone sign in. A session is live while it is neither expired nor revoked;
revoking it (sign-out) kills every copy of its cookie on every replica at once.
"""

from __future__ import annotations

import time
from typing import Protocol

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from cumulo.store.schema import console_sessions


class Store(Protocol):
    """What these functions need of `store.db.Store`."""

    @property
    def engine(self) -> AsyncEngine: ...


async def add(store: Store, id_hash: str, key_id: str, expires_at: float) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(console_sessions).values(
                id_hash=id_hash, key_id=key_id, created_at=time.time(), expires_at=expires_at
            )
        )


async def live(store: Store, id_hash: str) -> tuple[str, float] | None:
    """(key id, expiry) of a session neither expired nor revoked, else None."""
    query = select(console_sessions.c.key_id, console_sessions.c.expires_at).where(
        console_sessions.c.id_hash == id_hash,
        console_sessions.c.revoked_at.is_(None),
        console_sessions.c.expires_at > time.time(),
    )
    async with store.engine.connect() as conn:
        row = (await conn.execute(query)).first()
    return None if row is None else (str(row[0]), float(row[1]))


async def revoke(store: Store, id_hash: str) -> bool:
    """Revoke a session; False if it was not live."""
    query = (
        update(console_sessions)
        .where(console_sessions.c.id_hash == id_hash, console_sessions.c.revoked_at.is_(None))
        .values(revoked_at=time.time())
    )
    async with store.engine.begin() as conn:
        return (await conn.execute(query)).rowcount > 0


async def purge(store: Store, before: float) -> int:
    """Forget sessions that expired before `before` (revoked or not: they are dead anyway)."""
    async with store.engine.begin() as conn:
        result = await conn.execute(
            delete(console_sessions).where(console_sessions.c.expires_at < before)
        )
    return result.rowcount
