"""Rate limits shared by every replica through Redis.

The buckets are those of `limits.py`, kept in Redis so that all replicas draw
from one limit:

- admission is one round trip: a Lua script checks every limited dimension of
  every scope and charges all of them or none (scripts run atomically);
- completion tokens are counted in the permit (`consume` does no I/O) and sent
  in batches by a background flusher every `flush_interval_s` (0.1 s), together
  with releases and lease renewals: one round trip per batch, whatever the
  number of requests;
- a released concurrency slot wakes the flusher at once, so other replicas can
  reuse it without waiting for the next tick.

Keys, under a configurable `prefix` (tests use a unique one):

    {prefix}:rl:{kind}:{id}:rpm|tpm   hash {l: level, t: time of level}; it expires when the
                                      bucket would be full again (no key = a full bucket)
    {prefix}:rl:{kind}:{id}:conc      sorted set: permit id -> end of its lease (epoch s)

Leaked slots: a concurrency slot is a lease, not a bare counter. Each permit's
member is scored with the time its lease ends (`lease_s`, 60 s by default); the
flusher renews the leases of this replica's live permits every `lease_s / 3`,
and every admission first drops expired members. A replica that crashes thus
holds its slots for at most `lease_s`.

Time is the Redis server's clock (TIME inside the scripts), so replicas with
skewed clocks agree; tests may inject one clock instead. The scripts touch keys
of several scopes, so this needs a single Redis (or a primary with replicas /
Sentinel), not Redis Cluster. When Redis does not answer, admission fails with
`Unavailable` (limits are never silently dropped); pending writes are kept and
retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cumulo.errors import Unavailable
from cumulo.governance.limits import (
    CONCURRENCY_RETRY_S,
    NO_LIMITS,
    Gauge,
    Permit,
    Scope,
    ratelimit_headers,
    refusal,
    tightest,
)

log = logging.getLogger(__name__)

_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
local function level_of(key, cap, rate)
  local h = redis.call('HMGET', key, 'l', 't')
  if not h[1] then return cap end
  local level = tonumber(h[1]) + math.max(0, now - tonumber(h[2])) * rate
  if level > cap then return cap end
  return level
end
local function store(key, cap, rate, level)
  redis.call('HSET', key, 'l', fmt(level), 't', fmt(now))
  redis.call('PEXPIRE', key, math.ceil((cap - level) / rate * 1000) + 1000)
end
"""

# ARGV: now ('' = server time), permit id, lease s, prompt tokens, concurrency retry s,
# then per key: kind ('r' requests, 't' tokens, 'c' concurrency) and limit.
# Returns {index of the refusing key (0: admitted), wait s, level or count per key}.
_ACQUIRE = (
    _NOW
    + """
local id, lease, prompt = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local levels, worst, wait_max = {}, 0, -1
for i, key in ipairs(KEYS) do
  local kind, cap = ARGV[4 + 2 * i], tonumber(ARGV[5 + 2 * i])
  local wait = -1
  if kind == 'c' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local n = redis.call('ZCARD', key)
    levels[i] = n
    if n >= cap then wait = tonumber(ARGV[5]) end
  else
    local rate = cap / 60
    local level = level_of(key, cap, rate)
    levels[i] = level
    local need = 1
    if kind == 't' then need = math.max(1, math.min(prompt, cap)) end
    if level < need then wait = (need - level) / rate end
  end
  if wait > wait_max then worst, wait_max = i, wait end
end
if worst == 0 then
  for i, key in ipairs(KEYS) do
    local kind, cap = ARGV[4 + 2 * i], tonumber(ARGV[5 + 2 * i])
    if kind == 'c' then
      redis.call('ZADD', key, now + lease, id)
      redis.call('EXPIRE', key, math.ceil(lease) + 1)
      levels[i] = levels[i] + 1
    else
      local charge = 1
      if kind == 't' then charge = prompt end
      levels[i] = levels[i] - charge
      store(key, cap, cap / 60, levels[i])
    end
  end
end
local out = {worst, fmt(wait_max)}
for i = 1, #KEYS do out[i + 2] = fmt(levels[i]) end
return out
"""
)

# ARGV: now, lease s, then per key: op and two values:
#   't' capacity amount: charge tokens;  'r' id: release a slot;  'l' id: renew a lease.
_SETTLE = (
    _NOW
    + """
local lease = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local op, a, b = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  if op == 't' then
    local cap = tonumber(a)
    local rate = cap / 60
    store(key, cap, rate, level_of(key, cap, rate) - tonumber(b))
  elseif op == 'r' then
    redis.call('ZREM', key, a)
  else
    redis.call('ZADD', key, 'XX', now + lease, a)
    redis.call('EXPIRE', key, math.ceil(lease) + 1)
  end
end
return #KEYS
"""
)


class RedisPermit:
    """A permit of the Redis limiter: token charges and the release are batched."""

    __slots__ = ("_limiter", "_requests", "_tokens", "conc", "id", "pending", "released", "tpm")

    def __init__(
        self,
        limiter: RedisLimiter,
        permit_id: str,
        tpm: list[tuple[str, int]],
        conc: list[str],
        requests: Gauge | None,
        tokens: Gauge | None,
    ) -> None:
        self._limiter = limiter
        self.id = permit_id
        self.tpm = tpm  # (bucket key, capacity) of each token-limited scope
        self.conc = conc  # the sorted sets holding this permit's slots
        self.pending = 0  # tokens consumed and not yet sent
        self.released = False
        self._requests = requests
        self._tokens = tokens

    def consume(self, tokens: int) -> None:
        if self.tpm:
            self.pending += tokens
            if self.released:  # late tokens of a released permit: queue them directly
                self._limiter._take_pending(self, self._limiter._charges)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._limiter._release(self)

    def headers(self) -> dict[str, str]:
        """The headers as of admission, less the tokens consumed since."""
        tokens = self._tokens
        if tokens is not None and self.pending:
            tokens = Gauge(tokens.limit, tokens.level - self.pending)
        return ratelimit_headers(self._requests, tokens)


class RedisLimiter:
    """Token buckets and concurrency leases in Redis, shared by every replica."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "cumulo",
        clock: Callable[[], float] | None = None,
        flush_interval_s: float = 0.1,
        lease_s: float = 60.0,
        owns_client: bool = False,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.flush_interval_s = flush_interval_s
        self.lease_s = lease_s
        self._clock = clock
        self._owns_client = owns_client
        self._acquire_script = client.register_script(_ACQUIRE)
        self._settle_script = client.register_script(_SETTLE)
        self._keys: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._live: dict[str, RedisPermit] = {}  # permits holding a slot or owing tokens
        self._charges: dict[str, list[int]] = {}  # bucket key -> [capacity, tokens]
        self._releases: list[tuple[str, str]] = []  # (sorted set, permit id)
        self._ids = itertools.count()
        self._replica = secrets.token_hex(4)
        self._renewed_at = self._tick()
        self._wake = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 2.0, **kwargs: Any) -> RedisLimiter:
        """A limiter with its own connection pool to `url` (closed by `close()`).

        `timeout_s` bounds connecting and each reply, so a Redis that hangs fails
        requests with `Unavailable` instead of holding them.
        """
        client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(client, owns_client=True, **kwargs)

    def _scope_keys(self, scope: Scope) -> tuple[str, str, str]:
        keys = self._keys.get((scope.kind, scope.id))
        if keys is None:
            base = f"{self.prefix}:rl:{scope.kind}:{scope.id}"
            keys = self._keys[(scope.kind, scope.id)] = (
                f"{base}:rpm",
                f"{base}:tpm",
                f"{base}:conc",
            )
        return keys

    def _tick(self) -> float:
        """This process's clock for scheduling lease renewals."""
        return time.monotonic() if self._clock is None else self._clock()

    def _now_arg(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def acquire(self, scopes: Sequence[Scope], prompt_tokens: int = 0) -> Permit:
        """Admit the request against every scope or none, in one round trip to Redis."""
        keys: list[str] = []
        args: list[str | int | float] = [
            self._now_arg(),
            f"{self._replica}:{next(self._ids)}",
            self.lease_s,
            prompt_tokens,
            CONCURRENCY_RETRY_S,
        ]
        dims: list[tuple[Scope, str, int]] = []
        for scope in scopes:
            limits = scope.limits
            if limits.unlimited:
                continue
            rpm_key, tpm_key, conc_key = self._scope_keys(scope)
            for key, kind, dim, cap in (
                (rpm_key, "r", "rpm", limits.rpm),
                (tpm_key, "t", "tpm", limits.tpm),
                (conc_key, "c", "concurrency", limits.concurrency),
            ):
                if cap is not None:
                    keys.append(key)
                    args += (kind, cap)
                    dims.append((scope, dim, cap))
        if not keys:
            return NO_LIMITS
        try:
            reply = await self._acquire_script(keys=keys, args=args)
        except RedisError as exc:
            raise Unavailable("Rate limits are unavailable: Redis did not answer.") from exc
        levels = [float(x) for x in reply[2:]]
        requests = tightest(
            Gauge(cap, lvl) for (_, dim, cap), lvl in zip(dims, levels, strict=True) if dim == "rpm"
        )
        tokens = tightest(
            Gauge(cap, lvl) for (_, dim, cap), lvl in zip(dims, levels, strict=True) if dim == "tpm"
        )
        worst = int(reply[0])
        if worst:
            scope, dim, _ = dims[worst - 1]
            raise refusal(scope, dim, float(reply[1]), ratelimit_headers(requests, tokens))
        permit = RedisPermit(
            self,
            str(args[1]),
            [(k, cap) for k, (_, dim, cap) in zip(keys, dims, strict=True) if dim == "tpm"],
            [k for k, (_, dim, _) in zip(keys, dims, strict=True) if dim == "concurrency"],
            requests,
            tokens,
        )
        if permit.tpm or permit.conc:
            self._live[permit.id] = permit
        return permit

    def _release(self, permit: RedisPermit) -> None:
        self._live.pop(permit.id, None)
        self._take_pending(permit, self._charges)
        if permit.conc:
            self._releases += [(key, permit.id) for key in permit.conc]
            self._wake.set()

    @staticmethod
    def _take_pending(permit: RedisPermit, charges: dict[str, list[int]]) -> None:
        if permit.pending:
            for key, cap in permit.tpm:
                entry = charges.setdefault(key, [cap, 0])
                entry[0] = cap
                entry[1] += permit.pending
            permit.pending = 0

    def start(self) -> None:
        """Start the background flusher."""
        self._task = asyncio.create_task(self._run(), name="cumulo-limits-flusher")

    async def _run(self) -> None:
        # Stopped by a flag, not by cancellation: redis-py lets a command in flight complete
        # and swallows the task's cancellation, which would leave close() waiting forever.
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            if self._closing:
                break
            try:
                await self.flush()
            except Exception:  # what was pending stays queued for the next tick
                log.exception("sending rate limit usage to Redis failed; will retry")

    async def flush(self) -> None:
        """Send every pending token charge, release and due lease renewal in one round trip."""
        async with self._flush_lock:
            charges, self._charges = self._charges, {}
            for permit in self._live.values():
                self._take_pending(permit, charges)
            releases, self._releases = self._releases, []
            renewals: list[tuple[str, str]] = []
            now = self._tick()
            if now - self._renewed_at >= self.lease_s / 3:
                renewals = [(k, p.id) for p in self._live.values() for k in p.conc]
            if not (charges or releases or renewals):
                return
            keys: list[str] = []
            args: list[str | int | float] = [self._now_arg(), self.lease_s]
            for key, (cap, amount) in charges.items():
                keys.append(key)
                args += ("t", cap, amount)
            for op, pairs in (("r", releases), ("l", renewals)):
                for key, permit_id in pairs:
                    keys.append(key)
                    args += (op, permit_id, "")
            try:
                await self._settle_script(keys=keys, args=args)
            except RedisError as exc:
                for key, (cap, amount) in charges.items():
                    entry = self._charges.setdefault(key, [cap, 0])
                    entry[1] += amount
                self._releases[:0] = releases
                raise Unavailable("Rate limit usage could not be sent to Redis.") from exc
            if renewals:
                self._renewed_at = now

    async def close(self) -> None:
        """Stop the flusher, send what is pending and close the connections we opened."""
        if self._task is not None:
            self._closing = True
            self._wake.set()
            await self._task
            self._task = None
        try:
            await self.flush()
        except Unavailable:
            log.error("rate limit usage still pending at shutdown was lost (Redis unavailable)")
        if self._owns_client:
            await self.client.aclose()
