"""Budgets: what a tenant or a key may spend, in USD, per UTC calendar day or month.

`check(scopes)` runs before a request and refuses it (`BudgetExceeded`, 429)
once a scope's spend for the current period has reached its budget; `add`
records a request's cost after it. Both are in-memory dictionary work: no I/O
on the request path. The request that crosses the budget completes (its cost is
only known afterwards); the ones after it are refused until the period rolls
over at 00:00 UTC (day) or on the 1st of the month (month).

Crossing `soft_pct` of a budget raises one `BudgetAlert` per scope and period,
passed to `on_alert` (called from `add` in memory, from the background task
with Redis: it must not block; queue the alert if it needs I/O).

`BudgetTracker` keeps spend in this process (one replica; `load` seeds it from
the usage table at start). `RedisBudgetTracker` (`budgets_redis.py`) shares it
between replicas. `quotas.factory.make_budget_tracker` picks one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

from cumulo.errors import BudgetExceeded, InvalidRequest

log = logging.getLogger(__name__)

Period = Literal["day", "month"]
# (scope kind, scope id, period key such as "d2026-11-22" or "m2026-11")
SpendKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class BudgetSpec:
    """A spend cap: `usd` per `period`, with an alert at `soft_pct` of it."""

    usd: float
    period: Period = "month"
    soft_pct: float = 0.8

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> BudgetSpec | None:
        """A budget from stored JSON (`{"usd": 10, "period": "day", "soft_pct": 0.8}`).

        None or `{}` gives None (no budget). Raises `InvalidRequest` naming the field.
        """
        if not data:
            return None
        unknown = set(data) - {"usd", "period", "soft_pct"}
        if unknown:
            name = sorted(unknown)[0]
            raise InvalidRequest(
                f"Unknown budget field '{name}': expected usd, period or soft_pct.", param=name
            )
        usd: Any = data.get("usd")
        period: Any = data.get("period", "month")
        soft: Any = data.get("soft_pct", 0.8)
        if type(usd) not in (int, float) or not math.isfinite(usd) or usd <= 0:
            raise InvalidRequest(
                f"Budget 'usd' must be a positive number, not {usd!r}.", param="usd"
            )
        if period not in ("day", "month"):
            raise InvalidRequest(
                f"Budget 'period' must be 'day' or 'month', not {period!r}.", param="period"
            )
        if type(soft) not in (int, float) or not 0 < soft <= 1:
            raise InvalidRequest(
                f"Budget 'soft_pct' must be a fraction in (0, 1], not {soft!r}.", param="soft_pct"
            )
        return cls(float(usd), period, float(soft))


class BudgetScope(NamedTuple):
    """One budget a request counts against: ("tenant", tenant_id, spec, "acme")."""

    kind: str  # "tenant" or "key"
    id: str
    spec: BudgetSpec
    label: str | None = None  # the name shown in refusals and alerts; default: id


@dataclass(frozen=True, slots=True)
class BudgetAlert:
    """A scope's spend reached the soft threshold of its budget (once per period)."""

    kind: str
    id: str
    label: str | None
    spec: BudgetSpec
    spent_usd: float
    period_start: datetime

    @property
    def message(self) -> str:
        return (
            f"Budget alert for {self.kind} '{self.label or self.id}': ${self.spent_usd:.2f} of "
            f"${self.spec.usd:.2f} per {self.spec.period} spent "
            f"(alert at {self.spec.soft_pct:.0%}), period from {self.period_start:%Y-%m-%d} UTC."
        )


def period_bounds(period: Period, now: float) -> tuple[float, float, str]:
    """(start, end) in epoch seconds and the key of the UTC day or month holding `now`."""
    at = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = at.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
        key = f"d{start:%Y-%m-%d}"
    else:
        start = at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
        key = f"m{start:%Y-%m}"
    return start.timestamp(), end.timestamp(), key


AlertHandler = Callable[[BudgetAlert], None]
# What the usage table holds: cost per (scope kind, scope id) of those scopes, since a time
# (and until one, if not None): `Store.spend_since`.
SpendSource = Callable[
    [float, Sequence[tuple[str, str]], float | None], Awaitable[dict[tuple[str, str], float]]
]


class BudgetTracker:
    """Spend per scope and period, in this process's memory (one replica).

    `clock` gives epoch seconds (injectable to cross period boundaries in tests).
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, on_alert: AlertHandler | None = None
    ) -> None:
        self._clock = clock
        self._on_alert = on_alert
        self._bounds: dict[str, tuple[float, float, str]] = {}
        self._totals: dict[SpendKey, float] = {}
        self._alerted: set[SpendKey] = set()

    def _period(self, period: Period, now: float) -> tuple[float, float, str]:
        bounds = self._bounds.get(period)
        if bounds is None or not bounds[0] <= now < bounds[1]:
            bounds = self._bounds[period] = period_bounds(period, now)
            self._rolled_over()
        return bounds

    def _rolled_over(self) -> None:
        """A period ended: forget its totals."""
        current = {b[2] for b in self._bounds.values()}
        for key in [k for k in self._totals if k[2] not in current]:
            del self._totals[key]
        self._alerted = {k for k in self._alerted if k[2] in current}

    def _spent(self, scope: BudgetScope, key: SpendKey, start: float, end: float) -> float:
        return self._totals.get(key, 0.0)

    def spent(self, scope: BudgetScope) -> float:
        """What `scope` has spent in its current period, as this replica sees it."""
        start, end, period = self._period(scope.spec.period, self._clock())
        return self._spent(scope, (scope.kind, scope.id, period), start, end)

    def check(self, scopes: Sequence[BudgetScope]) -> None:
        """Raise `BudgetExceeded` if any scope has spent its budget for this period."""
        if not scopes:
            return
        now = self._clock()
        for scope in scopes:
            start, end, period = self._period(scope.spec.period, now)
            if self._spent(scope, (scope.kind, scope.id, period), start, end) >= scope.spec.usd:
                resets = datetime.fromtimestamp(end, UTC)
                raise BudgetExceeded(
                    f"Budget exhausted for {scope.kind} '{scope.label or scope.id}': "
                    f"${scope.spec.usd:.2f} per {scope.spec.period} spent; "
                    f"it resets at {resets:%Y-%m-%d %H:%M} UTC.",
                    code="budget_exceeded",
                )

    def add(self, scopes: Sequence[BudgetScope], cost_usd: float) -> None:
        """Count a request's cost against each scope (no I/O)."""
        if not scopes or cost_usd <= 0:
            return
        now = self._clock()
        for scope in scopes:
            start, end, period = self._period(scope.spec.period, now)
            self._record(scope, (scope.kind, scope.id, period), cost_usd, start, end)

    def _record(
        self, scope: BudgetScope, key: SpendKey, cost: float, start: float, end: float
    ) -> None:
        total = self._totals[key] = self._totals.get(key, 0.0) + cost
        if total >= scope.spec.usd * scope.spec.soft_pct and key not in self._alerted:
            self._alerted.add(key)
            self._emit(scope, total, start)

    def _emit(self, scope: BudgetScope, spent: float, start: float) -> None:
        alert = BudgetAlert(
            scope.kind, scope.id, scope.label, scope.spec, spent, datetime.fromtimestamp(start, UTC)
        )
        log.warning("%s", alert.message)
        if self._on_alert is not None:
            try:
                self._on_alert(alert)
            except Exception:
                log.exception("budget alert handler failed")

    def load(self, spend: Iterable[tuple[BudgetScope, float]]) -> None:
        """Seed each scope's spend for its current period (from the usage table, at start).

        A scope already past its soft threshold counts as alerted for this period.
        """
        now = self._clock()
        for scope, usd in spend:
            _, _, period = self._period(scope.spec.period, now)
            key = (scope.kind, scope.id, period)
            self._totals[key] = usd
            if usd >= scope.spec.usd * scope.spec.soft_pct:
                self._alerted.add(key)

    def start(self) -> None:
        """Start background work (none in memory)."""

    async def flush(self) -> None:
        """Send pending spend to the shared store (nothing to do in memory)."""

    async def close(self) -> None:
        """Flush and stop background work."""
