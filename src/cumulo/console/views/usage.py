"""Usage: every request's record, filtered (time, tenant, key, model, status), sorted and
paged in SQL (`UsageReport`), with the same filters as CSV. A tenant admin sees its own
tenant's rows only; asking for another tenant is not found (`access.scope`)."""

from __future__ import annotations

import time
from typing import Literal
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from cumulo.api.admin import access
from cumulo.console.core import Console, Ctx
from cumulo.console.pages import MANAGERS, Page
from cumulo.errors import InvalidRequest
from cumulo.governance.telemetry.usage_report import MAX_OFFSET, SORTABLE, Filters, UsageReport

PAGE = Page("/usage", "Usage", MANAGERS)
PER_PAGE = 50
RANGES = {"1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "all": None}


def _filters(request: Request, ctx: Ctx) -> tuple[Filters, dict[str, str]]:
    q = request.query_params
    shown = {
        n: (q.get(n) or "").strip()[:128]
        for n in ("range", "tenant_id", "key_id", "model", "status")
    }
    chosen = shown["range"] or "24h"
    if chosen not in RANGES:
        raise InvalidRequest(f"'range' must be one of {', '.join(RANGES)}.", param="range")
    shown["range"] = chosen
    span = RANGES[chosen]
    status: Literal["ok", "error"] | int | None = None
    raw = shown["status"]
    if raw in ("ok", "error"):
        status = raw  # type: ignore[assignment]
    elif raw:
        if not raw.isdigit() or not 100 <= int(raw) <= 599:
            raise InvalidRequest("'status' must be ok, error or an HTTP status.", param="status")
        status = int(raw)
    tenant_id = access.scope(ctx.who, shown["tenant_id"] or None)
    filters = Filters(
        since=None if span is None else time.time() - span,
        tenant_id=tenant_id,
        key_id=shown["key_id"] or None,
        model=shown["model"] or None,
        status=status,
    )
    return filters, shown


def routes(console: Console) -> list[Route]:
    platform = console.platform
    report = UsageReport(platform.store)

    async def page(request: Request, ctx: Ctx) -> Response:
        filters, shown = _filters(request, ctx)
        sort = request.query_params.get("sort", "ts")
        if sort not in SORTABLE:
            raise InvalidRequest(f"'sort' must be one of {', '.join(SORTABLE)}.", param="sort")
        descending = request.query_params.get("order", "desc") != "asc"
        try:
            number = max(1, min(int(request.query_params.get("page", "1")), MAX_OFFSET // PER_PAGE))
        except ValueError as exc:
            raise InvalidRequest("'page' must be a number.", param="page") from exc
        await platform.usage.flush()
        rows, more = await report.rows(filters, sort, descending, (number - 1) * PER_PAGE, PER_PAGE)

        def query(**changes: object) -> str:
            """This page's query string with `changes` (links keep the filters)."""
            params: dict[str, object] = {k: v for k, v in shown.items() if v}
            params |= {"sort": sort, "order": "desc" if descending else "asc", "page": number}
            params |= changes
            return urlencode(params)

        return console.render(
            request, ctx, "usage.html",
            {"query": query, "rows": rows, "more": more, "page": number, "sort": sort, "descending": descending,
             "shown": shown, "ranges": list(RANGES), "sortable": list(SORTABLE)},
        )  # fmt: skip

    async def export(request: Request, ctx: Ctx) -> Response:
        filters, _ = _filters(request, ctx)
        await platform.usage.flush()
        return StreamingResponse(
            report.csv(filters),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="cumulo-usage.csv"'},
        )

    return [
        Route("/console/usage", console.view(page, PAGE), methods=["GET"]),
        Route("/console/usage.csv", console.view(export, PAGE), methods=["GET"]),
    ]
