"""Alerts: raised on the request path, stored in batches, read by every replica.

Any part of the platform raises an `Alert` through the `AlertSink`: the anomaly
detector (`governance.telemetry.anomaly`, kinds `anomaly.*`), budgets (`budget.soft_threshold`),
or anything else with a kind of its own. `emit()` only counts the alert, logs
one line and appends it to a list; a background task writes the list to the
store every `flush_interval_s` (sooner once `batch_size` wait), and `close()`
writes what is left. Reads (`recent()`) go to the store, so each replica sees
the alerts of all of them.

A failed write keeps its alerts for the next attempt; past `max_queue` the
oldest are dropped (and counted in `dropped`). Alerts older than `retention_s`
are deleted by the same background task, once per `purge_interval_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from cumulo.store import records
from cumulo.store.batches import BatchWriter

log = logging.getLogger(__name__)

Severity = Literal["warning", "critical"]


@dataclass(slots=True, frozen=True)
class Alert:
    """One alert. `message` is for people; `details` holds the figures behind it."""

    kind: str  # e.g. "anomaly.request_spike", "budget.soft_threshold"
    key_id: str | None
    tenant_id: str | None
    ts: float
    severity: Severity
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None  # set once stored

    def as_row(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "kind": self.kind,
            "severity": self.severity,
            "tenant_id": self.tenant_id,
            "key_id": self.key_id,
            "message": self.message,
            "details": self.details,
        }

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `GET /admin/alerts`."""
        return {"id": self.id, **self.as_row()}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Alert:
        severity: Severity = "critical" if row["severity"] == "critical" else "warning"
        return cls(
            kind=row["kind"],
            key_id=row["key_id"],
            tenant_id=row["tenant_id"],
            ts=row["ts"],
            severity=severity,
            message=row["message"],
            details=row["details"] or {},
            id=row["id"],
        )


@dataclass(slots=True, frozen=True)
class AlertSinkConfig:
    flush_interval_s: float = 1.0
    batch_size: int = 200
    max_queue: int = 10_000
    retention_s: float = 90 * 86400.0
    purge_interval_s: float = 3600.0


class AlertSink(BatchWriter[Alert]):
    """Collects alerts in memory and writes them to the store in the background.

    `on_alert` (optional) is called with each alert as it is emitted, on the
    request path: it must not block (e.g. increment a Prometheus counter).
    """

    what = "alerts"
    task_name = "cumulo-alert-writer"

    def __init__(
        self,
        store: records.Engine,
        config: AlertSinkConfig | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config = config or AlertSinkConfig()
        super().__init__(
            flush_interval_s=config.flush_interval_s,
            batch_size=config.batch_size,
            max_queue=config.max_queue,
        )
        self.store = store
        self.on_alert = on_alert
        self.clock = clock
        self._counts: dict[str, int] = {}
        self._last_purge = 0.0

    def emit(self, alert: Alert) -> None:
        """Queue one alert. No I/O; safe to call on the request path."""
        self._counts[alert.kind] = self._counts.get(alert.kind, 0) + 1
        log.warning("alert %s (%s): %s", alert.kind, alert.severity, alert.message)
        if self.on_alert is not None:
            self.on_alert(alert)
        self._queue(alert)

    def emit_all(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            self.emit(alert)

    def counts(self) -> dict[str, int]:
        """Alerts emitted by this process since it started, per kind (for metrics)."""
        return dict(self._counts)

    async def recent(
        self,
        tenant_id: str | None = None,
        since: float | None = None,
        limit: int = 100,
        *,
        kind: str | None = None,
        key_id: str | None = None,
        before_id: int | None = None,
    ) -> list[Alert]:
        """Stored alerts newest first (this process's queue is written first)."""
        await self.flush()
        rows = await records.recent_alerts(
            self.store,
            tenant_id=tenant_id,
            since=since,
            kind=kind,
            key_id=key_id,
            before_id=before_id,
            limit=limit,
        )
        return [Alert.from_row(r) for r in rows]

    async def _write(self, batch: list[Alert]) -> None:
        await records.insert_alerts(self.store, [a.as_row() for a in batch])

    async def purge(self) -> int:
        """Delete alerts older than the retention; the number deleted."""
        self._last_purge = self.clock()
        return await records.purge_alerts(self.store, self._last_purge - self.config.retention_s)

    async def housekeeping(self) -> None:
        if self.clock() - self._last_purge >= self.config.purge_interval_s:
            await self.purge()
