"""Which limiter and budget tracker a configuration gets: in memory, or shared through Redis.

The one module that knows both backends of each, so that neither backend imports the other.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cumulo.governance.quotas.budgets import AlertHandler, BudgetTracker, SpendSource
from cumulo.governance.quotas.budgets_redis import RedisBudgetTracker
from cumulo.governance.quotas.limits import Limiter, MemoryLimiter
from cumulo.governance.quotas.limits_redis import RedisLimiter


def make_limiter(
    redis_url: str | None, *, prefix: str = "cumulo", clock: Callable[[], float] | None = None
) -> Limiter:
    """The limiter for this configuration: shared through Redis when `redis_url` is set.

    `prefix` namespaces the Redis keys; `clock` (tests) replaces the clock: monotonic
    seconds in memory, epoch seconds with Redis (default: the Redis server's clock).
    """
    if redis_url is None:
        return MemoryLimiter(clock or time.monotonic)
    return RedisLimiter.from_url(redis_url, prefix=prefix, clock=clock)


def make_budget_tracker(
    redis_url: str | None,
    *,
    prefix: str = "cumulo",
    clock: Callable[[], float] = time.time,
    on_alert: AlertHandler | None = None,
    spend: SpendSource | None = None,
) -> BudgetTracker:
    """The tracker for this configuration: spend shared through Redis when `redis_url` is set
    (`spend`: the usage table's, to re-seed counters Redis lost; see `budgets_redis`)."""
    if redis_url is None:
        return BudgetTracker(clock=clock, on_alert=on_alert)
    return RedisBudgetTracker.from_url(
        redis_url, prefix=prefix, clock=clock, on_alert=on_alert, spend=spend
    )
