"""Budgets shared by every replica through Redis.

Spend lives in one Redis counter per scope and period
(`{prefix}:budget:{kind}:{id}:{period key}`, a float kept until a day after the
period ends). The request path stays in memory: `add` queues the cost, `check`
reads this replica's view (the shared total as last read, plus what it has not
sent yet). A background task, every `interval_s` (0.5 s), sends the queued
costs with INCRBYFLOAT and reads back the totals of every scope this replica
has seen this period, all in one script call; so once the shared spend reaches
a budget, every replica refuses within about `interval_s`.

The soft alert is raised once per scope and period across all replicas: the
replica whose addition takes the total past the threshold wins a SET NX on
`{counter}:alerted` and calls `on_alert` (from the background task).

A replica only reads the counters of scopes it has seen, so the addition that
takes a total to its budget also records it in `{prefix}:budget:exhausted:{period
key}` (a hash: "kind:id" -> total), which every replica reads whole on each
refresh: a scope spent out elsewhere is refused here too, from its first request.

When Redis does not answer, queued costs are kept and sent later, and checks go
on against the last totals read.

When Redis loses counters (a restart without persistence, a failover to a replica that
had not caught up), spend must not start again from zero: a counter found missing is
re-seeded from the usage table (`spend`, the store's), or from the last total this
replica read if that is higher (or if the usage table cannot be read), before any cost is
added to it; until then checks go on against the last totals read. Every `reconcile_s` the counters are also raised to what
the usage table held `RECONCILE_LAG_S` ago, if they hold less (a counter that went back):
every replica has sent costs that old long since, so a counter below them lost some.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cumulo.governance.quotas.budgets import (
    AlertHandler,
    BudgetScope,
    BudgetTracker,
    SpendKey,
    SpendSource,
)

log = logging.getLogger(__name__)

# Kept after the period ends, so a late addition or read still finds it.
_GRACE_S = 86_400
_MISSING = b"missing"
RECONCILE_LAG_S = 30.0

# KEYS: n counters, then the exhausted hashes to read back. ARGV[1] = n, then per counter:
# op ('a' add, 's' seed if absent, 'm' raise to at least, 'g' get), amount, ttl s, soft
# threshold, budget, index in KEYS of its period's exhausted hash, its field there.
# Returns per counter: total ('missing': no counter, nothing added), 1 if this call raised
# the soft alert; then each hash's HGETALL.
_SETTLE = """
local n = tonumber(ARGV[1])
local out = {}
for i = 1, n do
  local j = 1 + 7 * (i - 1)
  local op, amount, ttl = ARGV[j + 1], ARGV[j + 2], ARGV[j + 3]
  local key, total, alerted = KEYS[i], nil, 0
  if op == 's' then
    redis.call('SET', key, amount, 'NX', 'EX', ttl)
  elseif op == 'm' and tonumber(redis.call('GET', key) or '0') < tonumber(amount) then
    redis.call('SET', key, amount, 'EX', ttl)
  end
  if redis.call('EXISTS', key) == 0 then
    total = 'missing'
  elseif op == 'a' then
    total = redis.call('INCRBYFLOAT', key, amount)
    redis.call('EXPIRE', key, ttl)
    local spent, soft = tonumber(total), tonumber(ARGV[j + 4])
    if spent >= soft and redis.call('SET', key .. ':alerted', '1', 'NX', 'EX', ttl) then
      alerted = 1
    end
  else
    total = redis.call('GET', key)
  end
  if (op == 's' or op == 'm') and total ~= 'missing' and tonumber(total) >= tonumber(ARGV[j + 4]) then
    redis.call('SET', key .. ':alerted', '1', 'NX', 'EX', ttl)  -- alerted before the loss
  end
  if op ~= 'g' and total ~= 'missing' and tonumber(total) >= tonumber(ARGV[j + 5]) then
    local exhausted = KEYS[tonumber(ARGV[j + 6])]
    redis.call('HSET', exhausted, ARGV[j + 7], total)
    redis.call('EXPIRE', exhausted, ttl)
  end
  out[2 * i - 1] = total
  out[2 * i] = alerted
end
for x = n + 1, #KEYS do
  out[#out + 1] = redis.call('HGETALL', KEYS[x])
end
return out
"""


class RedisBudgetTracker(BudgetTracker):
    """Spend counters in Redis, shared by every replica; the request path reads a local view."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "cumulo",
        clock: Callable[[], float] = time.time,
        on_alert: AlertHandler | None = None,
        interval_s: float = 0.5,
        owns_client: bool = False,
        spend: SpendSource | None = None,
        reconcile_s: float = 60.0,
    ) -> None:
        super().__init__(clock=clock, on_alert=on_alert)
        self.client = client
        self.prefix = prefix
        self.interval_s = interval_s
        self._owns_client = owns_client
        self._spend = spend
        self.reconcile_s = reconcile_s
        self._reconciled = time.monotonic()
        self._script = client.register_script(_SETTLE)
        self._shared: dict[SpendKey, float] = {}  # totals as last read from Redis
        self._pending: dict[SpendKey, float] = {}  # added here, not sent yet
        self._seeds: dict[SpendKey, float] = {}
        self._floors: dict[SpendKey, float] = {}  # raise the counter to at least this
        self._watch: dict[SpendKey, tuple[BudgetScope, float, float]] = {}  # scope, start, end
        self._exhausted: dict[SpendKey, float] = {}  # every scope spent out, as last read
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float = 2.0, **kwargs: Any) -> RedisBudgetTracker:
        """A tracker with its own connection pool to `url` (closed by `close()`)."""
        client = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        return cls(client, owns_client=True, **kwargs)

    def _redis_key(self, key: SpendKey) -> str:
        return f"{self.prefix}:budget:{key[0]}:{key[1]}:{key[2]}"

    def _exhausted_key(self, period: str) -> str:
        return f"{self.prefix}:budget:exhausted:{period}"

    def _rolled_over(self) -> None:
        # Ended periods leave the view once their queued costs are sent (see flush).
        pass

    def _spent(self, scope: BudgetScope, key: SpendKey, start: float, end: float) -> float:
        if key not in self._watch:
            self._watch[key] = (scope, start, end)  # read at the next refresh
        spent = self._shared.get(key, 0.0) + self._pending.get(key, 0.0)
        exhausted = self._exhausted.get(key)
        return spent if exhausted is None or exhausted < spent else exhausted

    def _record(
        self, scope: BudgetScope, key: SpendKey, cost: float, start: float, end: float
    ) -> None:
        self._pending[key] = self._pending.get(key, 0.0) + cost
        self._watch[key] = (scope, start, end)

    def load(self, spend: Iterable[tuple[BudgetScope, float]]) -> None:
        """Seed counters Redis does not hold yet (another replica's counter wins)."""
        now = self._clock()
        for scope, usd in spend:
            start, end, period = self._period(scope.spec.period, now)
            key = (scope.kind, scope.id, period)
            self._seeds[key] = usd
            self._watch[key] = (scope, start, end)

    def start(self) -> None:
        """Start the background task that sends costs and refreshes totals."""
        self._task = asyncio.create_task(self._run(), name="cumulo-budgets-sync")

    async def _run(self) -> None:
        # Stopped by an event, not by cancellation, which redis-py may swallow.
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._stop.wait()
            if self._stop.is_set():
                break
            try:
                if time.monotonic() - self._reconciled >= self.reconcile_s:
                    self._reconciled = time.monotonic()
                    await self.reconcile()
                await self.flush()
            except Exception:  # queued costs are kept for the next tick
                log.exception("syncing budget spend with Redis failed; will retry")

    async def flush(self) -> None:
        """Send queued costs and seeds, read back watched totals and exhausted scopes (one
        script call); counters Redis lost are re-seeded from the usage table first."""
        async with self._flush_lock:
            missing = await self._sync()
            if missing:
                await self._reseed(missing)
                await self._sync()

    async def _sync(self) -> list[SpendKey]:
        """One round trip; the watched counters Redis does not hold (their costs kept)."""
        now = self._clock()
        pending, self._pending = self._pending, {}
        seeds, self._seeds = self._seeds, {}
        floors, self._floors = self._floors, {}
        periods = [self._period(p, now)[2] for p in ("day", "month")]
        # (counter, op, amount, ttl, soft threshold, budget); seeded and added: both, in order
        ops: list[tuple[SpendKey, str, str, int, str, str]] = []
        for key, (scope, _, end) in self._watch.items():
            ttl = max(1, math.ceil(end - now)) + _GRACE_S
            if key[2] not in periods:
                periods.append(key[2])
            spec = scope.spec
            soft, budget = repr(spec.usd * spec.soft_pct), repr(spec.usd)
            if key in seeds:
                ops.append((key, "s", repr(seeds[key]), ttl, soft, budget))
            if key in floors:
                ops.append((key, "m", repr(floors[key]), ttl, soft, budget))
            if key in pending:
                ops.append((key, "a", repr(pending[key]), ttl, soft, budget))
            elif key not in seeds and key not in floors:
                ops.append((key, "g", "0", ttl, soft, budget))
        n = len(ops)
        hash_index = {period: n + 1 + i for i, period in enumerate(periods)}
        keys = [self._redis_key(op[0]) for op in ops]
        keys += [self._exhausted_key(period) for period in periods]
        args: list[str | int] = [n]
        for key, op, amount, ttl, soft, budget in ops:
            args += (op, amount, ttl, soft, budget, hash_index[key[2]], f"{key[0]}:{key[1]}")
        try:
            reply = await self._script(keys=keys, args=args)
        except RedisError:
            self._requeue(pending, seeds, floors)
            raise
        missing: list[SpendKey] = []
        for i, (key, op, *_) in enumerate(ops):
            if reply[2 * i] == _MISSING:
                if key not in missing:
                    missing.append(key)
                if op == "a":
                    self._pending[key] = self._pending.get(key, 0.0) + pending[key]
                continue  # checks go on against the last total read
            total = float(reply[2 * i])
            self._shared[key] = total
            if int(reply[2 * i + 1]):
                scope, start, _ = self._watch[key]
                self._emit(scope, total, start)
        exhausted: dict[SpendKey, float] = {}
        for period, fields in zip(periods, reply[2 * n :], strict=True):
            for field, spent in zip(fields[::2], fields[1::2], strict=True):
                kind, _, scope_id = field.decode().partition(":")
                exhausted[(kind, scope_id, period)] = float(spent)
        self._exhausted = exhausted
        self._forget_ended(now)
        return missing

    def _requeue(
        self,
        pending: dict[SpendKey, float],
        seeds: dict[SpendKey, float],
        floors: dict[SpendKey, float],
    ) -> None:
        for key, cost in pending.items():
            self._pending[key] = self._pending.get(key, 0.0) + cost
        self._seeds = {**seeds, **self._seeds}
        self._floors = {**floors, **self._floors}

    async def _usage_spend(
        self, keys: Iterable[SpendKey], until: float | None = None
    ) -> dict[SpendKey, float]:
        """What the usage table holds for these counters, this period (until a time), per
        counter; empty without a source."""
        if self._spend is None:
            return {}
        by_start: dict[float, list[SpendKey]] = {}
        for key in keys:
            by_start.setdefault(self._watch[key][1], []).append(key)
        out: dict[SpendKey, float] = {}
        for start, group in by_start.items():
            spent = await self._spend(start, [(k[0], k[1]) for k in group], until)
            out.update({k: spent.get((k[0], k[1]), 0.0) for k in group})
        return out

    async def _reseed(self, missing: list[SpendKey]) -> None:
        """Counters Redis lost: seeded from the usage table, or the last total this replica
        read if higher (what it has queued since is added on top)."""
        try:
            usage = await self._usage_spend(missing)
        except Exception as exc:  # noqa: BLE001 - the store is down: the last totals will do
            log.warning("cannot read the usage table to re-seed budget spend (%s)", exc)
            usage = {}
        for key in missing:
            self._seeds[key] = max(usage.get(key, 0.0), self._shared.get(key, 0.0))
        known = [k for k in missing if k in self._shared or usage.get(k)]
        if known:
            log.warning(
                "budget spend of %d scopes was missing in Redis (restarted without "
                "persistence, or failed over): re-seeded from the usage table",
                len(known),
            )

    async def reconcile(self) -> None:
        """Raise each watched counter to what the usage table held `RECONCILE_LAG_S` ago, if
        it holds less (Redis went back); sent with the next flush."""
        until = self._clock() - RECONCILE_LAG_S
        usage = await self._usage_spend(list(self._watch), until)
        for key, usd in usage.items():
            if usd > self._shared.get(key, 0.0) + self._pending.get(key, 0.0) + 1e-9:
                self._floors[key] = usd
        if self._floors:
            log.warning(
                "budget spend of %d scopes in Redis was below the usage table's: raised",
                len(self._floors),
            )

    def _forget_ended(self, now: float) -> None:
        for key in [k for k, (_, _, end) in self._watch.items() if end <= now]:
            if key not in self._pending and key not in self._seeds and key not in self._floors:
                del self._watch[key]
                self._shared.pop(key, None)

    async def close(self) -> None:
        """Stop the background task, send what is queued and close the connections we opened."""
        if self._task is not None:
            self._stop.set()
            await self._task
            self._task = None
        try:
            await self.flush()
        except RedisError:
            log.error("budget spend still queued at shutdown was lost (Redis unavailable)")
        if self._owns_client:
            await self.client.aclose()
