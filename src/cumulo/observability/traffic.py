"""A line in the log every minute about the traffic served, from the in-memory metrics.

With `server.access_log` off (the default), a server busy with requests would otherwise
print nothing. Every `server.traffic_log_interval_s` seconds (60; 0 turns it off) one
line says how many requests finished since the last line, how many failed (by status)
and where their median latency lies, e.g.

    traffic, last 60 s: 1250 requests, 12 errors (429: 10, 502: 2), p50 250-500 ms

The median is read from the latency histogram of `observability.metrics`, so it is a
bucket's range, not a point. Nothing is logged when no request finished. The timer runs
on the event loop and reads counters only: nothing on the request path changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from cumulo.observability.metrics import Metrics

log = logging.getLogger("cumulo.traffic")


class TrafficLog:
    def __init__(self, metrics: Metrics, interval_s: float, name: str = "traffic") -> None:
        self.metrics = metrics
        self.interval_s = interval_s
        self.name = name
        self._last = metrics.totals()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="cumulo-traffic-log")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            line = self.line()
            if line is not None:
                log.info("%s", line)

    def line(self) -> str | None:
        """What finished since the last call, as one line; None when nothing did."""
        now = self.metrics.totals()
        last, self._last = self._last, now
        by_status = {
            status: n - last.by_status.get(status, 0) for status, n in now.by_status.items()
        }
        requests = sum(by_status.values())
        if requests <= 0:
            return None
        errors = {s: n for s, n in sorted(by_status.items()) if s >= 400 and n > 0}
        text = f"{self.name}, last {self.interval_s:g} s: {requests} requests, "
        text += f"{sum(errors.values())} errors"
        if errors:
            text += " (" + ", ".join(f"{s}: {n}" for s, n in errors.items()) + ")"
        counts = [a - b for a, b in zip(now.latency_counts, last.latency_counts, strict=True)]
        return f"{text}, p50 {median_range(now.bounds, counts)}"


def median_range(bounds: tuple[float, ...], counts: list[int]) -> str:
    """The histogram bucket holding the median latency, e.g. `250-500 ms`: `counts[i]`
    observations up to `bounds[i]` (the last count: beyond every bound)."""
    half, seen = sum(counts) / 2, 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= half and n:
            if i == 0:
                return f"under {_duration(bounds[0])}"
            if i == len(bounds):
                return f"over {_duration(bounds[-1])}"
            low, high = bounds[i - 1], bounds[i]
            if high < 1:
                return f"{low * 1000:g}-{high * 1000:g} ms"
            return f"{low:g}-{high:g} s"
    return "-"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"
