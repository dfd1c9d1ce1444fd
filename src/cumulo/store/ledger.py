"""SQL for the audit ledger tables `ledger` and `ledger_head` (migration 0006).

The chain itself (hashes, MACs, what counts as tampering) is `cumulo.governance.audit.ledger`;
this module only reads and writes rows. Each function takes the `Store` or its
`AsyncEngine`. None of them runs on the request path.

Appending is serialised across processes, so that replicas sharing one database never
fork the chain: on PostgreSQL with a transaction-scoped advisory lock, on SQLite with
`BEGIN IMMEDIATE` (one writer at a time). Under that lock `append` reads the tail
(head checkpoint and newest row), lets the caller seal the new rows against it, and
writes them and the new head in the same transaction. Should two writers still collide
(a unique violation on `seq`, or a busy SQLite file), the transaction is rolled back
and retried with a fresh tail.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, insert, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cumulo.errors import Unavailable
from cumulo.store.db import Store
from cumulo.store.schema import ledger, ledger_head
from cumulo.store.url import safe_url

log = logging.getLogger(__name__)

Engine = Store | AsyncEngine
# pg_advisory_xact_lock key serialising appends ("ledger"); released at commit or rollback.
LEDGER_LOCK = 0x6C6564676572
HEAD_ID = 1
APPEND_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class Link:
    """An entry's position and hash."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class Head:
    """The head checkpoint: the newest entry's seq and hash, and their MAC."""

    seq: int
    hash: str
    mac: str


@dataclass(frozen=True, slots=True)
class Tail:
    """What the chain ends with, read under the append lock."""

    head: Head | None  # the checkpoint row, if there is one (not yet checked)
    last: Link | None  # the row with the highest seq, if any


# Given the tail, the rows to insert (every `ledger` column) and the new head.
Seal = Callable[[Tail], tuple[list[dict[str, Any]], Head]]


def _engine(target: Engine) -> AsyncEngine:
    return target.engine if isinstance(target, Store) else target


@contextlib.asynccontextmanager
async def _reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection; database errors become Unavailable naming the database (no password)."""
    try:
        async with engine.connect() as conn:
            yield conn
    except DBAPIError as exc:
        raise Unavailable(
            f"cannot read the audit ledger in {safe_url(engine.url)}: {exc.orig}"
        ) from exc


async def _lock(conn: AsyncConnection) -> None:
    """Become the only appender until this connection's transaction ends."""
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LEDGER_LOCK})
    elif conn.dialect.name == "sqlite":
        # The driver would begin lazily, before the first write; take the write lock now,
        # before reading the tail, so that no other writer can commit in between.
        await conn.exec_driver_sql("BEGIN IMMEDIATE")


async def _tail(conn: AsyncConnection) -> Tail:
    row = (
        await conn.execute(
            select(ledger_head.c.seq, ledger_head.c.hash, ledger_head.c.mac).where(
                ledger_head.c.id == HEAD_ID
            )
        )
    ).first()
    last = (
        await conn.execute(
            select(ledger.c.seq, ledger.c.hash).order_by(ledger.c.seq.desc()).limit(1)
        )
    ).first()
    return Tail(
        head=Head(int(row.seq), row.hash, row.mac) if row is not None else None,
        last=Link(int(last.seq), last.hash) if last is not None else None,
    )


async def append(target: Engine, seal: Seal) -> list[dict[str, Any]]:
    """Insert the rows `seal` makes from the current tail, and the new head, atomically.

    Returns the rows written. Raises Unavailable if the database cannot be written.
    """
    engine = _engine(target)
    for attempt in range(1, APPEND_ATTEMPTS + 1):
        try:
            async with engine.connect() as conn:
                await _lock(conn)
                tail = await _tail(conn)
                rows, head = seal(tail)
                if rows:
                    await conn.execute(insert(ledger), rows)
                values = {"seq": head.seq, "hash": head.hash, "mac": head.mac}
                values["updated_at"] = time.time()
                if tail.head is None:
                    await conn.execute(insert(ledger_head), [{"id": HEAD_ID, **values}])
                else:
                    where = ledger_head.c.id == HEAD_ID
                    await conn.execute(update(ledger_head).where(where).values(**values))
                await conn.commit()
            return rows
        except (IntegrityError, OperationalError) as exc:
            # Another writer got there first (or held SQLite's lock past its busy timeout):
            # nothing was written; seal again on the tail as it is now.
            if attempt == APPEND_ATTEMPTS:
                raise Unavailable(
                    f"cannot append to the audit ledger in {safe_url(engine.url)}: {exc.orig}"
                ) from exc
            log.warning("audit ledger append collided (attempt %d); retrying", attempt)
        except DBAPIError as exc:
            raise Unavailable(
                f"cannot append to the audit ledger in {safe_url(engine.url)}: {exc.orig}"
            ) from exc
    raise AssertionError("unreachable")


async def head(target: Engine) -> Head | None:
    """The head checkpoint row, if any."""
    engine = _engine(target)
    async with _reading(engine) as conn:
        row = (
            await conn.execute(
                select(ledger_head.c.seq, ledger_head.c.hash, ledger_head.c.mac).where(
                    ledger_head.c.id == HEAD_ID
                )
            )
        ).first()
    return Head(int(row.seq), row.hash, row.mac) if row is not None else None


async def page(target: Engine, after_seq: int, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` rows with seq > `after_seq`, oldest first (every column)."""
    query = select(ledger).where(ledger.c.seq > after_seq).order_by(ledger.c.seq).limit(limit)
    async with _reading(_engine(target)) as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings().all()]


async def entries(
    target: Engine,
    *,
    after_seq: int | None = None,
    before_seq: int | None = None,
    tenant_id: str | None = None,
    action: str | None = None,
    about: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Rows, optionally of one tenant, action or target (`about`): oldest first from `after_seq` when it is
    given, else newest first (below `before_seq`, if given)."""
    where: list[ColumnElement[bool]] = []
    if tenant_id is not None:
        where.append(ledger.c.tenant_id == tenant_id)
    if action is not None:
        where.append(ledger.c.action == action)
    if about is not None:
        where.append(ledger.c.target == about)
    if before_seq is not None:
        where.append(ledger.c.seq < before_seq)
    if after_seq is not None:
        where.append(ledger.c.seq > after_seq)
        order = ledger.c.seq.asc()
    else:
        order = ledger.c.seq.desc()
    query = select(ledger).where(*where).order_by(order).limit(limit)
    async with _reading(_engine(target)) as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings().all()]


async def seqs_with_hash(target: Engine, hash: str) -> list[int]:
    """The seqs of the rows whose hash is `hash` (to tell a moved entry from an edited one)."""
    query = select(ledger.c.seq).where(ledger.c.hash == hash).order_by(ledger.c.seq)
    async with _reading(_engine(target)) as conn:
        return [int(s) for s in (await conn.execute(query)).scalars().all()]
