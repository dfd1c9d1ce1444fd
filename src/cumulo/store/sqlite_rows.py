"""Bulk inserts into a SQLite file on a connection and thread of their own.

Through SQLAlchemy's async adapter every step of a write (checkout, each
statement, commit, the reset on return to the pool) is a round trip to the
driver's thread, and its pooled connections take turns, so each write starts
with a page cache the other connection made stale. Under load that was several
times the cost of SQLite's own insert (bench/gateway.py). Here a whole batch is
one call to one thread, which keeps its connection (and its cache) for the life
of the store. Reads and every other write still go through SQLAlchemy; WAL mode
lets both connections work on the file at once.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from itertools import chain
from typing import Any

# Host parameters one statement may bind (SQLITE_MAX_VARIABLE_NUMBER; 999 before 3.32).
MAX_VARIABLES = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999


@lru_cache(maxsize=64)
def insert_sql(table: str, columns: tuple[str, ...], rows: int) -> str:
    """INSERT of `rows` rows of `columns` into `table`, in one statement."""
    one = f"({', '.join('?' * len(columns))})"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * rows)}"


def insert_chunks(
    execute: Callable[[str, tuple[Any, ...]], object],
    table: str,
    columns: tuple[str, ...],
    values: Sequence[tuple[Any, ...]],
) -> None:
    """`values` as multi-row INSERTs of as many rows as one statement may bind."""
    per = max(1, MAX_VARIABLES // len(columns))
    for start in range(0, len(values), per):
        chunk = values[start : start + per]
        execute(insert_sql(table, columns, len(chunk)), tuple(chain.from_iterable(chunk)))


class RowWriter:
    """Appends rows to tables of the SQLite file at `path`, one transaction per call."""

    def __init__(self, path: str, setup: Callable[[sqlite3.Connection], None]) -> None:
        self.path = path
        self._setup = setup  # the store's pragmas, run once on the new connection
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cumulo-sqlite-rows")
        self._conn: sqlite3.Connection | None = None

    async def insert(
        self, table: str, columns: tuple[str, ...], values: Sequence[tuple[Any, ...]]
    ) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._insert, table, columns, values)

    def _insert(
        self, table: str, columns: tuple[str, ...], values: Sequence[tuple[Any, ...]]
    ) -> None:  # on the writer's thread
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None)
            self._setup(conn)
            self._conn = conn
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            insert_chunks(conn.execute, table, columns, values)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._close)
        self._thread.shutdown()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
