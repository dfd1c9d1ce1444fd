"""Usage read back for people: totals over time, top models and keys, filtered rows.

Everything is aggregated, filtered, sorted and paged in SQL (never in Python over all
rows), on the indexes `ix_usage_ts_cover` (time range with the summed columns) and
`ix_usage_tenant_ts` (one tenant's range), so a page stays fast over millions of rows.
A tenant's view passes its `tenant_id`; None is every tenant's (platform admins).
Whole days over every key and model (the console's long ranges) are read from the daily
sums (`store.usage_daily`), folded in as they are asked for.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Integer, case, cast, func, select
from sqlalchemy.sql import Select

from cumulo.store import usage_daily
from cumulo.store.db import Store
from cumulo.store.schema import usage

MAX_PAGE = 200
MAX_OFFSET = 100_000  # deeper than anyone pages; narrow the filters instead
CSV_CHUNK = 5_000

SORTABLE = {
    "ts": usage.c.ts,
    "model": usage.c.model,
    "key_id": usage.c.key_id,
    "tenant_id": usage.c.tenant_id,
    "status": usage.c.status,
    "tokens": usage.c.prompt_tokens + usage.c.completion_tokens,
    "latency_ms": usage.c.latency_ms,
    "cost_usd": usage.c.cost_usd,
}
COLUMNS = (
    "id", "ts", "tenant_id", "key_id", "endpoint", "model", "deployment", "status",
    "error_type", "prompt_tokens", "cached_tokens", "completion_tokens", "latency_ms", "ttft_ms",
    "cost_usd",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Filters:
    """Which usage rows: a time range and optional tenant, key, model and status."""

    since: float | None = None
    until: float | None = None
    tenant_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    status: Literal["ok", "error"] | int | None = None

    @property
    def daily(self) -> bool:
        """Can the daily sums answer (whole days from `since`, no filter but the tenant)?"""
        return (
            self.since is not None
            and self.since % usage_daily.DAY == 0
            and self.until is None
            and self.key_id is None
            and self.model is None
            and self.status is None
        )

    def where(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.since is not None:
            out.append(usage.c.ts >= self.since)
        if self.until is not None:
            out.append(usage.c.ts < self.until)
        if self.tenant_id is not None:
            out.append(usage.c.tenant_id == self.tenant_id)
        if self.key_id is not None:
            out.append(usage.c.key_id == self.key_id)
        if self.model is not None:
            out.append(usage.c.model == self.model)
        if self.status == "ok":
            out.append(usage.c.status < 400)
        elif self.status == "error":
            out.append(usage.c.status >= 400)
        elif isinstance(self.status, int):
            out.append(usage.c.status == self.status)
        return out


@dataclass(frozen=True, slots=True)
class Bucket:
    start: float
    requests: int
    errors: int
    tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class Top:
    name: str | None
    requests: int
    tokens: int
    cost_usd: float


class UsageReport:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _bucket(self, width: float) -> ColumnElement[Any]:
        scaled = usage.c.ts / width
        if self.store.engine.dialect.name == "sqlite":
            return cast(scaled, Integer)  # truncation is floor for times after 1970
        return func.floor(scaled)

    async def series(self, filters: Filters, width_s: float) -> list[Bucket]:
        """Requests, errors, tokens and cost per `width_s` seconds, oldest first (buckets
        without requests are left out)."""
        if width_s == usage_daily.DAY and filters.daily:
            assert filters.since is not None
            await usage_daily.refresh(self.store)
            found = await usage_daily.sums(self.store, filters.since, filters.tenant_id, "day")
            return sorted((Bucket(*row) for row in found), key=lambda b: b.start)
        b = self._bucket(width_s).label("b")
        query = (
            select(
                b,
                func.count(),
                func.coalesce(func.sum(case((usage.c.status >= 400, 1), else_=0)), 0),
                func.coalesce(func.sum(usage.c.prompt_tokens + usage.c.completion_tokens), 0),
                func.coalesce(func.sum(usage.c.cost_usd), 0.0),
            )
            .where(*filters.where())
            .group_by(b)
            .order_by(b)
        )
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            Bucket(float(r[0]) * width_s, int(r[1]), int(r[2]), int(r[3]), float(r[4]))
            for r in rows
        ]

    async def top(
        self, filters: Filters, by: Literal["model", "key_id"], limit: int = 5
    ) -> list[Top]:
        """The models (or keys) with the most requests."""
        if filters.daily:
            assert filters.since is not None
            await usage_daily.refresh(self.store)
            found = await usage_daily.sums(self.store, filters.since, filters.tenant_id, by)
            found.sort(key=lambda r: (-r[1], r[0] or ""))
            return [Top(name, n, tokens, cost) for name, n, _, tokens, cost in found[:limit]]
        # Grouped on an expression: no index on the column alone tempts the planner into
        # walking the whole table in its order instead of the time range.
        column = func.coalesce(usage.c[by], "").label("g")
        n = func.count().label("n")
        query = (
            select(
                column,
                n,
                func.coalesce(func.sum(usage.c.prompt_tokens + usage.c.completion_tokens), 0),
                func.coalesce(func.sum(usage.c.cost_usd), 0.0),
            )
            .where(*filters.where())
            .group_by(column)
            .order_by(n.desc())
            .limit(limit)
        )
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Top(r[0] or None, int(r[1]), int(r[2]), float(r[3])) for r in rows]

    def _rows(self, filters: Filters) -> Select[Any]:
        return select(*(usage.c[c] for c in COLUMNS)).where(*filters.where())

    async def rows(
        self, filters: Filters, sort: str = "ts", descending: bool = True, offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[dict[str, Any]], bool]:  # fmt: skip
        """One page of rows sorted on `sort` (a `SORTABLE` name), and whether more follow."""
        column = SORTABLE.get(sort, usage.c.ts)
        limit = max(1, min(limit, MAX_PAGE))
        offset = max(0, min(offset, MAX_OFFSET))
        order = [column.desc() if descending else column.asc()]
        order.append(usage.c.id.desc() if descending else usage.c.id.asc())
        # The page's ids first, sorted from the covering index (`ix_usage_ts_cover` holds
        # every sortable column), then those rows only.
        ids = select(usage.c.id).where(*filters.where()).order_by(*order)
        async with self.store.engine.connect() as conn:
            page = list((await conn.execute(ids.offset(offset).limit(limit + 1))).scalars())
            query = self._rows(Filters()).where(usage.c.id.in_(page[:limit]))
            found = {r["id"]: dict(r) for r in (await conn.execute(query)).mappings().all()}
        return [found[i] for i in page[:limit] if i in found], len(page) > limit

    async def csv(self, filters: Filters) -> AsyncIterator[bytes]:
        """Every matching row as CSV (a header line first), streamed in chunks, newest first."""
        yield (",".join(COLUMNS) + "\r\n").encode()
        query = self._rows(filters).order_by(usage.c.id.desc())
        async with self.store.engine.connect() as conn:
            result = await conn.stream(query.execution_options(yield_per=CSV_CHUNK))
            async for part in result.partitions(CSV_CHUNK):
                out = io.StringIO()
                writer = csv.writer(out)
                writer.writerows(_safe_cells(row) for row in part)
                yield out.getvalue().encode()


def _safe_cells(row: Any) -> list[Any]:
    """Cells that a spreadsheet will not run as a formula (`=`, `+`, `-`, `@` first)."""
    out = []
    for value in row:
        if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
            value = "'" + value
        out.append(value)
    return out
