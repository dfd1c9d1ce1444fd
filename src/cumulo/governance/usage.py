"""Usage records: queued in memory on the request path, written in batches.

`record()` only appends to a list; the rest is `governance.batches`: written
every `flush_interval_s` (sooner once `batch_size` records wait), kept through
a failed write (the oldest dropped past `max_queue`), flushed on `close()`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from operator import attrgetter

from cumulo.config import UsageConfig
from cumulo.governance.batches import BatchWriter
from cumulo.store.db import Store


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
        return dict(zip(USAGE_COLUMNS, _values(self), strict=True))


# The usage table's columns, as the recorder writes them (one tuple per record).
USAGE_COLUMNS: tuple[str, ...] = tuple(UsageRecord.__slots__)
_values = attrgetter(*USAGE_COLUMNS)


class UsageRecorder(BatchWriter[UsageRecord]):
    what = "usage records"
    task_name = "cumulo-usage-writer"

    def __init__(self, store: Store, config: UsageConfig) -> None:
        super().__init__(
            flush_interval_s=config.flush_interval_s,
            batch_size=config.batch_size,
            max_queue=config.max_queue,
        )
        self.store = store
        self.config = config

    def record(self, rec: UsageRecord) -> None:
        """Queue one record. No I/O; safe to call on the request path."""
        if not rec.ts:
            rec.ts = time.time()
        self._queue(rec)

    async def _write(self, batch: list[UsageRecord]) -> None:
        await self.store.insert_usage_values(USAGE_COLUMNS, [_values(r) for r in batch])
