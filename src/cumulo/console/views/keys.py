"""Keys and tenants: create a key (its secret shown once), rotate, revoke; tenants with
their limits and budgets; spend against budget.

The forms are checked by the admin API's own wire models (`api/admin/protocol.py`), the
rules are the admin API's (`api/admin/access.py`: a tenant admin sees and changes its
own tenant's keys only, another tenant's are not found) and the operations are
`KeyService`'s and `TenantService`'s, which append every change to the audit ledger.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from cumulo.api.admin import access
from cumulo.api.admin.protocol import CreateKey, CreateTenant, RotateKey, UpdateTenant
from cumulo.api.admin.service import key_in_scope
from cumulo.console.core import Console, Ctx, checked, form_fields
from cumulo.console.pages import ADMIN, MANAGERS, Page
from cumulo.errors import InvalidRequest, NotFound
from cumulo.governance.quotas.budgets import BudgetSpec, period_bounds
from cumulo.store.db import KeyRow

PAGE = Page("/keys", "Keys and tenants", MANAGERS)
TENANTS = Page("/tenants", "Tenants", ADMIN)


def _limits(fields: dict[str, str]) -> dict[str, Any] | None:
    out = {n: fields[n].strip() for n in ("rpm", "tpm", "concurrency") if fields.get(n, "").strip()}
    return out or None


def _budget(fields: dict[str, str]) -> dict[str, Any] | None:
    usd = fields.get("budget_usd", "").strip()
    if not usd:
        return None
    return {"usd": usd, "period": fields.get("budget_period") or "month"}


def _models(fields: dict[str, str]) -> list[str] | None:
    names = [m.strip() for m in fields.get("models", "").split(",") if m.strip()]
    return names or None


def routes(console: Console) -> list[Route]:
    platform = console.platform
    keys = platform.keys
    tenants = platform.tenants

    async def spend(rows: list[KeyRow], scope: str, ids: list[str]) -> dict[str, float]:
        now = time.time()
        by_period: dict[str, dict[tuple[str, str], float]] = {}
        for period in ("day", "month"):
            by_period[period] = await platform.store.spend_since(period_bounds(period, now)[0])
        out = {}
        budgets = {r.id: r.budget for r in rows} if scope == "key" else {}
        if scope == "tenant":
            budgets = {t.id: t.budget for t in await tenants.all() if t.id in ids}
        for ident, raw in budgets.items():
            spec = BudgetSpec.from_mapping(raw) if raw else None
            period = spec.period if spec else "month"
            out[ident] = by_period[period].get((scope, ident), 0.0)
        return out

    async def page(
        request: Request, ctx: Ctx, created: dict[str, Any] | None = None,
        message: str | None = None, status: int = 200,
    ) -> Response:  # fmt: skip
        tenant_id = access.scope(ctx.who, request.query_params.get("tenant_id") or None)
        rows = await keys.find(include_revoked=False, tenant_id=tenant_id)
        visible = [t for t in await tenants.all() if access.owns(ctx.who, t.id)]
        if tenant_id is not None:
            visible = [t for t in visible if t.id == tenant_id]
        key_spend = await spend(rows, "key", [r.id for r in rows])
        tenant_spend = await spend([], "tenant", [t.id for t in visible])
        return console.render(
            request, ctx, "keys.html",
            {"keys": rows, "tenants": visible, "tenant_id": tenant_id, "created": created,
             "message": message, "key_spend": key_spend, "tenant_spend": tenant_spend,
             "models": sorted(platform.router.routes)},
            status=status,
        )  # fmt: skip

    async def listing(request: Request, ctx: Ctx) -> Response:
        return await page(request, ctx)

    async def create(request: Request, ctx: Ctx) -> Response:
        fields = await form_fields(request)
        try:
            spec = checked(
                CreateKey,
                {
                    "name": fields.get("name", ""),
                    "role": fields.get("role") or "caller",
                    "tenant_id": fields.get("tenant_id") or None,
                    "models": _models(fields),
                    "limits": _limits(fields),
                    "budget": _budget(fields),
                },
            )
            tenant_id = access.scope(ctx.who, spec.tenant_id)
            access.require_may_issue(ctx.who, spec.role, tenant_id)
            row, token = await keys.create(
                ctx.who.key_id, spec.name, spec.role, tenant_id=tenant_id, models=spec.models,
                limits=spec.limits.model_dump() if spec.limits else None,
                budget=spec.budget.model_dump() if spec.budget else None,
            )  # fmt: skip
        except InvalidRequest as exc:
            return await page(request, ctx, message=exc.message, status=400)
        return await page(request, ctx, created={"row": row, "token": token, "action": "created"})

    async def rotate(request: Request, ctx: Ctx) -> Response:
        old = await key_in_scope(keys, ctx.who, request.path_params["key_id"])
        if old.role == "admin" and not ctx.is_admin:
            raise NotFound(f"No active key with id '{old.id}'.", param="id")
        fields = await form_fields(request)
        grace = fields.get("grace_s", "").strip() or "86400"
        try:
            spec = checked(RotateKey, {"grace_s": grace})
            row, token, expires = await keys.rotate(ctx.who.key_id, old, spec.grace_s)
        except InvalidRequest as exc:
            return await page(request, ctx, message=exc.message, status=400)
        created = {"row": row, "token": token, "action": "rotated", "old": old, "expires": expires}
        return await page(request, ctx, created=created)

    async def revoke(request: Request, ctx: Ctx) -> Response:
        row = await key_in_scope(keys, ctx.who, request.path_params["key_id"])
        await keys.revoke(ctx.who.key_id, row)
        return RedirectResponse("/console/keys", status_code=303)

    async def tenant(request: Request, ctx: Ctx) -> Response:
        tenant_id = request.path_params["tenant_id"]
        row = await tenants.get(tenant_id) if access.owns(ctx.who, tenant_id) else None
        if row is None:
            raise NotFound(f"No tenant with id '{tenant_id}'.", param="id")
        return RedirectResponse(f"/console/keys?tenant_id={row.id}", status_code=303)

    async def create_tenant(request: Request, ctx: Ctx) -> Response:
        fields = await form_fields(request)
        try:
            spec = checked(
                CreateTenant,
                {"name": fields.get("name", ""), "models": _models(fields),
                 "limits": _limits(fields), "budget": _budget(fields)},
            )  # fmt: skip
            extra = spec.model_dump(exclude={"name"}, mode="json")
            await tenants.create(ctx.who.key_id, spec.name, extra, lambda r: {"id": r.id})
        except InvalidRequest as exc:
            return await page(request, ctx, message=exc.message, status=400)
        return RedirectResponse("/console/keys", status_code=303)

    async def update_tenant(request: Request, ctx: Ctx) -> Response:
        tenant_id = request.path_params["tenant_id"]
        row = await tenants.get(tenant_id)
        if row is None:
            raise NotFound(f"No tenant with id '{tenant_id}'.", param="id")
        fields = await form_fields(request)
        try:
            spec = checked(UpdateTenant, {"limits": _limits(fields), "budget": _budget(fields)})
            await tenants.update(
                ctx.who.key_id, row, spec.model_dump(exclude_unset=True, mode="json")
            )
        except InvalidRequest as exc:
            return await page(request, ctx, message=exc.message, status=400)
        return RedirectResponse("/console/keys", status_code=303)

    return [
        Route("/console/keys", console.view(listing, PAGE), methods=["GET"]),
        Route("/console/keys", console.view(create, PAGE), methods=["POST"]),
        Route("/console/keys/{key_id}/rotate", console.view(rotate, PAGE), methods=["POST"]),
        Route("/console/keys/{key_id}/revoke", console.view(revoke, PAGE), methods=["POST"]),
        Route("/console/tenants/{tenant_id}", console.view(tenant, PAGE), methods=["GET"]),
        Route("/console/tenants", console.view(create_tenant, TENANTS), methods=["POST"]),
        Route(
            "/console/tenants/{tenant_id}", console.view(update_tenant, TENANTS), methods=["POST"]
        ),
    ]
