"""Deadlines for many concurrent calls, kept by one sweeper instead of a timer each.

`asyncio.timeout` arms an event-loop timer per call; on uvloop each is a libuv
handle that is created, started, stopped and closed again: measurable at
thousands of requests per second (bench/gateway.py). Here each call only pushes
its deadline on a heap; one task wakes every `tick_s` and cancels the calls whose
deadline passed, which then raise `TimeoutError` exactly as under
`asyncio.timeout` (`DeadlinePassed`; a cancellation from anywhere else stays a
cancellation). A deadline fires up to `tick_s` late; routing deadlines are
seconds long.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time


class DeadlinePassed(TimeoutError):
    """The deadline given to `Deadlines.at` passed (not a timeout from inside the work)."""


class _Call:
    """One call under a deadline: a context manager, so it adds no coroutine to the chain
    every resumption of the call passes through."""

    __slots__ = ("deadlines", "expired", "task")

    def __init__(self, deadlines: Deadlines, task: asyncio.Task[object]) -> None:
        self.deadlines = deadlines
        self.task = task
        self.expired = False

    def __enter__(self) -> _Call:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self.deadlines._live.discard(self)
        if kind is asyncio.CancelledError and self.expired and self.task.uncancel() == 0:
            raise DeadlinePassed from None


class Deadlines:
    def __init__(self, tick_s: float = 0.01) -> None:
        self.tick_s = tick_s
        self._heap: list[tuple[float, int, _Call]] = []
        self._live: set[_Call] = set()
        self._seq = itertools.count()
        self._sweeper: asyncio.Task[None] | None = None

    def at(self, deadline: float) -> _Call:
        """`with deadlines.at(t): await ...` raises `DeadlinePassed` once
        `time.monotonic()` passes `t` (in the current task)."""
        task = asyncio.current_task()
        assert task is not None
        call = _Call(self, task)
        self._live.add(call)
        heapq.heappush(self._heap, (deadline, next(self._seq), call))
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return call

    async def _sweep(self) -> None:
        try:
            while self._live:
                await asyncio.sleep(self.tick_s)
                now = time.monotonic()
                heap = self._heap
                while heap and (heap[0][0] <= now or heap[0][2] not in self._live):
                    _, _, call = heapq.heappop(heap)
                    if call in self._live and not call.expired:
                        call.expired = True
                        call.task.cancel()
                if len(heap) > 4 * len(self._live) + 256:  # finished calls' entries: drop them
                    self._heap = heap = [e for e in heap if e[2] in self._live]
                    heapq.heapify(heap)
            self._heap.clear()
        finally:
            self._sweeper = None

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
