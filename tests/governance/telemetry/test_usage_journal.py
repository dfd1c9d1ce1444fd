"""The usage journal: each record on disk as it is queued, written to the database exactly
once, whether the process stops cleanly, dies, or the database is down for a while.

A process dying is what the kernel does to it: its files are closed, which lets go of the
journal's lock, and nothing else happens (`die`). Runs on SQLite and on PostgreSQL.
`tests/integration/test_usage_durability.py` kills a real `cumulo serve`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from cumulo.config import UsageConfig
from cumulo.governance.telemetry.journal import UsageJournal, fingerprint
from cumulo.governance.telemetry.usage import USAGE_COLUMNS, UsageRecord, UsageRecorder
from cumulo.store.db import Store
from support.pg import postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}"
    else:
        with postgres_database() as url:
            yield url


def record(model: str = "m") -> UsageRecord:
    return UsageRecord(
        key_id="k1",
        endpoint="chat.completions",
        model=model,
        deployment="openai:m",
        stream=False,
        prompt_tokens=2,
        completion_tokens=3,
        latency_ms=5.0,
        ttft_ms=None,
        status=200,
        error_type=None,
        cost_usd=0.25,
    )


def run(url: str, fn: Callable[[Store], Awaitable[None]], migrate: bool = True) -> None:
    async def main() -> None:
        store = Store(url)
        try:
            if migrate:
                await store.migrate()
            await fn(store)
        finally:
            await store.close()

    asyncio.run(main())


def recorder(store: Store, directory: Path, database: str = "", **config: object) -> UsageRecorder:
    """A recorder with its journal in `directory`, its writer not started (tests flush)."""
    rec = UsageRecorder(
        store, UsageConfig(**config), UsageJournal(directory, USAGE_COLUMNS, database)
    )
    assert rec.journal is not None
    rec.journal.open()
    return rec


def die(rec: UsageRecorder) -> None:
    """What the kernel does to a killed process's journal: its mappings and files are
    closed (which lets go of the locks), and nothing else."""
    assert rec.journal is not None
    for file in [*rec.journal.sealed, rec.journal.current]:
        if file is not None:
            if file.map is not None:
                file.map.close()
            os.close(file.fd)
    rec.journal.sealed.clear()
    rec.journal.current = None


async def models(store: Store) -> list[str]:
    async with store.engine.connect() as conn:
        return [
            r[0] for r in (await conn.execute(text("SELECT model FROM usage ORDER BY id"))).all()
        ]


def journal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("usage-*.journal"))


def test_a_record_is_in_the_journal_file_once_record_returns(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        rec = recorder(store, tmp_path / "journal")
        rec.record(record("first"))
        [path] = journal_files(tmp_path / "journal")
        data = path.read_bytes()  # through another file handle: what the OS holds
        header, line = data.rstrip(b"\0").splitlines()  # then the segment's unused rest
        assert orjson.loads(header)["columns"] == list(USAGE_COLUMNS)
        assert orjson.loads(line)[0] == 1  # its sequence number
        assert dict(zip(USAGE_COLUMNS, orjson.loads(line)[1:], strict=True))["model"] == "first"
        assert await store.count_usage() == 0  # nothing written to the database yet
        die(rec)

    run(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}", scenario)


def test_what_a_dead_process_did_not_store_is_stored_once_at_the_next_start(
    db_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "journal"

    async def scenario(store: Store) -> None:
        first = recorder(store, directory)
        for i in range(6):
            first.record(record(f"stored-{i}"))
        await first.flush()  # these six reached the database with their checkpoint
        for i in range(4):
            first.record(record(f"lost-{i}"))  # these four only the journal holds
        die(first)

        second = recorder(store, directory)
        assert await second.recover() == 4
        assert sorted(await models(store)) == sorted(
            [f"stored-{i}" for i in range(6)] + [f"lost-{i}" for i in range(4)]
        )
        assert journal_files(directory) == [second.journal.current.path]  # type: ignore[union-attr]
        die(second)

        third = recorder(store, directory)  # and again: nothing is stored twice
        assert await third.recover() == 0
        assert await store.count_usage() == 10
        await third.close()
        assert journal_files(directory) == []  # a clean stop leaves no journal behind

    run(db_url, scenario)


def test_a_journal_a_live_process_holds_is_left_alone(tmp_path: Path) -> None:
    directory = tmp_path / "journal"

    async def scenario(store: Store) -> None:
        running = recorder(store, directory)
        running.record(record("in-flight"))
        other = recorder(store, directory)  # another worker starting beside it
        assert await other.recover() == 0
        assert await store.count_usage() == 0
        await running.close()
        await other.close()
        assert await models(store) == ["in-flight"]

    run(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}", scenario)


def test_a_shutdown_with_the_database_down_keeps_the_records_for_the_next_start(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "journal"

    async def scenario(store: Store) -> None:
        rec = recorder(store, directory)
        for i in range(5):
            rec.record(record(f"m{i}"))
        await rec.close()  # the schema is missing: every write fails
        assert (
            "5 usage records (and 0 journal files written from disk only) could not be "
            "written at shutdown" in caplog.text
        )
        assert len(journal_files(directory)) == 1

        await store.migrate()
        after = recorder(store, directory)
        assert await after.recover() == 5
        assert await models(store) == [f"m{i}" for i in range(5)]
        await after.close()

    with caplog.at_level(logging.ERROR):
        run(db_url, scenario, migrate=False)


def test_a_full_queue_is_left_to_the_journal_and_written_once_the_database_is_back(
    db_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "journal"

    async def scenario(store: Store) -> None:
        rec = recorder(store, directory, max_queue=3)
        for i in range(5):
            rec.record(record(f"early-{i}"))
        with pytest.raises((sqlite3.Error, DBAPIError)):
            await rec.flush()  # the schema is missing
        assert (rec.queued, rec.spilled, rec.dropped) == (0, 5, 0)  # memory freed, none lost
        for i in range(2):
            rec.record(record(f"late-{i}"))  # into a new journal file
        assert len(journal_files(directory)) == 2

        await store.migrate()
        await rec.flush()
        await rec.housekeeping()  # the background writer's next tick
        assert sorted(await models(store)) == sorted(
            [f"early-{i}" for i in range(5)] + [f"late-{i}" for i in range(2)]
        )
        assert journal_files(directory) == [rec.journal.current.path]  # type: ignore[union-attr]
        await rec.close()

    run(db_url, scenario, migrate=False)


def test_files_rotate_and_go_once_their_records_are_stored(tmp_path: Path) -> None:
    directory = tmp_path / "journal"

    async def scenario(store: Store) -> None:
        rec = UsageRecorder(
            store, UsageConfig(), UsageJournal(directory, USAGE_COLUMNS, segment_bytes=1000)
        )
        rec.start()  # the background writer, with its housekeeping
        try:
            for round in range(4):
                for i in range(10):
                    rec.record(record(f"r{round}-{i}"))
                await rec.flush()
                await rec.housekeeping()
                assert len(journal_files(directory)) == 1  # each full file went once stored
        finally:
            await rec.close()
        assert await store.count_usage() == 40
        assert journal_files(directory) == []

    run(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}", scenario)


def test_a_line_a_crash_cut_short_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "journal"

    async def scenario(store: Store) -> None:
        first = recorder(store, directory)
        for i in range(3):
            first.record(record(f"m{i}"))
        die(first)
        [path] = journal_files(directory)
        data = path.read_bytes().rstrip(b"\0")
        path.write_bytes(data[: len(data) - 20] + bytes(100))  # the last line cut short

        second = recorder(store, directory)
        assert await second.recover() == 2
        assert await models(store) == ["m0", "m1"]
        assert "line 4 skipped" in caplog.text
        await second.close()

    run(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}", scenario)


def test_without_a_writable_directory_records_are_kept_in_memory(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")

    async def scenario(store: Store) -> None:
        rec = UsageRecorder(
            store,
            UsageConfig(flush_interval_s=3600),
            UsageJournal(blocker / "journal", USAGE_COLUMNS),
        )
        rec.start()
        rec.record(record("kept"))
        await rec.close()
        assert await models(store) == ["kept"]

    run(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}", scenario)
    assert "cannot open a usage journal" in caplog.text


def test_a_journal_of_another_database_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "journal"

    async def scenario(store: Store) -> None:
        old = recorder(store, directory, fingerprint("sqlite:///old.db"))
        old.record(record("meant-for-the-old-database"))
        die(old)

        new = recorder(store, directory, fingerprint(store.safe_url))
        assert await new.recover() == 0
        assert await store.count_usage() == 0
        assert "written for another database" in caplog.text
        await new.close()
        assert len(journal_files(directory)) == 1  # kept, for whoever owns that database

    run(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}", scenario)


def test_journals_that_cannot_be_written_at_start_are_retried_in_the_background(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "journal"

    async def scenario(store: Store) -> None:
        dead = recorder(store, directory)
        for i in range(3):
            dead.record(record(f"m{i}"))
        die(dead)

        rec = recorder(store, directory)
        assert await rec.recover() == 0  # the schema is missing: start goes on regardless
        assert "retried in the background" in caplog.text
        await store.migrate()
        await rec.housekeeping()  # the background writer's next tick
        assert await models(store) == ["m0", "m1", "m2"]
        await rec.close()
        assert journal_files(directory) == []

    run(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}", scenario, migrate=False)
