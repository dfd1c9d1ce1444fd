"""A circuit breaker per deployment.

    closed ──(N consecutive failures, or error rate ≥ R over the last W calls)──► open
    open ──(cooldown elapsed)──► half-open: one probe at a time is let through
    half-open ──(probe succeeds)──► closed      half-open ──(probe fails)──► open
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Literal, TypeAlias

State: TypeAlias = Literal["closed", "open", "half_open"]


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

    def allow(self, now: float | None = None) -> bool:
        """May a call go to this deployment now? (A half-open breaker admits one probe.)"""
        if self.state == "closed":
            return True
        now = time.monotonic() if now is None else now
        if self.state == "open":
            if now - self._opened_at < self.policy.cooldown_s:
                return False
            self.state = "half_open"
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def record(self, ok: bool, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.state == "half_open":
            self._probing = False
            if ok:
                self._close()
            else:
                self._open(now)
            return
        self._recent.append(ok)
        self._consecutive = 0 if ok else self._consecutive + 1
        if self.state == "closed" and not ok and self._should_open():
            self._open(now)

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

    def release_probe(self) -> None:
        """A probe that ended without a verdict (e.g. the client went away) frees its slot."""
        self._probing = False
