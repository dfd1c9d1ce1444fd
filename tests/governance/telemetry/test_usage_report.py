"""The console's usage report: series, top lists, filtered pages and CSV, computed in SQL
on SQLite and PostgreSQL, over rows whose answers are known."""

from __future__ import annotations

import csv
import dataclasses
import io
import time
from pathlib import Path

import pytest

from cumulo.governance.telemetry.usage_report import Filters, UsageReport
from cumulo.store import usage_daily
from cumulo.store.db import Store
from support.stores import run_with_store, sqlite_url

T0 = 1_699_999_200.0  # a whole hour (UTC)


def rows() -> list[dict[str, object]]:
    """Three hours: hour 0 has 3 requests of tenant a (one error), hour 2 has 2 of tenant b."""

    def row(
        ts: float, tenant: str, key: str, model: str, status: int, cost: float | None
    ) -> dict[str, object]:
        return {
            "ts": ts,
            "tenant_id": tenant,
            "key_id": key,
            "endpoint": "chat",
            "model": model,
            "deployment": "d",
            "stream": False,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "latency_ms": 100.0,
            "ttft_ms": None,
            "status": status,
            "error_type": None,
            "cost_usd": cost,
        }

    return [
        row(T0 + 10, "a", "ka", "m1", 200, 0.5),
        row(T0 + 20, "a", "ka", "m1", 500, None),
        row(T0 + 30, "a", "kb", "=cmd", 200, 0.25),
        row(T0 + 7200, "b", "kc", "m2", 200, 1.0),
        row(T0 + 7300, "b", "kc", "m2", 429, 0.0),
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> object:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
    else:
        yield request.getfixturevalue("postgres_url")


def test_series_top_rows_and_csv(url: str) -> None:
    async def scenario(store: Store) -> None:
        await store.insert_usage(rows())
        report = UsageReport(store)
        every = Filters(since=T0)
        buckets = await report.series(every, 3600)
        assert [(b.start, b.requests, b.errors, b.tokens) for b in buckets] == [
            (T0, 3, 1, 45),
            (T0 + 7200, 2, 1, 30),
        ]
        assert [round(b.cost_usd, 6) for b in buckets] == [0.75, 1.0]
        top = await report.top(every, "model")
        assert [t.requests for t in top] == [2, 2, 1]  # most requests first
        assert {(t.name, t.requests) for t in top} == {("m1", 2), ("m2", 2), ("=cmd", 1)}
        # A tenant sees its own rows only.
        mine = Filters(since=T0, tenant_id="b")
        assert [b.requests for b in await report.series(mine, 3600)] == [2]
        page, more = await report.rows(mine, "ts", True, 0, 50)
        assert [r["status"] for r in page] == [429, 200] and not more
        errors, _ = await report.rows(Filters(status="error"), "ts", False, 0, 50)
        assert [r["status"] for r in errors] == [500, 429]
        first, more = await report.rows(Filters(), "cost_usd", True, 0, 2)
        assert more and len(first) == 2
        assert [r["status"] for r in (await report.rows(Filters(status=429)))[0]] == [429]
        text = b"".join([c async for c in report.csv(Filters(tenant_id="a"))]).decode()
        lines = list(csv.DictReader(io.StringIO(text)))
        assert len(lines) == 3
        # A cell a spreadsheet would run as a formula is written as text.
        assert {r["model"] for r in lines} == {"m1", "'=cmd"}

    run_with_store(url, scenario)


def test_whole_days_come_from_the_daily_sums_plus_what_is_not_folded_yet(url: str) -> None:
    """The daily sums and the raw rows agree, before, across and after folds, per tenant."""

    async def scenario(store: Store) -> None:
        now = time.time()
        day = now // 86400 * 86400 - 3 * 86400  # three days ago, whole
        old = [dict(r, ts=day + 100 + i) for i, r in enumerate(rows())]
        await store.insert_usage(old)
        report = UsageReport(store)
        daily = Filters(since=day)
        assert daily.daily and not Filters(since=day + 1).daily

        async def both(f: Filters) -> tuple[list[tuple[float, int, int, int]], ...]:
            by_day = await report.series(f, 86400)  # the sums
            by_hour = await report.series(dataclasses.replace(f, since=f.since + 0.5), 86400)
            return (
                [(b.start, b.requests, b.errors, b.tokens) for b in by_day],
                [(b.start, b.requests, b.errors, b.tokens) for b in by_hour],
            )

        folded, raw = await both(daily)
        assert folded == raw == [(day, 5, 2, 75)]
        assert await usage_daily.refresh(store) == 0  # folded by the first read already
        # Rows younger than the lag stay out of the sums, and are counted from `usage`.
        await store.insert_usage([dict(rows()[0], ts=now)])
        folded, raw = await both(daily)
        assert folded == raw and sum(r[1] for r in folded) == 6
        assert await usage_daily.refresh(store, lag_s=0) > 0  # now folded: the same answer
        assert (await both(daily))[0] == folded
        tenant = Filters(since=day, tenant_id="a")
        assert [b.requests for b in await report.series(tenant, 86400)] == [3, 1]
        top = await report.top(daily, "key_id")
        assert [(t.name, t.requests) for t in top][:1] == [("ka", 3)]

    run_with_store(url, scenario)
