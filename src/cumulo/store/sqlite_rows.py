"""Bulk inserts into a SQLite file on a connection and thread of their own.

Through SQLAlchemy's async adapter every step of a write (checkout, each
statement, commit, the reset on return to the pool) is a round trip to the
driver's thread, and its pooled connections take turns, so each write starts
with a page cache the other connection made stale. Under load that was several
times the cost of SQLite's own insert (bench/gateway.py). Here a whole batch is
one call to one thread, which keeps its connection (and its cache) for the life
of the store. Reads and every other write still go through SQLAlchemy; WAL mode
lets both connections work on the file at once.

Each INSERT statement SQLite prepares costs memory in proportion to the parameters it
binds, and Python's `sqlite3` keeps the last 128 statements of a connection prepared. So
rows go in chunks of a few fixed sizes (powers of two), never one statement per batch
size: a statement for each of hundreds of batch sizes, each binding up to 32,766
parameters, grew a worker by about 275 MiB.
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
# The most rows one INSERT takes (a power of two). Larger chunks save little: at 256 rows a
# statement's per-execution cost is already small beside binding its parameters.
CHUNK_ROWS = 256
# A SQL statement run in the same transaction as the rows, with its parameters.
Statement = tuple[str, Any]


def chunk_sizes(rows: int, columns: int) -> list[int]:
    """How `rows` rows of `columns` columns are split into INSERTs: full chunks, then the
    rest as powers of two, so a table needs at most log2(CHUNK_ROWS) + 1 statements."""
    per = CHUNK_ROWS
    while per > 1 and per * columns > MAX_VARIABLES:
        per //= 2
    sizes = [per] * (rows // per)
    rest = rows % per
    bit = per // 2
    while rest:
        if rest >= bit:
            sizes.append(bit)
            rest -= bit
        bit //= 2
    return sizes


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
    """`values` as multi-row INSERTs of the sizes `chunk_sizes` gives."""
    start = 0
    for size in chunk_sizes(len(values), len(columns)):
        chunk = values[start : start + size]
        execute(insert_sql(table, columns, size), tuple(chain.from_iterable(chunk)))
        start += size


class RowWriter:
    """Appends rows to tables of the SQLite file at `path`, one transaction per call."""

    def __init__(self, path: str, setup: Callable[[sqlite3.Connection], None]) -> None:
        self.path = path
        self._setup = setup  # the store's pragmas, run once on the new connection
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cumulo-sqlite-rows")
        self._conn: sqlite3.Connection | None = None

    async def insert(
        self,
        table: str,
        columns: tuple[str, ...],
        values: Sequence[tuple[Any, ...]],
        also: Sequence[Statement] = (),
    ) -> None:
        """Insert the rows, and run the statements `also`, in one transaction."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._insert, table, columns, values, also)

    def _insert(
        self,
        table: str,
        columns: tuple[str, ...],
        values: Sequence[tuple[Any, ...]],
        also: Sequence[Statement],
    ) -> None:  # on the writer's thread
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None)
            self._setup(conn)
            self._conn = conn
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            insert_chunks(conn.execute, table, columns, values)
            for sql, params in also:
                conn.execute(sql, params)
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
