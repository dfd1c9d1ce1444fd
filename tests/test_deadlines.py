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
        with pytest.raises(DeadlinePassed):
            await d.run(asyncio.sleep(5), started + 0.05)
        assert time.monotonic() - started < 1
        assert await d.run(asyncio.sleep(0, "done"), time.monotonic() + 1) == "done"
        await d.close()

    asyncio.run(main())


def test_an_outside_cancellation_stays_a_cancellation() -> None:
    async def main() -> None:
        d = Deadlines(tick_s=0.005)
        task = asyncio.create_task(d.run(asyncio.sleep(5), time.monotonic() + 10))
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
                await d.run(asyncio.sleep(0.2), now + (0.05 if i % 2 else 5))
                return "finished"
            except DeadlinePassed:
                return "expired"

        results = await asyncio.gather(*(one(i) for i in range(200)))
        assert results.count("expired") == 100 and results.count("finished") == 100
        # Quick calls leave nothing behind once the sweeper has run.
        for _ in range(2000):
            await d.run(asyncio.sleep(0), time.monotonic() + 60)
        await asyncio.sleep(0.05)
        assert len(d._heap) < 1000
        await d.close()

    asyncio.run(main())
