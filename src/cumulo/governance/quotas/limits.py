"""Rate limits: requests per minute, tokens per minute and concurrent requests.

A request is admitted against several scopes at once (its key, its tenant, the
deployment it will use), all or nothing: if one scope refuses, nothing is
charged anywhere. Each limited dimension of a scope is a token bucket whose
capacity is the per-minute limit, refilled continuously at limit/60 per second:

- requests: admission takes 1 from the bucket (it needs at least 1);
- tokens: admission needs the bucket to hold the request's prompt tokens (at
  least 1, at most the whole capacity) and takes them; completion tokens are
  taken as they are produced, through `Permit.consume`. The bucket may go
  negative: that debt delays the requests that follow;
- concurrency: a counter of admitted requests not yet released.

Two implementations share the `Limiter` interface: `MemoryLimiter` (one
replica; admission is a few dictionary lookups, no I/O) and `RedisLimiter` in
`limits_redis.py` (replicas share one limit; one round trip per admission).
`quotas.factory.make_limiter` picks one. A refusal raises `RateLimited` naming the limit, with
`retry_after` seconds and OpenAI's `x-ratelimit-*` headers in `headers`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from cumulo.errors import InvalidRequest, RateLimited

# A concurrency refusal cannot know when a slot frees up; clients retry after this.
CONCURRENCY_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one scope; None means unlimited."""

    rpm: int | None = None  # requests per minute
    tpm: int | None = None  # tokens (prompt + completion) per minute
    concurrency: int | None = None  # requests in flight at once

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.concurrency is None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Limits | None:
        """Limits from stored JSON (`{"rpm": 60, "tpm": 10000, "concurrency": 4}`).

        None or `{}` gives None (no limits). Raises `InvalidRequest` naming the
        field when a value is not a positive integer or a name is unknown.
        """
        if not data:
            return None
        unknown = set(data) - {"rpm", "tpm", "concurrency"}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidRequest(
                f"Unknown limit '{name}': expected rpm, tpm or concurrency.", param=name
            )
        values: dict[str, int | None] = {}
        for name in ("rpm", "tpm", "concurrency"):
            value = data.get(name)
            if value is not None and (type(value) is not int or value < 1):
                raise InvalidRequest(
                    f"Limit '{name}' must be a positive integer, not {value!r}.", param=name
                )
            values[name] = value
        limits = cls(**values)
        return None if limits.unlimited else limits


class Scope(NamedTuple):
    """One thing a request is counted against: ("tenant", tenant_id, limits, "acme")."""

    kind: str  # "key", "tenant" or "deployment": used in messages and storage keys
    id: str  # stable identity (key id, tenant id, deployment label)
    limits: Limits
    label: str | None = None  # the name shown in refusals (tenant or key name); default: id


class Permit(Protocol):
    """An admitted request's hold on its limits, until `release()`."""

    def consume(self, tokens: int) -> None:
        """Charge completion tokens as they are produced. No I/O; cheap per token."""

    def release(self) -> None:
        """Free the concurrency slot (idempotent). Shared limiters write it in the background."""

    def headers(self) -> dict[str, str]:
        """OpenAI's `x-ratelimit-*` headers for the tightest scope (empty when unlimited)."""


class Limiter(Protocol):
    """Admits requests against their scopes' limits."""

    async def acquire(self, scopes: Sequence[Scope], prompt_tokens: int = 0) -> Permit:
        """Admit one request against every scope or none; raises `RateLimited` on refusal."""

    def start(self) -> None:
        """Start background work (batched writes to a shared store), if any."""

    async def flush(self) -> None:
        """Write every pending token charge and release now."""

    async def close(self) -> None:
        """Flush, stop background work and release connections."""


# --- OpenAI's x-ratelimit-* headers ----------------------------------------------------


class Gauge(NamedTuple):
    """One bucket's state for the headers: its limit (per minute) and its level now."""

    limit: int
    level: float


def format_duration(seconds: float) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-*`: 12ms, 7.66s, 6m0s, 1h2m3s."""
    if seconds <= 0:
        return "0s"
    if seconds < 0.999:
        return f"{math.ceil(seconds * 1000 - 1e-6) or 1}ms"
    centis = math.ceil(seconds * 100 - 1e-6)
    minutes, centis = divmod(centis, 6000)
    secs = f"{centis // 100}s" if centis % 100 == 0 else f"{centis / 100:.2f}".rstrip("0") + "s"
    if not minutes:
        return secs
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{secs}" if hours else f"{minutes}m{secs}"


def tightest(gauges: Iterable[Gauge]) -> Gauge | None:
    """The gauge with the fewest remaining (then the smallest limit)."""
    best: Gauge | None = None
    for gauge in gauges:
        if best is None or (gauge.level, gauge.limit) < (best.level, best.limit):
            best = gauge
    return best


def ratelimit_headers(requests: Gauge | None, tokens: Gauge | None) -> dict[str, str]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` for the gauges given.

    Reset is the time until the bucket is full again ("resets to its initial state").
    """
    headers: dict[str, str] = {}
    if requests is not None:
        limit, level = requests
        headers["x-ratelimit-limit-requests"] = str(limit)
        headers["x-ratelimit-remaining-requests"] = str(int(level) if level > 0 else 0)
        headers["x-ratelimit-reset-requests"] = format_duration((limit - level) * 60.0 / limit)
    if tokens is not None:
        limit, level = tokens
        headers["x-ratelimit-limit-tokens"] = str(limit)
        headers["x-ratelimit-remaining-tokens"] = str(int(level) if level > 0 else 0)
        headers["x-ratelimit-reset-tokens"] = format_duration((limit - level) * 60.0 / limit)
    return headers


def refusal(scope: Scope, dim: str, wait_s: float, headers: dict[str, str]) -> RateLimited:
    """The error for `scope` refusing on `dim` ("rpm", "tpm" or "concurrency")."""
    name = f"{scope.kind} '{scope.label or scope.id}'"
    limits = scope.limits
    if dim == "concurrency":
        exc = RateLimited(
            f"Concurrency limit reached for {name}: {limits.concurrency} requests at a time.",
            code="concurrency_limit_exceeded",
            retry_after=wait_s,
        )
    else:
        what = f"{limits.rpm} requests" if dim == "rpm" else f"{limits.tpm} tokens"
        exc = RateLimited(
            f"Rate limit reached for {name}: {what} per minute.",
            code="rate_limit_exceeded",
            retry_after=wait_s,
        )
    exc.headers = headers
    return exc


# --- In memory: one replica ------------------------------------------------------------


class _Bucket:
    __slots__ = ("cap", "level", "rate", "t")

    def __init__(self, cap: int, now: float) -> None:
        self.cap = cap
        self.rate = cap / 60.0
        self.level = float(cap)
        self.t = now

    def refill(self, now: float) -> float:
        level = self.level + (now - self.t) * self.rate
        if level > self.cap:
            level = float(self.cap)
        self.level = level
        self.t = now
        return level

    def resize(self, cap: int) -> None:
        """A changed limit: same level, new capacity and rate (as the Redis script does)."""
        self.cap = cap
        self.rate = cap / 60.0


class _ScopeState:
    __slots__ = ("limits", "rpm", "running", "tpm")

    def __init__(self, limits: Limits, now: float) -> None:
        self.limits = limits
        self.rpm = _Bucket(limits.rpm, now) if limits.rpm else None
        self.tpm = _Bucket(limits.tpm, now) if limits.tpm else None
        self.running = 0

    def update(self, limits: Limits, now: float) -> None:
        for dim in ("rpm", "tpm"):
            cap: int | None = getattr(limits, dim)
            bucket: _Bucket | None = getattr(self, dim)
            if cap is None:
                setattr(self, dim, None)
            elif bucket is None:
                setattr(self, dim, _Bucket(cap, now))
            else:
                bucket.resize(cap)
        self.limits = limits


class MemoryPermit:
    """A permit of the in-memory limiter: charges and releases are immediate."""

    __slots__ = ("_clock", "_released", "_states", "_tpm")

    def __init__(self, states: list[_ScopeState], clock: Callable[[], float]) -> None:
        self._states = states
        self._tpm = [s.tpm for s in states if s.tpm is not None]
        self._clock = clock
        self._released = False

    def consume(self, tokens: int) -> None:
        if self._tpm and tokens > 0:
            now = self._clock()
            for bucket in self._tpm:
                bucket.refill(now)
                bucket.level -= tokens

    def release(self) -> None:
        if not self._released:
            self._released = True
            for state in self._states:
                if state.limits.concurrency is not None:
                    state.running -= 1

    def headers(self) -> dict[str, str]:
        return _memory_headers(self._states, self._clock())


def _memory_headers(states: Iterable[_ScopeState], now: float) -> dict[str, str]:
    requests: Gauge | None = None
    tokens: Gauge | None = None
    for state in states:
        if (bucket := state.rpm) is not None:
            level = bucket.refill(now)
            if requests is None or (level, bucket.cap) < requests[::-1]:
                requests = Gauge(bucket.cap, level)
        if (bucket := state.tpm) is not None:
            level = bucket.refill(now)
            if tokens is None or (level, bucket.cap) < tokens[::-1]:
                tokens = Gauge(bucket.cap, level)
    return ratelimit_headers(requests, tokens)


class _NoLimits:
    """The permit of a request no scope limits."""

    __slots__ = ()

    def consume(self, tokens: int) -> None:
        pass

    def release(self) -> None:
        pass

    def headers(self) -> dict[str, str]:
        return {}


NO_LIMITS: Permit = _NoLimits()


class MemoryLimiter:
    """Token buckets in this process's memory: for a single replica.

    `clock` (monotonic seconds) is injectable so tests can move time. Nothing
    here awaits: `acquire_now` is the synchronous admission `acquire` wraps.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._states: dict[tuple[str, str], _ScopeState] = {}

    def start(self) -> None:
        pass

    async def flush(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def acquire(self, scopes: Sequence[Scope], prompt_tokens: int = 0) -> Permit:
        return self.acquire_now(scopes, prompt_tokens)

    def acquire_now(self, scopes: Sequence[Scope], prompt_tokens: int = 0) -> Permit:
        """Admit the request against every scope or none; raises `RateLimited`."""
        now = self._clock()
        states: list[_ScopeState] = []
        worst: tuple[float, Scope, str] | None = None
        for scope in scopes:
            limits = scope.limits
            if limits.unlimited:
                continue
            key = (scope.kind, scope.id)
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = _ScopeState(limits, now)
            elif state.limits is not limits and state.limits != limits:
                state.update(limits, now)
            states.append(state)
            if state.rpm is not None:
                level = state.rpm.refill(now)
                if level < 1.0:
                    wait = (1.0 - level) / state.rpm.rate
                    if worst is None or wait > worst[0]:
                        worst = (wait, scope, "rpm")
            if state.tpm is not None:
                need = max(1, min(prompt_tokens, state.tpm.cap))
                level = state.tpm.refill(now)
                if level < need:
                    wait = (need - level) / state.tpm.rate
                    if worst is None or wait > worst[0]:
                        worst = (wait, scope, "tpm")
            if limits.concurrency is not None and state.running >= limits.concurrency:
                wait = CONCURRENCY_RETRY_S
                if worst is None or wait > worst[0]:
                    worst = (wait, scope, "concurrency")
        if worst is not None:
            raise refusal(worst[1], worst[2], worst[0], _memory_headers(states, now))
        if not states:
            return NO_LIMITS
        for state in states:
            if state.rpm is not None:
                state.rpm.level -= 1.0
            if state.tpm is not None:
                state.tpm.level -= prompt_tokens
            if state.limits.concurrency is not None:
                state.running += 1
        return MemoryPermit(states, self._clock)
