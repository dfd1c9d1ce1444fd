"""SQL for the `usage_journal` table (migration 0008): how far each usage journal is stored.

A usage journal (`cumulo.governance.telemetry.journal`) numbers its records 1, 2, 3 ...; the row
of a journal holds the number of its last record stored in `usage`. The usage writer
updates it in the transaction that stores the rows (`Store.insert_usage_values`), so
after a crash the journal's records past it are exactly those the database lacks.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Protocol

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cumulo.store.schema import usage_journal


class Store(Protocol):
    """What these functions need of `store.db.Store` (which imports this module)."""

    @property
    def engine(self) -> AsyncEngine: ...


# Named parameters: the same text runs through SQLAlchemy and through `sqlite3` directly.
_UPSERT = (
    "INSERT INTO usage_journal (id, seq, updated_at) VALUES (:id, :seq, :ts) "
    "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at"
)


def checkpoint_statements(checkpoints: Mapping[str, int]) -> list[tuple[str, dict[str, Any]]]:
    """The statements that set each journal's checkpoint (journal id -> seq)."""
    now = time.time()
    return [(_UPSERT, {"id": id, "seq": seq, "ts": now}) for id, seq in checkpoints.items()]


async def checkpoint(store: Store, journal_id: str) -> int:
    """The last record of a journal stored in `usage` (0: none)."""
    q = select(usage_journal.c.seq).where(usage_journal.c.id == journal_id)
    async with store.engine.connect() as conn:
        seq = (await conn.execute(q)).scalar_one_or_none()
    return int(seq or 0)


async def forget(store: Store, journal_id: str) -> None:
    """Delete a journal's checkpoint (once its file is deleted)."""
    async with store.engine.begin() as conn:
        await conn.execute(delete(usage_journal).where(usage_journal.c.id == journal_id))
