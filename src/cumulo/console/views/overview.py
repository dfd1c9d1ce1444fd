"""Overview: requests, errors, tokens and cost over time; top models and keys; open
alerts; each tenant's budget use against its limit. Platform admins see every tenant,
a tenant admin its own (as `GET /admin/usage` and `/admin/alerts` do)."""

from __future__ import annotations

import math
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cumulo.api.admin import access
from cumulo.console import charts
from cumulo.console.core import Console, Ctx
from cumulo.console.pages import MANAGERS, Page
from cumulo.governance.quotas.budgets import BudgetSpec, period_bounds
from cumulo.governance.telemetry.usage_report import Bucket, Filters, UsageReport

PAGE = Page("/overview", "Overview", MANAGERS)
# The time-range picker: name -> (seconds covered, bucket width).
RANGES = {
    "1h": (3600, 60),
    "24h": (86400, 3600),
    "7d": (7 * 86400, 86400),
    "30d": (30 * 86400, 86400),
}


def routes(console: Console) -> list[Route]:
    platform = console.platform
    report = UsageReport(platform.store)

    async def overview(request: Request, ctx: Ctx) -> Response:
        chosen = request.query_params.get("range", "24h")
        if chosen not in RANGES:
            chosen = "24h"
        span, width = RANGES[chosen]
        tenant_id = access.scope(ctx.who, None)
        now = time.time()
        await platform.usage.flush()  # what this process still has queued, first
        since = math.floor((now - span) / width) * width  # whole buckets (days: the sums')
        filters = Filters(since=since, tenant_id=tenant_id)
        buckets = _filled(await report.series(filters, width), since, now, width)
        labels = charts.time_labels([b.start for b in buckets], width)
        values = {
            "requests": charts.line(
                "Requests and errors",
                labels,
                {"requests": [b.requests for b in buckets], "errors": [b.errors for b in buckets]},
            ),
            "tokens": charts.line("Tokens", labels, {"tokens": [b.tokens for b in buckets]}),
            "cost": charts.line(
                "Cost (USD)", labels, {"cost": [round(b.cost_usd, 6) for b in buckets]}
            ),
        }
        totals = {
            "requests": sum(b.requests for b in buckets),
            "errors": sum(b.errors for b in buckets),
            "tokens": sum(b.tokens for b in buckets),
            "cost": sum(b.cost_usd for b in buckets),
        }
        top_models = await report.top(filters, "model")
        top_keys = await report.top(filters, "key_id")
        alerts = await platform.alerts.recent(tenant_id, now - 86400, 20)
        budgets = await _budgets(console, tenant_id, now)
        budget_chart = None
        if budgets:
            budget_chart = charts.bars(
                "Budget use this period (USD)",
                [str(b["name"]) for b in budgets],
                {
                    "spent": [float(str(b["spent"])) for b in budgets],
                    "budget": [float(str(b["usd"])) for b in budgets],
                },
            )
        return console.render(
            request,
            ctx,
            "overview.html",
            {
                "range": chosen,
                "ranges": list(RANGES),
                "charts": values,
                "totals": totals,
                "top_models": top_models,
                "top_keys": top_keys,
                "alerts": [a.as_dict() for a in alerts],
                "budgets": budgets,
                "budget_chart": budget_chart,
            },
        )

    return [Route("/console/overview", console.view(overview, PAGE), methods=["GET"])]


def _filled(found: list[Bucket], since: float, until: float, width: float) -> list[Bucket]:
    """Every bucket of the range, those without requests as zeros (a continuous axis)."""
    by_start = {b.start: b for b in found}
    start = math.floor(since / width) * width
    out = []
    while start <= until:
        out.append(by_start.get(start, Bucket(start, 0, 0, 0, 0.0)))
        start += width
    return out


async def _budgets(console: Console, tenant_id: str | None, now: float) -> list[dict[str, object]]:
    """Each tenant with a budget (one tenant for a tenant admin): spend this period vs limit."""
    platform = console.platform
    tenants = [t for t in await platform.tenants.all() if t.budget]
    if tenant_id is not None:
        tenants = [t for t in tenants if t.id == tenant_id]
    spend: dict[str, dict[tuple[str, str], float]] = {}
    out: list[dict[str, object]] = []
    for t in tenants:
        spec = BudgetSpec.from_mapping(t.budget)
        if spec is None:
            continue
        if spec.period not in spend:
            spend[spec.period] = await platform.store.spend_since(
                period_bounds(spec.period, now)[0]
            )
        spent = spend[spec.period].get(("tenant", t.id), 0.0)
        out.append(
            {
                "id": t.id,
                "name": t.name,
                "usd": spec.usd,
                "period": spec.period,
                "spent": round(spent, 6),
                "pct": 100.0 * spent / spec.usd if spec.usd else 0.0,
            }
        )
    return out
