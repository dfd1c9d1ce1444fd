"""Per-request cost of the limiter and the budget tracker, without a server.

Prints microseconds per call for the in-memory limiter (acquire + consume +
release, and headers), the in-memory budget check + add, and, with
`--redis-url`, the Redis limiter's admission (one script round trip) as seen
by one sequential caller. Limits are set too high to refuse, so every call
takes the admission path. Noisy machines: compare runs, not single figures.

    python bench/limits_cost.py [--n 200000] [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from collections.abc import Callable

from cumulo.governance.quotas.budgets import BudgetScope, BudgetSpec, BudgetTracker
from cumulo.governance.quotas.limits import Limits, MemoryLimiter, Scope

BIG = 10**12
SCOPES = [
    Scope("key", "k1", Limits(rpm=BIG, tpm=BIG, concurrency=BIG), "app"),
    Scope("tenant", "t1", Limits(rpm=BIG, tpm=BIG, concurrency=BIG), "acme"),
    Scope("deployment", "openai:gpt", Limits(rpm=BIG, tpm=BIG)),
]


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """The best of three runs of `n` calls, in microseconds per call."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def memory(n: int) -> None:
    limiter = MemoryLimiter()

    def request(scopes: list[Scope]) -> Callable[[], None]:
        def run() -> None:
            permit = limiter.acquire_now(scopes, 100)
            permit.consume(50)
            permit.release()

        return run

    print(f"memory, 3 scopes x all limits: {per_call_us(request(SCOPES), n):6.2f} us")
    print(f"memory, 1 scope x rpm:         {per_call_us(request(SCOPES[:1]), n):6.2f} us")
    print(f"memory, no limits:             {per_call_us(request([]), n):6.2f} us")
    permit = limiter.acquire_now(SCOPES, 100)
    print(f"memory, Permit.headers():      {per_call_us(permit.headers, n):6.2f} us")
    tracker = BudgetTracker()
    budgets = [
        BudgetScope("key", "k1", BudgetSpec(BIG, "month")),
        BudgetScope("tenant", "t1", BudgetSpec(BIG, "day")),
    ]

    def budget() -> None:
        tracker.check(budgets)
        tracker.add(budgets, 0.001)

    print(f"budgets, 2 scopes check + add: {per_call_us(budget, n):6.2f} us")


async def redis(url: str, n: int) -> None:
    import redis.asyncio as aioredis

    from cumulo.governance.quotas.limits_redis import RedisLimiter

    prefix = f"cumulo-bench-{secrets.token_hex(4)}"
    limiter = RedisLimiter.from_url(url, prefix=prefix)
    limiter.start()
    try:
        for _ in range(200):
            (await limiter.acquire(SCOPES, 100)).release()
        start = time.perf_counter()
        for _ in range(n):
            permit = await limiter.acquire(SCOPES, 100)
            permit.consume(50)
            permit.release()
        us = (time.perf_counter() - start) / n * 1e6
        print(f"redis, 3 scopes x all limits, one caller: {us:6.0f} us per request")
    finally:
        await limiter.close()
        client = aioredis.from_url(url)
        keys = [k async for k in client.scan_iter(f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--redis-url")
    args = parser.parse_args()
    memory(args.n)
    if args.redis_url:
        asyncio.run(redis(args.redis_url, min(args.n, 3000)))


if __name__ == "__main__":
    main()
