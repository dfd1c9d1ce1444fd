"""Rate limits shared by every replica through Redis.

The buckets are those of `limits.py`, kept in Redis so that all replicas draw
from one limit:

- admission is one round trip: a Lua script checks every limited dimension of
  every scope and charges all of them or none (scripts run atomically);
- completion tokens are counted in the permit (`consume` does no I/O) and sent
  in batches by a background flusher every `flush_interval_s` (0.1 s), together
  with releases and lease renewals: one round trip per batch, whatever the
  number of requests;
- releasing a slot of a concurrency limit that was at least half used at
  admission wakes the flusher at once, so a contended slot is reused without
  waiting for the next tick (an uncontended one waits for the tick).

Keys, under a configurable `prefix` (tests use a unique one):

    {prefix}:rl:{kind}:{id}        hash {r, rt: requests level and its time; t, tt: tokens};
                                   it expires when both buckets would be full again
                                   (no key = full buckets)
    {prefix}:rl:{kind}:{id}:conc   sorted set: permit id -> end of its lease (epoch s)

Leaked slots: a concurrency slot is a lease, not a bare counter. Each permit's
member is scored with the time its lease ends (`lease_s`, 60 s by default); the
flusher renews the leases of this replica's live permits every `lease_s / 3`,
and an admission that finds a set full first drops its expired members. A
replica that crashes thus holds its slots for at most `lease_s`; a live one
holds a slot until the permit is released, so callers release in `finally`.

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
from redis.exceptions import NoScriptError, RedisError

from cumulo.errors import Unavailable
from cumulo.governance.quotas.limits import (
    CONCURRENCY_RETRY_S,
    NO_LIMITS,
    Gauge,
    Limits,
    Permit,
    Scope,
    ratelimit_headers,
    refusal,
)

log = logging.getLogger(__name__)

_NOW = """
local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
local function refill(level, at, cap)
  if not level then return cap end
  level = tonumber(level) + math.max(0, now - tonumber(at)) * cap / 60
  if level > cap then return cap end
  return level
end
local function expire_when_full(key, ms)
  if ms > redis.call('PTTL', key) then redis.call('PEXPIRE', key, ms) end
end
"""

# KEYS: per scope, its bucket hash then its concurrency set.
# ARGV: now ('' = server time), permit id, lease s, prompt tokens, concurrency retry s,
#       then per scope "rpm tpm concurrency" (0: unlimited).
# Returns {refusing scope (0: admitted), its dimension ('r', 't', 'c'), wait s,
#          then per scope: requests level, tokens level, slots in use}.
_ACQUIRE = (
    _NOW
    + """
local id, lease, prompt, retry = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local n = #KEYS / 2
local caps, state = {}, {}
local worst, worst_dim, wait_max = 0, '', -1
for i = 1, n do
  local r, t, c = string.match(ARGV[5 + i], '(%d+) (%d+) (%d+)')
  r, t, c = tonumber(r), tonumber(t), tonumber(c)
  caps[i] = {r, t, c}
  local rl, tl, used, waits = 0, 0, 0, {}
  if r > 0 or t > 0 then
    local h = redis.call('HMGET', KEYS[2 * i - 1], 'r', 'rt', 't', 'tt')
    if r > 0 then
      rl = refill(h[1], h[2], r)
      if rl < 1 then waits.r = (1 - rl) * 60 / r end
    end
    if t > 0 then
      tl = refill(h[3], h[4], t)
      local need = math.max(1, math.min(prompt, t))
      if tl < need then waits.t = (need - tl) * 60 / t end
    end
  end
  if c > 0 then
    used = redis.call('ZCARD', KEYS[2 * i])
    if used >= c then
      redis.call('ZREMRANGEBYSCORE', KEYS[2 * i], '-inf', now)
      used = redis.call('ZCARD', KEYS[2 * i])
      if used >= c then waits.c = retry end
    end
  end
  for dim, wait in pairs(waits) do
    if wait > wait_max then worst, worst_dim, wait_max = i, dim, wait end
  end
  state[i] = {rl, tl, used}
end
if worst == 0 then
  for i = 1, n do
    local r, t, c = caps[i][1], caps[i][2], caps[i][3]
    local st = state[i]
    if r > 0 or t > 0 then
      local fields, full_s = {}, 0
      if r > 0 then
        st[1] = st[1] - 1
        fields[#fields + 1] = 'r'; fields[#fields + 1] = fmt(st[1])
        fields[#fields + 1] = 'rt'; fields[#fields + 1] = fmt(now)
        full_s = math.max(full_s, (r - st[1]) * 60 / r)
      end
      if t > 0 then
        st[2] = st[2] - prompt
        fields[#fields + 1] = 't'; fields[#fields + 1] = fmt(st[2])
        fields[#fields + 1] = 'tt'; fields[#fields + 1] = fmt(now)
        full_s = math.max(full_s, (t - st[2]) * 60 / t)
      end
      redis.call('HSET', KEYS[2 * i - 1], unpack(fields))
      expire_when_full(KEYS[2 * i - 1], math.ceil(full_s * 1000) + 1000)
    end
    if c > 0 then
      redis.call('ZADD', KEYS[2 * i], now + lease, id)
      redis.call('EXPIRE', KEYS[2 * i], math.ceil(lease) + 1)
      st[3] = st[3] + 1
    end
  end
end
local out = {worst, worst_dim, fmt(wait_max)}
for i = 1, n do
  out[#out + 1] = fmt(state[i][1]); out[#out + 1] = fmt(state[i][2]); out[#out + 1] = state[i][3]
end
return out
"""
)

# ARGV: now, lease s, then per key: op and two values:
#   't' capacity amount: charge tokens to a hash;  'r' id: release a slot;  'l' id: renew a lease.
_SETTLE = (
    _NOW
    + """
local lease = tonumber(ARGV[2])
for i, key in ipairs(KEYS) do
  local op, a, b = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  if op == 't' then
    local cap = tonumber(a)
    local h = redis.call('HMGET', key, 't', 'tt')
    local level = refill(h[1], h[2], cap) - tonumber(b)
    redis.call('HSET', key, 't', fmt(level), 'tt', fmt(now))
    expire_when_full(key, math.ceil((cap - level) * 60 / cap * 1000) + 1000)
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

_DIMS = {b"r": "rpm", b"t": "tpm", b"c": "concurrency"}


class RedisPermit:
    """A permit of the Redis limiter: token charges and the release are batched."""

    __slots__ = (
        "_limiter",
        "_requests",
        "_tokens",
        "conc",
        "contended",
        "id",
        "pending",
        "released",
        "tpm",
    )

    def __init__(
        self,
        limiter: RedisLimiter,
        permit_id: str,
        tpm: list[tuple[str, int]],
        conc: list[str],
        contended: bool,
        requests: Gauge | None,
        tokens: Gauge | None,
    ) -> None:
        self._limiter = limiter
        self.id = permit_id
        self.tpm = tpm  # (bucket hash, capacity) of each token-limited scope
        self.conc = conc  # the sorted sets holding this permit's slots
        self.contended = contended  # a concurrency limit was half used or more at admission
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


_Queued = tuple[list[str], list[str | int | float], "asyncio.Future[Any]"]


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
        self._keys: dict[tuple[str, str], tuple[str, str]] = {}
        self._caps: dict[Limits, str] = {}
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
        self._queue: list[_Queued] = []  # admissions waiting for the next round trip
        self._sending = False

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 2.0, **kwargs: Any) -> RedisLimiter:
        """A limiter with its own connection pool to `url` (closed by `close()`).

        `timeout_s` bounds connecting and each reply, so a Redis that hangs fails
        requests with `Unavailable` instead of holding them.
        """
        client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(client, owns_client=True, **kwargs)

    def _scope_keys(self, scope: Scope) -> tuple[str, str]:
        keys = self._keys.get((scope.kind, scope.id))
        if keys is None:
            base = f"{self.prefix}:rl:{scope.kind}:{scope.id}"
            keys = self._keys[(scope.kind, scope.id)] = (base, f"{base}:conc")
        return keys

    def _caps_arg(self, limits: Limits) -> str:
        caps = self._caps.get(limits)
        if caps is None:
            caps = self._caps[limits] = (
                f"{limits.rpm or 0} {limits.tpm or 0} {limits.concurrency or 0}"
            )
        return caps

    async def _admit(self, keys: list[str], args: list[str | int | float]) -> Any:
        """Run the admission script; concurrent admissions share one round trip.

        A request that finds no call on its way goes at once, inline. The admissions
        that arrive while a call is on its way queue up and go together in the next
        one (a pipeline of EVALSHA calls: each stays atomic and all-or-nothing on its
        own), which spreads the client's fixed cost per call over many requests.
        """
        if self._sending:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._queue.append((keys, args, future))
            return await future
        self._sending = True
        try:
            return await self._acquire_script(keys=keys, args=args)
        except RedisError as exc:
            raise Unavailable("Rate limits are unavailable: Redis did not answer.") from exc
        finally:
            if self._queue:  # those that came meanwhile go next, together
                asyncio.get_running_loop().create_task(self._send())
            else:
                self._sending = False

    async def _send(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    replies = await self._pipeline(batch)
                except RedisError as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(
                                Unavailable("Rate limits are unavailable: Redis did not answer.")
                            )
                    log.warning("rate limit admission failed: %s", type(exc).__name__)
                    continue
                for (_, _, future), reply in zip(batch, replies, strict=True):
                    if future.done():
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(
                            Unavailable("Rate limits are unavailable: Redis refused the check.")
                        )
                    else:
                        future.set_result(reply)
        finally:
            self._sending = False

    async def _pipeline(self, batch: list[_Queued]) -> list[Any]:
        if len(batch) == 1:
            keys, args, _ = batch[0]
            return [await self._acquire_script(keys=keys, args=args)]
        script = self._acquire_script
        for attempt in (1, 2):
            async with self.client.pipeline(transaction=False) as pipe:
                for keys, args, _ in batch:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                replies: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, NoScriptError) for r in replies):
                await self.client.script_load(script.script)  # Redis restarted: load it again
                continue
            return replies
        return replies

    def _tick(self) -> float:
        """This process's clock for scheduling lease renewals."""
        return time.monotonic() if self._clock is None else self._clock()

    def _now_arg(self) -> str:
        return "" if self._clock is None else repr(self._clock())

    async def acquire(self, scopes: Sequence[Scope], prompt_tokens: int = 0) -> Permit:
        """Admit the request against every scope or none, in one round trip to Redis."""
        limited = [scope for scope in scopes if not scope.limits.unlimited]
        if not limited:
            return NO_LIMITS
        permit_id = f"{self._replica}:{next(self._ids)}"
        keys: list[str] = []
        args: list[str | int | float] = [
            self._now_arg(),
            permit_id,
            self.lease_s,
            prompt_tokens,
            CONCURRENCY_RETRY_S,
        ]
        for scope in limited:
            keys += self._scope_keys(scope)
            args.append(self._caps_arg(scope.limits))
        reply = await self._admit(keys, args)
        requests: Gauge | None = None
        tokens: Gauge | None = None
        tpm: list[tuple[str, int]] = []
        conc: list[str] = []
        contended = False
        for i, scope in enumerate(limited):
            limits = scope.limits
            if limits.rpm is not None:
                gauge = Gauge(limits.rpm, float(reply[3 + 3 * i]))
                if requests is None or (gauge.level, gauge.limit) < (
                    requests.level,
                    requests.limit,
                ):
                    requests = gauge
            if limits.tpm is not None:
                gauge = Gauge(limits.tpm, float(reply[4 + 3 * i]))
                if tokens is None or (gauge.level, gauge.limit) < (tokens.level, tokens.limit):
                    tokens = gauge
                tpm.append((keys[2 * i], limits.tpm))
            if limits.concurrency is not None:
                conc.append(keys[2 * i + 1])
                contended = contended or 2 * int(reply[5 + 3 * i]) >= limits.concurrency
        worst = int(reply[0])
        if worst:
            scope = limited[worst - 1]
            dim = _DIMS[reply[1]]
            raise refusal(scope, dim, float(reply[2]), ratelimit_headers(requests, tokens))
        permit = RedisPermit(self, permit_id, tpm, conc, contended, requests, tokens)
        if tpm or conc:
            self._live[permit_id] = permit
        return permit

    def _release(self, permit: RedisPermit) -> None:
        self._live.pop(permit.id, None)
        self._take_pending(permit, self._charges)
        if permit.conc:
            self._releases += [(key, permit.id) for key in permit.conc]
            if permit.contended:
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
