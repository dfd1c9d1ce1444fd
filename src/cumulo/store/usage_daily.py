"""SQL for `usage_daily` (migration 0012): usage summed per UTC day, tenant, key and model.

Long ranges (the console's 7 and 30 days) are read from these sums instead of every usage
row. `refresh` folds the usage rows past the mark (`usage_daily_mark.upto`, the last usage
id folded) into the sums and moves the mark, in one transaction that holds the mark's
lock, so two replicas never fold the same rows. Rows younger than `lag_s` are left for a
later fold: usage ids are handed out before their batch commits, and a batch commits
within seconds, so every id below a row that old is visible by then. A read adds the
rows past the mark (`tail`) to the sums, in one snapshot, so it misses nothing and counts
nothing twice.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

DAY = 86400.0
LAG_S = 300.0
_LOCK = 0x63756D6C6F6461  # the PostgreSQL advisory lock id of the fold


class Store(Protocol):
    @property
    def engine(self) -> AsyncEngine: ...


def _day(dialect: str, column: str = "ts") -> str:
    if dialect == "sqlite":
        return f"CAST({column} / 86400 AS INTEGER) * 86400.0"  # truncation is floor after 1970
    return f"FLOOR({column} / 86400) * 86400.0"


async def _mark(conn: AsyncConnection) -> int:
    row = (await conn.execute(text("SELECT upto FROM usage_daily_mark WHERE id = 1"))).first()
    return int(row[0]) if row else 0


async def refresh(store: Store, lag_s: float = LAG_S) -> int:
    """Fold the usage rows older than `lag_s` past the mark into the daily sums; how many."""
    engine = store.engine
    dialect = engine.dialect.name
    async with engine.begin() as conn:
        if dialect == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
        else:  # a write first: SQLite takes its write lock now, not at the insert
            await conn.execute(text("UPDATE usage_daily_mark SET upto = upto WHERE id = 1"))
        mark = await _mark(conn)
        upto = (
            await conn.execute(
                text("SELECT MAX(id) FROM usage WHERE id > :mark AND ts < :before"),
                {"mark": mark, "before": time.time() - lag_s},
            )
        ).scalar()
        if upto is None:
            return 0
        folded = await conn.execute(
            text(
                "INSERT INTO usage_daily "
                "(day, tenant_id, key_id, model, requests, errors, tokens, cost_usd) "
                f"SELECT {_day(dialect)} AS d, COALESCE(tenant_id, ''), COALESCE(key_id, ''), "
                "model, COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
                "SUM(prompt_tokens + completion_tokens), COALESCE(SUM(cost_usd), 0) "
                "FROM usage WHERE id > :mark AND id <= :upto "
                "GROUP BY d, COALESCE(tenant_id, ''), COALESCE(key_id, ''), model "
                "ON CONFLICT (day, tenant_id, key_id, model) DO UPDATE SET "
                "requests = usage_daily.requests + excluded.requests, "
                "errors = usage_daily.errors + excluded.errors, "
                "tokens = usage_daily.tokens + excluded.tokens, "
                "cost_usd = usage_daily.cost_usd + excluded.cost_usd"
            ),
            {"mark": mark, "upto": upto},
        )
        await conn.execute(
            text(
                "INSERT INTO usage_daily_mark (id, upto, updated_at) VALUES (1, :upto, :now) "
                "ON CONFLICT (id) DO UPDATE SET upto = excluded.upto, "
                "updated_at = excluded.updated_at"
            ),
            {"upto": upto, "now": time.time()},
        )
        return int(folded.rowcount or 0)


async def sums(
    store: Store, since_day: float, tenant_id: str | None, by: str
) -> list[tuple[Any, int, int, int, float]]:
    """(group, requests, errors, tokens, cost) since the UTC day `since_day`, grouped `by`
    `day`, `model` or `key_id`: the daily sums plus the rows past the mark, read in one
    snapshot."""
    assert by in ("day", "model", "key_id")
    dialect = store.engine.dialect.name
    tenant = "AND tenant_id = :tenant" if tenant_id is not None else ""
    raw_group = _day(dialect) if by == "day" else f"COALESCE({by}, '')"
    params = {"since": since_day, "tenant": tenant_id}
    engine = store.engine
    async with engine.connect() as conn:
        if dialect == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            mark = await _mark(conn)
            folded = await conn.execute(
                text(
                    f"SELECT {by}, SUM(requests), SUM(errors), SUM(tokens), SUM(cost_usd) "
                    f"FROM usage_daily WHERE day >= :since {tenant} GROUP BY {by}"
                ),
                params,
            )
            rows = [tuple(r) for r in folded.all()]
            tail = await conn.execute(
                text(
                    f"SELECT {raw_group} AS g, COUNT(*), "
                    "SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), "
                    "SUM(prompt_tokens + completion_tokens), COALESCE(SUM(cost_usd), 0) "
                    f"FROM usage WHERE id > :mark AND ts >= :since {tenant} GROUP BY g"
                ),
                {**params, "mark": mark},
            )
            rows += [tuple(r) for r in tail.all()]
    merged: dict[Any, list[float]] = {}
    for group, *values in rows:
        key = float(group) if by == "day" else (group or None)
        into = merged.setdefault(key, [0, 0, 0, 0.0])
        for i, v in enumerate(values):
            into[i] += v or 0
    return [(key, int(v[0]), int(v[1]), int(v[2]), float(v[3])) for key, v in merged.items()]
