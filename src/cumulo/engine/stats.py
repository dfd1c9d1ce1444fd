"""Engine figures for `GET /admin/engine`: counters and recent windows, cheap to update."""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

RECENT_REQUESTS = 200  # queue time and TTFT are summarised over this many recent requests
RATE_WINDOW_S = 10.0  # tokens/s is measured over this many recent seconds


@dataclass(frozen=True, slots=True)
class EngineStats:
    """A snapshot of one model's engine."""

    running: int
    waiting: int
    max_running: int
    max_queue: int
    slot_tokens: int
    max_tokens_in_flight: int
    tokens_in_flight: int
    kv_cache_bytes: int
    total_tokens: int
    total_requests: int
    tokens_per_s: float
    queue_ms_p50: float | None
    ttft_ms_p50: float | None
    prefix_cache_tokens: int = 0  # the prefix cache's budget, in tokens of KV
    prefix_cache_used_tokens: int = 0  # tokens of KV it holds now
    prefix_cache_bytes: int = 0  # its memory (allocated at start)
    prefix_cached_tokens: int = 0  # prompt tokens copied from it since start
    prefix_cache_hits: int = 0  # requests that copied at least one block since start

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


class Recent:
    """Counters and recent samples, written by the engine thread only."""

    def __init__(self) -> None:
        self.total_tokens = 0
        self.total_requests = 0
        self._steps: deque[tuple[float, int]] = deque()  # (time, tokens sampled in the step)
        self._window_tokens = 0
        self.queue_ms: deque[float] = deque(maxlen=RECENT_REQUESTS)
        self.ttft_ms: deque[float] = deque(maxlen=RECENT_REQUESTS)
        self.service_s: deque[float] = deque(maxlen=RECENT_REQUESTS)

    def tokens(self, n: int, now: float) -> None:
        self.total_tokens += n
        self._steps.append((now, n))
        self._window_tokens += n
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._steps and self._steps[0][0] < now - RATE_WINDOW_S:
            self._window_tokens -= self._steps.popleft()[1]

    def tokens_per_s(self) -> float:
        now = time.perf_counter()
        steps = list(self._steps)  # a copy: the engine thread appends concurrently
        recent = [(t, n) for t, n in steps if t >= now - RATE_WINDOW_S]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1.0)
        return sum(n for _, n in recent) / span

    def mean_service_s(self) -> float | None:
        samples = list(self.service_s)
        return statistics.fmean(samples) if samples else None


def p50(samples: deque[float]) -> float | None:
    values = list(samples)
    return round(statistics.median(values), 3) if values else None
