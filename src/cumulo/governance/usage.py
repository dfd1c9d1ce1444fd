"""Usage records: queued in memory on the request path, written in batches.

`record()` only appends to a list. A background task writes the batch every
`flush_interval_s` (or sooner once `batch_size` records wait), and `close()`
writes whatever is left, so a graceful shutdown loses nothing. A failed write
keeps its records for the next attempt; only past `max_queue` are the oldest
dropped, with an error logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from cumulo.config import UsageConfig
from cumulo.store.db import Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UsageRecord:
    key_id: str | None
    endpoint: str
    model: str
    deployment: str | None
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    status: int
    error_type: str | None
    served_model: str | None = None
    attempts: int = 0
    queue_ms: float | None = None  # time waiting for a local engine slot
    tenant_id: str | None = None
    cost_usd: float | None = None  # None: the deployment has no known price
    guardrail_interventions: int = 0
    ts: float = 0.0

    def as_row(self) -> dict[str, object]:
        # Shallow, unlike dataclasses.asdict: every field is a scalar.
        return {name: getattr(self, name) for name in self.__slots__}


class UsageRecorder:
    def __init__(self, store: Store, config: UsageConfig) -> None:
        self.store = store
        self.config = config
        self._pending: list[UsageRecord] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self.dropped = 0
        self.written = 0

    def record(self, rec: UsageRecord) -> None:
        """Queue one record. No I/O; safe to call on the request path."""
        if not rec.ts:
            rec.ts = time.time()
        self._pending.append(rec)
        if len(self._pending) >= self.config.batch_size:
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cumulo-usage-writer")

    async def close(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.flush_interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # the records stay queued; the next tick retries
                log.exception("writing usage records failed; will retry")

    async def flush(self) -> None:
        async with self._flush_lock:
            while self._pending:
                batch = self._pending[: self.config.batch_size]
                try:
                    await self.store.insert_usage([r.as_row() for r in batch])
                except BaseException:
                    self._trim()
                    raise
                del self._pending[: len(batch)]
                self.written += len(batch)

    def _trim(self) -> None:
        excess = len(self._pending) - self.config.max_queue
        if excess > 0:
            del self._pending[:excess]
            self.dropped += excess
            log.error("usage queue full: dropped %d oldest records", excess)
