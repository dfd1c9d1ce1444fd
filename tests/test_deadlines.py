"""Deadlines kept by one sweeper: expiry, outside cancellation, many calls at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from cumulo.deadlines import DeadlinePassed, Deadlines


def test_a_call_past_its_deadline_raises_deadline_passed() -> None:
    async def main() -> None:
        d = Deadlines(tick_s=0.005)
        started = time.monotonic()
        with pytest.raises(DeadlinePassed), d.at(started + 0.05):
            await asyncio.sleep(5)
        assert time.monotonic() - started < 1
        with d.at(time.monotonic() + 1):
            assert await asyncio.sleep(0, "done") == "done"
        await d.close()

    asyncio.run(main())


def test_an_outside_cancellation_stays_a_cancellation() -> None:
    async def main() -> None:
        d = Deadlines(tick_s=0.005)

        async def sleep_under_deadline() -> None:
            with d.at(time.monotonic() + 10):
                await asyncio.sleep(5)

        task = asyncio.create_task(sleep_under_deadline())
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await d.close()

    asyncio.run(main())


def test_many_calls_each_keep_their_own_deadline() -> None:
    async def main() -> None:
        d = Deadlines(tick_s=0.005)
        now = time.monotonic()

        async def one(i: int) -> str:
            try:
                with d.at(now + (0.05 if i % 2 else 5)):
                    await asyncio.sleep(0.2)
                return "finished"
            except DeadlinePassed:
                return "expired"

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert results.count("expired") == 100 and results.count("finished") == 100
        # Quick calls leave nothing behind once the sweeper has run.
        for _ in range(2000):
            with d.at(time.monotonic() + 60):
                await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert len(d._heap) < 1000
        await d.close()

    asyncio.run(main())
