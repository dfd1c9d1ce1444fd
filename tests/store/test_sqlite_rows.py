"""Bulk usage inserts into SQLite: a few fixed statement shapes whatever the batch sizes
(each prepared statement costs memory, and `sqlite3` keeps 128 of them per connection),
every row stored in order, and the rows and the statements that go with them (a journal
checkpoint) stored together or not at all."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from cumulo.governance.telemetry.usage import USAGE_COLUMNS
from cumulo.store.sqlite_rows import RowWriter, insert_chunks


def rows(n: int, start: int = 0) -> list[tuple[Any, ...]]:
    return [
        tuple(start + i if c == "attempts" else f"{c}-{start + i}" for c in USAGE_COLUMNS)
        for i in range(n)
    ]


def table(db: sqlite3.Connection) -> None:
    db.execute(f"CREATE TABLE usage ({', '.join(USAGE_COLUMNS)})")


def test_any_number_of_batch_sizes_prepares_a_few_statements() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    table(db)
    prepared: set[str] = set()

    def execute(sql: str, params: tuple[Any, ...]) -> object:
        prepared.add(sql)
        return db.execute(sql, params)

    stored = 0
    for size in [*range(1, 300), 1023, 5000]:  # what a busy writer sees
        insert_chunks(execute, "usage", USAGE_COLUMNS, rows(size, stored))
        stored += size
    # Full chunks, then powers of two: at most log2(chunk) + 1 shapes (9 for 256 rows).
    assert len(prepared) <= 12
    assert [r[0] for r in db.execute("SELECT attempts FROM usage ORDER BY rowid")] == list(
        range(stored)
    )
    db.close()


def test_rows_and_their_checkpoint_are_stored_together_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "rows.db"
    with sqlite3.connect(path) as db:
        table(db)
        db.execute("CREATE TABLE marks (id TEXT PRIMARY KEY, seq INTEGER)")
    db.close()

    async def scenario() -> None:
        writer = RowWriter(str(path), lambda conn: None)
        try:
            mark = ("INSERT INTO marks (id, seq) VALUES (:id, :seq)", {"id": "j1", "seq": 600})
            await writer.insert("usage", USAGE_COLUMNS, rows(600), [mark])
            with pytest.raises(sqlite3.IntegrityError):  # the same mark again: refused
                await writer.insert("usage", USAGE_COLUMNS, rows(300, 600), [mark])
        finally:
            await writer.close()

    asyncio.run(scenario())
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM usage").fetchone() == (600,)  # not 900
    assert db.execute("SELECT id, seq FROM marks").fetchall() == [("j1", 600)]
    db.close()
