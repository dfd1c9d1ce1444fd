"""Budgets: refusal once spent, one soft alert per period, UTC periods, shared through Redis.

Each behaviour runs in memory and with two Redis trackers on two connections
(two replicas); `sync` plays the background task's round trip explicitly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from cumulo.errors import BudgetExceeded, InvalidRequest
from cumulo.governance.quotas.budgets import (
    BudgetAlert,
    BudgetScope,
    BudgetSpec,
    BudgetTracker,
    period_bounds,
)
from cumulo.governance.quotas.budgets_redis import RedisBudgetTracker
from cumulo.governance.quotas.factory import make_budget_tracker
from cumulo.governance.telemetry.usage import UsageRecord
from cumulo.store.db import Store
from support import eventually
from support.redis import REDIS_URL

BACKENDS = ["memory", "redis"]


class Clock:
    """Epoch seconds that move only when the test says so."""

    def __init__(self, at: datetime) -> None:
        self.t = at.timestamp()

    def __call__(self) -> float:
        return self.t

    def set(self, at: datetime) -> None:
        self.t = at.timestamp()


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@asynccontextmanager
async def replicas(
    backend: str, prefix: str, clock: Clock, alerts: list[BudgetAlert]
) -> AsyncIterator[tuple[BudgetTracker, BudgetTracker]]:
    """Two replicas' trackers: two sharing Redis, or one in memory seen twice."""
    if backend == "memory":
        memory = BudgetTracker(clock=clock, on_alert=alerts.append)
        yield memory, memory
        return
    a = RedisBudgetTracker.from_url(REDIS_URL, prefix=prefix, clock=clock, on_alert=alerts.append)
    b = RedisBudgetTracker.from_url(REDIS_URL, prefix=prefix, clock=clock, on_alert=alerts.append)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def sync(*trackers: BudgetTracker) -> None:
    """What the background task does every interval: send costs, then read totals."""
    for tracker in trackers:
        await tracker.flush()
    for tracker in trackers:
        await tracker.flush()


ACME_DAY = BudgetScope("tenant", "t1", BudgetSpec(10.0, "day"), "acme")
APP_MONTH = BudgetScope("key", "k1", BudgetSpec(100.0, "month"), "app")


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_replica_refuses_once_the_shared_spend_reaches_the_budget(
    backend: str, prefix: str
) -> None:
    clock = Clock(utc(2026, 11, 22, 15, 30))
    scopes = [APP_MONTH, ACME_DAY]

    async def scenario() -> None:
        async with replicas(backend, prefix, clock, []) as (a, b):
            a.check(scopes)
            b.check(scopes)
            a.add(scopes, 6.0)
            b.add(scopes, 3.99)
            await sync(a, b)
            a.check(scopes)  # $9.99 of $10.00
            b.add(scopes, 0.02)  # this request crosses the budget; it was already admitted
            await sync(a, b)
            for tracker in (a, b):
                with pytest.raises(BudgetExceeded) as caught:
                    tracker.check(scopes)
                exc = caught.value
                assert exc.message == (
                    "Budget exhausted for tenant 'acme': $10.00 per day spent; "
                    "it resets at 2026-11-23 00:00 UTC."
                )
                assert (exc.status, exc.type, exc.code) == (
                    429,
                    "insufficient_quota",
                    "budget_exceeded",
                )
                assert tracker.spent(ACME_DAY) == pytest.approx(10.01)
                assert tracker.spent(APP_MONTH) == pytest.approx(10.01)
                tracker.check([APP_MONTH])  # the key's own budget is far from spent

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_soft_threshold_raises_one_alert_per_period(backend: str, prefix: str) -> None:
    clock = Clock(utc(2026, 11, 22, 15, 30))
    alerts: list[BudgetAlert] = []

    async def scenario() -> None:
        async with replicas(backend, prefix, clock, alerts) as (a, b):
            a.add([ACME_DAY], 7.0)
            await sync(a, b)
            assert alerts == []
            b.add([ACME_DAY], 1.5)  # $8.50: past 80% of $10
            a.add([ACME_DAY], 0.5)
            await sync(a, b)
            b.add([ACME_DAY], 0.5)
            await sync(a, b)
            assert len(alerts) == 1
            alert = alerts[0]
            assert (alert.kind, alert.id, alert.label) == ("tenant", "t1", "acme")
            assert alert.period_start == utc(2026, 11, 22)
            assert 8.5 <= alert.spent_usd <= 9.0
            assert alert.message.startswith("Budget alert for tenant 'acme': $")
            clock.set(utc(2026, 11, 23, 0, 0))  # a new day: the alert may come again
            a.add([ACME_DAY], 9.0)
            await sync(a, b)
            assert len(alerts) == 2
            assert alerts[1].period_start == utc(2026, 11, 23)

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", BACKENDS)
def test_spend_starts_again_at_each_utc_day_and_month(backend: str, prefix: str) -> None:
    clock = Clock(utc(2026, 11, 30, 23, 59, 59))
    small_month = BudgetScope("key", "k1", BudgetSpec(5.0, "month"), "app")

    async def scenario() -> None:
        async with replicas(backend, prefix, clock, []) as (a, b):
            a.add([ACME_DAY, small_month], 10.0)
            await sync(a, b)
            with pytest.raises(BudgetExceeded, match="resets at 2026-12-01 00:00 UTC"):
                b.check([small_month])
            clock.set(utc(2026, 12, 1, 0, 0))
            await sync(a, b)
            for tracker in (a, b):
                tracker.check([ACME_DAY, small_month])
                assert (tracker.spent(ACME_DAY), tracker.spent(small_month)) == (0.0, 0.0)
            b.add([small_month], 5.0)
            clock.set(utc(2026, 12, 2, 12, 0))  # next day, same month
            await sync(a, b)
            a.check([ACME_DAY])
            with pytest.raises(
                BudgetExceeded, match=r"\$5.00 per month spent; it resets at 2027-01-01"
            ):
                a.check([small_month])

    asyncio.run(scenario())


def test_a_replica_that_never_served_a_scope_refuses_it_after_one_refresh(prefix: str) -> None:
    clock = Clock(utc(2026, 11, 22, 15, 30))

    async def scenario() -> None:
        async with replicas("redis", prefix, clock, []) as (a, b):
            a.add([ACME_DAY], 12.0)
            await sync(a, b)  # b has never checked acme: it learns of it as spent out
            with pytest.raises(BudgetExceeded, match="tenant 'acme'"):
                b.check([ACME_DAY])
            raised = BudgetScope("tenant", "t1", BudgetSpec(50.0, "day"), "acme")
            b.check([raised])  # a raised budget admits again at once

    asyncio.run(scenario())


def test_load_seeds_the_current_period_from_recorded_usage() -> None:
    alerts: list[BudgetAlert] = []
    tracker = BudgetTracker(clock=Clock(utc(2026, 11, 22, 9, 0)), on_alert=alerts.append)
    tracker.load([(ACME_DAY, 9.5), (APP_MONTH, 1.0)])
    tracker.check([ACME_DAY, APP_MONTH])
    tracker.add([ACME_DAY], 0.5)
    with pytest.raises(BudgetExceeded):
        tracker.check([ACME_DAY])
    assert alerts == []  # already past the threshold when loaded: alerted before the restart


def test_redis_seed_does_not_overwrite_a_counter_another_replica_holds(prefix: str) -> None:
    clock = Clock(utc(2026, 11, 22, 9, 0))

    async def scenario() -> None:
        async with replicas("redis", prefix, clock, []) as (a, b):
            a.load([(ACME_DAY, 4.0)])
            a.add([ACME_DAY], 1.0)
            await sync(a)
            b.load([(ACME_DAY, 0.5)])  # started later, from a stale view of usage
            await sync(a, b)
            assert a.spent(ACME_DAY) == b.spent(ACME_DAY) == pytest.approx(5.0)

    asyncio.run(scenario())


def test_background_sync_shares_spend_between_running_trackers(prefix: str) -> None:
    async def scenario() -> None:
        a = RedisBudgetTracker.from_url(REDIS_URL, prefix=prefix, interval_s=0.05)
        b = RedisBudgetTracker.from_url(REDIS_URL, prefix=prefix, interval_s=0.05)
        a.start()
        b.start()
        try:
            b.check([ACME_DAY])
            a.add([ACME_DAY], 10.0)

            async def b_refuses() -> bool:
                try:
                    b.check([ACME_DAY])
                except BudgetExceeded:
                    return True
                return False

            assert await eventually(b_refuses)
        finally:
            await a.close()
            await b.close()

    asyncio.run(scenario())


def test_make_budget_tracker_picks_redis_when_configured(prefix: str) -> None:
    assert type(make_budget_tracker(None)) is BudgetTracker

    async def scenario() -> None:
        tracker = make_budget_tracker(REDIS_URL, prefix=prefix)
        assert isinstance(tracker, RedisBudgetTracker)
        await tracker.close()

    asyncio.run(scenario())


def test_periods_are_utc_calendar_days_and_months() -> None:
    at = utc(2026, 2, 28, 23, 0).timestamp()
    assert period_bounds("day", at) == (
        utc(2026, 2, 28).timestamp(),
        utc(2026, 3, 1).timestamp(),
        "d2026-02-28",
    )
    assert period_bounds("month", utc(2026, 12, 31, 23, 59).timestamp()) == (
        utc(2026, 12, 1).timestamp(),
        utc(2027, 1, 1).timestamp(),
        "m2026-12",
    )


def test_budget_from_stored_json() -> None:
    assert BudgetSpec.from_mapping({"usd": 10, "period": "day"}) == BudgetSpec(10.0, "day", 0.8)
    assert BudgetSpec.from_mapping({"usd": 2.5}) == BudgetSpec(2.5, "month", 0.8)
    assert BudgetSpec.from_mapping(None) is None
    for bad, param in (
        ({"usd": 0}, "usd"),
        ({"usd": "10"}, "usd"),
        ({"usd": 10, "period": "week"}, "period"),
        ({"usd": 10, "soft_pct": 80}, "soft_pct"),
        ({"usd": 10, "hard": True}, "hard"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            BudgetSpec.from_mapping(bad)
        assert caught.value.param == param


# -- Redis losing its data ------------------------------------------------------------------


def wipe(prefix: str) -> None:
    """Redis loses every counter of this platform (a restart without persistence)."""
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


async def usage_store(tmp_path: Path, at: datetime, **cost_by_tenant: float) -> Store:
    """A store whose usage table holds each tenant's spend, recorded at `at`."""
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'cumulo.db'}")
    await store.migrate()
    await store.insert_usage(
        [
            UsageRecord(
                key_id="k9",
                endpoint="chat.completions",
                model="m",
                deployment="d",
                stream=False,
                prompt_tokens=1,
                completion_tokens=1,
                latency_ms=1.0,
                ttft_ms=None,
                status=200,
                error_type=None,
                tenant_id=tenant,
                cost_usd=cost,
                ts=at.timestamp(),
            ).as_row()
            for tenant, cost in cost_by_tenant.items()
        ]
    )
    return store


def test_a_spent_budget_stays_closed_when_redis_loses_its_counters(
    prefix: str, tmp_path: Path
) -> None:
    clock = Clock(utc(2026, 11, 22, 15, 30))

    async def scenario() -> None:
        store = await usage_store(tmp_path, utc(2026, 11, 22, 9), t1=12.0)
        a = RedisBudgetTracker.from_url(
            REDIS_URL, prefix=prefix, clock=clock, spend=store.spend_since
        )
        b = RedisBudgetTracker.from_url(
            REDIS_URL, prefix=prefix, clock=clock, spend=store.spend_since
        )
        try:
            a.load([(ACME_DAY, 12.0)])  # seeded from usage at start: spent out
            await sync(a)
            with pytest.raises(BudgetExceeded):
                a.check([ACME_DAY])
            wipe(prefix)
            await sync(a)  # finds the counter gone: re-seeds it before anything else
            with pytest.raises(BudgetExceeded):
                a.check([ACME_DAY])
            counter = redis.Redis.from_url(REDIS_URL)
            assert float(counter.get(f"{prefix}:budget:tenant:t1:d2026-11-22") or 0) >= 12.0
            counter.close()
            b.check([ACME_DAY])  # a replica that never saw the scope ...
            await sync(b)
            with pytest.raises(BudgetExceeded):  # ... refuses it from its next refresh
                b.check([ACME_DAY])
        finally:
            await a.close()
            await b.close()
            await store.close()

    asyncio.run(scenario())


def test_spend_redis_lost_is_re_seeded_before_new_costs_are_added(
    prefix: str, tmp_path: Path
) -> None:
    clock = Clock(utc(2026, 11, 22, 15, 30))

    async def scenario() -> None:
        store = await usage_store(tmp_path, utc(2026, 11, 22, 9), t1=7.0)
        a = RedisBudgetTracker.from_url(
            REDIS_URL, prefix=prefix, clock=clock, spend=store.spend_since
        )
        try:
            a.check([ACME_DAY])  # first seen now (started before any spend): no seed
            wipe(prefix)
            a.add([ACME_DAY], 2.0)
            await sync(a)
            assert a.spent(ACME_DAY) == pytest.approx(7.0 + 2.0)  # not 2.0
            a.add([ACME_DAY], 1.0)
            await sync(a)
            with pytest.raises(BudgetExceeded):
                a.check([ACME_DAY])
        finally:
            await a.close()
            await store.close()

    asyncio.run(scenario())


def test_reconcile_raises_a_counter_below_the_usage_table(prefix: str, tmp_path: Path) -> None:
    clock = Clock(utc(2026, 11, 22, 15, 30))

    async def scenario() -> None:
        store = await usage_store(tmp_path, utc(2026, 11, 22, 9), t1=12.0)
        a = RedisBudgetTracker.from_url(
            REDIS_URL, prefix=prefix, clock=clock, spend=store.spend_since
        )
        try:
            a.load([(ACME_DAY, 12.0)])
            await sync(a)
            # A failover to a replica that had not caught up: the counter went back.
            counter = redis.Redis.from_url(REDIS_URL)
            counter.set(f"{prefix}:budget:tenant:t1:d2026-11-22", "1.0")
            counter.delete(f"{prefix}:budget:exhausted:d2026-11-22")
            counter.close()
            await sync(a)
            a.check([ACME_DAY])  # it believes Redis, for now
            await a.reconcile()
            await sync(a)
            with pytest.raises(BudgetExceeded):
                a.check([ACME_DAY])
            assert a.spent(ACME_DAY) == pytest.approx(12.0)
        finally:
            await a.close()
            await store.close()

    asyncio.run(scenario())
