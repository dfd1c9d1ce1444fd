"""Audit: the ledger browser with verification (platform admins, as `/admin/ledger`),
invocation logs of tenants that enabled them (`/admin/invocations`: a tenant admin sees
its own), and a model's lineage (the ledger entries that name it as their target)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cumulo.api.admin import access
from cumulo.api.admin.bounds import INT64_MAX, query_int
from cumulo.console.core import Console, Ctx
from cumulo.console.pages import ADMIN, MANAGERS, Page

PAGE = Page("/audit", "Audit", MANAGERS)
VERIFY = Page("/audit/verify", "Verify", ADMIN)
PER_PAGE = 50


def routes(console: Console) -> list[Route]:
    platform = console.platform
    ledger = platform.ledger

    async def page(request: Request, ctx: Ctx) -> Response:
        q = request.query_params
        tenant_id = access.scope(ctx.who, q.get("tenant_id") or None)
        entries, has_more, lineage = [], False, None
        model = (q.get("model") or "").strip()[:128] or None
        if ctx.is_admin:
            await ledger.flush()
            found = await ledger.entries(
                before_seq=query_int(request, "before_seq", 1, INT64_MAX),
                tenant_id=tenant_id,
                action=q.get("action") or None,
                limit=PER_PAGE + 1,
            )
            entries, has_more = [e.as_dict() for e in found[:PER_PAGE]], len(found) > PER_PAGE
            if model is not None:
                lineage = [e.as_dict() for e in await ledger.entries(target=model, limit=200)]
        logs = await platform.invocations.entries(
            tenant_id,
            before_id=query_int(request, "before_id", 1, INT64_MAX),
            limit=PER_PAGE + 1,
        )
        return console.render(
            request, ctx, "audit.html",
            {"entries": entries, "has_more": has_more, "action": q.get("action") or "",
             "logs": [e.as_dict() for e in logs[:PER_PAGE]], "logs_more": len(logs) > PER_PAGE,
             "model": model, "lineage": lineage, "verification": None},
        )  # fmt: skip

    async def verify(request: Request, ctx: Ctx) -> Response:
        result = (await ledger.verify()).as_dict()
        template = "_verify.html" if request.headers.get("hx-request") else "verify.html"
        return console.render(request, ctx, template, {"verification": result})

    return [
        Route("/console/audit", console.view(page, PAGE), methods=["GET"]),
        Route("/console/audit/verify", console.view(verify, VERIFY), methods=["GET"]),
    ]
