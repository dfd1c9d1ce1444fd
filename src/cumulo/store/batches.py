"""Queues written to the store in batches by one background task.

Usage records, alerts, audit-ledger entries and invocation logs all work this
way: the request path only appends to a list (`_queue`, no I/O); a background
task writes it every `flush_interval_s`, or at once when a batch is full; a
failed write keeps its items for the next try, dropping the oldest past
`max_queue`; `close()` stops the task and writes what is left, so a graceful
shutdown loses nothing. Subclasses write a batch (`_write`) and may have
periodic work of their own (`housekeeping`, e.g. purging old rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class BatchWriter(Generic[T]):
    what = "records"  # in log lines
    task_name = "cumulo-writer"

    def __init__(self, *, flush_interval_s: float, batch_size: int, max_queue: int) -> None:
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.max_queue = max_queue
        self._pending: list[T] = []
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0

    @property
    def queued(self) -> int:
        return len(self._pending)

    def _queue(self, item: T) -> None:
        """Queue one item. No I/O; safe to call on the request path."""
        self._pending.append(item)
        if len(self._pending) >= self.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def close(self) -> None:
        """Stop the background task and write everything still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        await self._tick(flush=False)  # housekeeping at start; items wait for their batch
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            await self._tick(flush=True)

    async def _tick(self, flush: bool) -> None:
        try:
            if flush:
                # Only what is queued now: under load, chasing the items that arrive while
                # a batch is written turned into a stream of small batches.
                await self.flush(len(self._pending))
            await self.housekeeping()
        except Exception:  # what is queued stays queued; the next tick retries
            log.exception("writing %s failed; will retry", self.what)

    async def flush(self, limit: int | None = None) -> None:
        """Write everything queued (at most `limit` items), `batch_size` at a time."""
        async with self._flush_lock:
            left = len(self._pending) if limit is None else limit
            while self._pending and left > 0:
                batch = self._pending[: min(self.batch_size, left)]
                left -= len(batch)
                try:
                    await self._write(batch)
                except BaseException:
                    self._trim()
                    raise
                del self._pending[: len(batch)]
                self.written += len(batch)

    async def _write(self, batch: list[T]) -> object:
        """Write one batch (what it returns is the subclass's own business)."""
        raise NotImplementedError

    async def housekeeping(self) -> None:
        """Periodic work after each write (none by default)."""

    def _trim(self) -> None:
        excess = len(self._pending) - self.max_queue
        if excess > 0:
            del self._pending[:excess]
            self.dropped += excess
            log.error("%s queue full: dropped the %d oldest", self.what, excess)
