"""A circuit breaker per deployment.

    closed ──(N consecutive failures, or error rate ≥ R over the last W calls)──► open
    open ──(cooldown elapsed)──► half-open: one probe at a time is let through
    half-open ──(probe succeeds)──► closed      half-open ──(probe fails)──► open

`allow()` admits a call and says whether it is the half-open probe; the
caller hands that back to `record()` (or `release()` when the call ended
without a verdict, e.g. the client went away). Only the probe's outcome moves a
half-open breaker: calls admitted before the circuit opened may still finish
while it is half-open, and must neither close it nor free the probe's slot.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, TypeAlias

State: TypeAlias = Literal["closed", "open", "half_open"]
BreakerPass: TypeAlias = Literal["call", "probe"]

# For gauges: the numeric value of each state (documented with the metric).
STATE_VALUES: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    consecutive_failures: int = 5
    error_rate: float = 0.5
    window: int = 20
    cooldown_s: float = 10.0


class CircuitBreaker:
    def __init__(self, policy: BreakerPolicy) -> None:
        self.policy = policy
        self.state: State = "closed"
        self._consecutive = 0
        self._recent: deque[bool] = deque(maxlen=policy.window)
        self._opened_at = 0.0
        self._probing = False
        self.opened_count = 0

    def available(self, now: float | None = None) -> bool:
        """Would `allow()` admit a call now? (No side effects.)"""
        if self.state == "closed":
            return True
        now = time.monotonic() if now is None else now
        if self.state == "open":
            return now - self._opened_at >= self.policy.cooldown_s
        return not self._probing

    def allow(self, now: float | None = None) -> BreakerPass | None:
        """Admit a call now: `"call"`, `"probe"` (the one half-open trial), or None."""
        if self.state == "closed":
            return "call"
        now = time.monotonic() if now is None else now
        if self.state == "open":
            if now - self._opened_at < self.policy.cooldown_s:
                return None
            self.state = "half_open"
            self._probing = False
        if self._probing:
            return None
        self._probing = True
        return "probe"

    def record(self, ok: bool, admission: BreakerPass = "call", now: float | None = None) -> None:
        """The outcome of a call `allow()` admitted as `admission`."""
        now = time.monotonic() if now is None else now
        if admission == "probe":
            self._probing = False
            if self.state == "half_open":
                if ok:
                    self._close()
                else:
                    self._open(now)
            return
        self._recent.append(ok)
        self._consecutive = 0 if ok else self._consecutive + 1
        if self.state == "closed" and not ok and self._should_open():
            self._open(now)

    def release(self, admission: BreakerPass) -> None:
        """A call that ended without a verdict; a probe frees its slot for the next one."""
        if admission == "probe":
            self._probing = False

    def _should_open(self) -> bool:
        p = self.policy
        if self._consecutive >= p.consecutive_failures:
            return True
        if len(self._recent) >= p.window:
            failures = sum(1 for ok in self._recent if not ok)
            return failures / len(self._recent) >= p.error_rate
        return False

    def _open(self, now: float) -> None:
        self.state = "open"
        self._opened_at = now
        self.opened_count += 1

    def _close(self) -> None:
        self.state = "closed"
        self._consecutive = 0
        self._recent.clear()
