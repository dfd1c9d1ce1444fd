"""The usage recorder: queued on the request path, written in batches, nothing lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from cumulo.config import UsageConfig
from cumulo.governance.telemetry.usage import UsageRecord, UsageRecorder
from cumulo.store.db import Store
from support import eventually


def record(model: str = "m", status: int = 200) -> UsageRecord:
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
        status=status,
        error_type=None if status < 400 else "x",
    )


def run(tmp_path: Path, fn: Callable[[Store], Awaitable[None]], migrate: bool = True) -> None:
    async def main() -> None:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}")
        try:
            if migrate:
                await store.migrate()
            await fn(store)
        finally:
            await store.close()

    asyncio.run(main())


async def models_in(store: Store) -> list[str]:
    async with store.engine.connect() as conn:
        return [
            r[0] for r in (await conn.execute(text("SELECT model FROM usage ORDER BY id"))).all()
        ]


def test_record_does_no_io_and_flush_writes_everything(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        recorder = UsageRecorder(store, UsageConfig(batch_size=4))
        before = time.time()
        for i in range(10):
            recorder.record(record(f"m{i}"))
        assert recorder.queued == 10
        assert await store.count_usage() == 0
        await recorder.flush()  # three batches: 4 + 4 + 2
        assert (recorder.queued, recorder.written) == (0, 10)
        assert await models_in(store) == [f"m{i}" for i in range(10)]
        async with store.engine.connect() as conn:
            ts = [r[0] for r in (await conn.execute(text("SELECT ts FROM usage"))).all()]
        assert all(t >= before - 1 for t in ts)  # stamped when recorded

    run(tmp_path, scenario)


def test_a_full_batch_is_written_without_waiting_for_the_interval(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        recorder = UsageRecorder(store, UsageConfig(flush_interval_s=3600, batch_size=5))
        recorder.start()
        try:
            for i in range(3):
                recorder.record(record(f"m{i}"))
            await asyncio.sleep(0.3)
            assert await store.count_usage() == 0  # fewer than a batch: waits for the interval
            for i in range(3, 5):
                recorder.record(record(f"m{i}"))
            assert await eventually(lambda: _count_is(store, 5))
        finally:
            await recorder.close()

    run(tmp_path, scenario)


def test_the_writer_flushes_on_its_interval(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        recorder = UsageRecorder(store, UsageConfig(flush_interval_s=0.05, batch_size=500))
        recorder.start()
        try:
            recorder.record(record())
            assert await eventually(lambda: _count_is(store, 1), within=3)
        finally:
            await recorder.close()

    run(tmp_path, scenario)


def test_close_writes_what_is_left(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        recorder = UsageRecorder(store, UsageConfig(flush_interval_s=3600))
        recorder.start()
        for i in range(7):
            recorder.record(record(f"m{i}"))
        await recorder.close()
        assert await store.count_usage() == 7
        assert recorder.queued == 0

    run(tmp_path, scenario)


def test_a_failed_write_keeps_the_records_for_the_next_attempt(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        recorder = UsageRecorder(store, UsageConfig())
        for i in range(3):
            recorder.record(record(f"m{i}"))
        with pytest.raises(Exception, match="no such table"):
            await recorder.flush()  # the schema is missing
        assert (recorder.queued, recorder.written, recorder.dropped) == (3, 0, 0)
        await store.migrate()
        await recorder.flush()
        assert await models_in(store) == ["m0", "m1", "m2"]
        assert recorder.queued == 0

    run(tmp_path, scenario, migrate=False)


def test_the_background_writer_retries_until_the_store_is_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(store: Store) -> None:
        recorder = UsageRecorder(store, UsageConfig(flush_interval_s=0.05))
        recorder.start()
        try:
            recorder.record(record("early"))
            await asyncio.sleep(0.2)  # a few failed attempts
            assert recorder.queued == 1
            recorder.record(record("late"))
            await store.migrate()
            assert await eventually(lambda: _count_is(store, 2))
            assert await models_in(store) == ["early", "late"]
        finally:
            await recorder.close()

    run(tmp_path, scenario, migrate=False)
    assert "writing usage records failed" in caplog.text


def test_past_max_queue_the_oldest_records_are_dropped(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        recorder = UsageRecorder(store, UsageConfig(max_queue=3))
        for i in range(5):
            recorder.record(record(f"m{i}"))
        with pytest.raises(Exception, match="no such table"):
            await recorder.flush()
        assert (recorder.queued, recorder.dropped) == (3, 2)
        await store.migrate()
        await recorder.flush()
        assert await models_in(store) == ["m2", "m3", "m4"]

    run(tmp_path, scenario, migrate=False)


async def _count_is(store: Store, n: int) -> bool:
    return await store.count_usage() == n
