"""Invocation logging: the prompts and responses of tenants that turn it on.

Off by default: a tenant's `log_invocations` flag (on its `Principal`) is false
unless an administrator sets it, and the gateway calls `record()` only when it
is true. `record()` serialises the request's messages or prompt to JSON and
appends to a list, no I/O; a background task writes the list in batches (like
usage records) and `close()` writes what is left. A failed write keeps its
entries for the next attempt; past `max_queue_bytes` of queued text the oldest
are dropped and counted in `dropped`.

Retention: the same task deletes each tenant's entries older than its
retention, once per `purge_interval_s` (and once at start). The retention is
`retention_days(tenant_id)` when that returns a number, else
`default_retention_days`. Every replica purges; deleting twice is harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from cumulo.store import records
from cumulo.store.batches import BatchWriter

log = logging.getLogger(__name__)

DAY_S = 86400.0


@dataclass(slots=True, frozen=True)
class InvocationLogConfig:
    flush_interval_s: float = 1.0
    batch_size: int = 200
    max_queue_bytes: int = 64 * 1024 * 1024
    default_retention_days: float = 30.0
    purge_interval_s: float = 3600.0


@dataclass(slots=True, frozen=True)
class Invocation:
    """One logged request and its response, as `entries()` returns it."""

    id: int
    ts: float
    tenant_id: str
    key_id: str | None
    endpoint: str
    model: str
    status: int
    prompt_tokens: int | None
    completion_tokens: int | None
    request: Any  # the messages or prompt, as the caller sent them (parsed JSON)
    response: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Invocation:
        return cls(
            id=row["id"],
            ts=row["ts"],
            tenant_id=row["tenant_id"],
            key_id=row["key_id"],
            endpoint=row["endpoint"],
            model=row["model"],
            status=row["status"],
            prompt_tokens=row["prompt_tokens"],
            completion_tokens=row["completion_tokens"],
            request=orjson.loads(row["request_json"]),
            response=row["response_text"],
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `GET /admin/invocations`."""
        return {
            "id": self.id,
            "ts": self.ts,
            "tenant_id": self.tenant_id,
            "key_id": self.key_id,
            "endpoint": self.endpoint,
            "model": self.model,
            "status": self.status,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "request": self.request,
            "response": self.response,
        }


class InvocationLog(BatchWriter[dict[str, Any]]):
    """Queues invocations in memory, writes them in batches, purges past retention.

    The queue is bounded by its size in bytes (`max_queue_bytes`), not by a count.
    """

    what = "invocation log entries"
    task_name = "cumulo-invocation-writer"

    def __init__(
        self,
        store: records.Engine,
        config: InvocationLogConfig | None = None,
        retention_days: Callable[[str], float | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config = config or InvocationLogConfig()
        super().__init__(
            flush_interval_s=config.flush_interval_s,
            batch_size=config.batch_size,
            max_queue=0,  # unused: bounded by bytes (`_trim`)
        )
        self.store = store
        self.retention_days = retention_days
        self.clock = clock
        self._pending_bytes = 0
        self._last_purge: float | None = None
        self.purged = 0

    def record(
        self,
        tenant_id: str,
        key_id: str | None,
        model: str,
        request: Any,
        response: str | None,
        *,
        endpoint: str = "",
        status: int = 200,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        ts: float | None = None,
    ) -> None:
        """Queue one invocation. No I/O; safe to call on the request path.

        `request` is the JSON-able messages or prompt; `response` the text
        returned (None if the request failed before any).
        """
        request_json = orjson.dumps(request, default=str).decode()
        if response is not None and "\x00" in response:
            response = response.replace("\x00", "\ufffd")  # PostgreSQL text refuses NUL
        row = {
            "ts": self.clock() if ts is None else ts,
            "tenant_id": tenant_id,
            "key_id": key_id,
            "endpoint": endpoint,
            "model": model,
            "status": status,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "request_json": request_json,
            "response_text": response,
        }
        self._pending_bytes += _size(row)
        self._queue(row)
        if self._pending_bytes > self.config.max_queue_bytes:
            self._trim()

    async def entries(
        self,
        tenant_id: str | None,
        *,
        key_id: str | None = None,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[Invocation]:
        """Logged invocations newest first (None: of every tenant; this process's queue
        is written first)."""
        await self.flush()
        rows = await records.invocation_entries(
            self.store,
            tenant_id=tenant_id,
            key_id=key_id,
            model=model,
            since=since,
            until=until,
            before_id=before_id,
            limit=limit,
        )
        return [Invocation.from_row(r) for r in rows]

    def retention_s(self, tenant_id: str) -> float:
        days = self.retention_days(tenant_id) if self.retention_days else None
        return (self.config.default_retention_days if days is None else days) * DAY_S

    async def purge(self) -> int:
        """Delete every tenant's entries older than its retention; the number deleted."""
        now = self._last_purge = self.clock()
        deleted = 0
        for tenant_id in await records.invocation_tenants(self.store):
            before = now - self.retention_s(tenant_id)
            deleted += await records.purge_invocations(self.store, tenant_id, before)
        self.purged += deleted
        if deleted:
            log.info("invocation log: deleted %d entries past retention", deleted)
        return deleted

    async def flush(self, limit: int | None = None) -> None:
        """Write everything queued, at most `limit` entries (taken off the queue first, put
        back if the write fails)."""
        async with self._flush_lock:
            left = len(self._pending) if limit is None else limit
            while self._pending and left > 0:
                # Taken off the queue first: `record()` may trim it while the write awaits.
                batch = self._pending[: min(self.config.batch_size, left)]
                left -= len(batch)
                del self._pending[: len(batch)]
                size = sum(_size(r) for r in batch)
                self._pending_bytes -= size
                try:
                    await records.insert_invocations(self.store, batch)
                except BaseException:
                    self._pending[:0] = batch
                    self._pending_bytes += size
                    if self._pending_bytes > self.config.max_queue_bytes:
                        self._trim()
                    raise
                self.written += len(batch)

    async def housekeeping(self) -> None:
        if self._last_purge is None or (
            self.clock() - self._last_purge >= self.config.purge_interval_s
        ):
            await self.purge()

    def _trim(self) -> None:
        dropped = freed = 0
        while self._pending_bytes - freed > self.config.max_queue_bytes:
            freed += _size(self._pending[dropped])
            dropped += 1
        del self._pending[:dropped]
        self._pending_bytes -= freed
        self.dropped += dropped
        log.error("invocation log queue full: dropped %d oldest entries", dropped)


def _size(row: dict[str, Any]) -> int:
    response = row["response_text"]
    return len(row["request_json"]) + (len(response) if response is not None else 0)
