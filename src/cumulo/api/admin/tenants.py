"""Admin endpoints for tenants: create, list, read, change, delete.

Platform admins manage tenants; a tenant admin may read its own tenant only.
Every change is appended to the audit ledger.
"""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.admin import access
from cumulo.api.admin.bounds import renderable
from cumulo.api.admin.protocol import CreateTenant, UpdateTenant
from cumulo.api.admin.service import check_models, parse
from cumulo.api.http import JSONResponse, read_body
from cumulo.errors import InvalidRequest, NotFound
from cumulo.platform import Platform
from cumulo.store.db import TenantRow

_BODY_LIMIT = 256 * 1024


def tenant_view(row: TenantRow) -> dict[str, Any]:
    """A tenant as the API shows it (a field JSON cannot carry shown as null)."""
    return renderable(_view(row), "tenant")


def _view(row: TenantRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "models": row.models,
        "limits": row.limits,
        "budget": row.budget,
        "guardrails": row.guardrails or [],
        "log_invocations": row.log_invocations,
        "log_retention_days": row.log_retention_days,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


class TenantService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.store = platform.store
        self.auth = platform.auth

    def _check(self, models: list[str] | None, guardrails: list[str] | None) -> None:
        check_models(self.platform, models)
        known = self.platform.guardrail_ids()
        for i, gid in enumerate(guardrails or ()):
            if gid not in known:
                raise InvalidRequest(
                    f"Unknown guardrail '{gid}'.",
                    param=f"guardrails.{i}",
                    code="guardrail_not_found",
                )

    async def _unique_name(self, name: str, tenant_id: str | None = None) -> None:
        other = await self.store.tenant_by_name(name)
        if other is not None and other.id != tenant_id:
            raise InvalidRequest(
                f"A tenant named '{name}' already exists.", param="name", code="duplicate_name"
            )

    async def create(self, request: Request) -> Response:
        """POST /admin/tenants."""
        who = await access.admin(self.auth, request)
        spec = parse(CreateTenant, await read_body(request, _BODY_LIMIT))
        self._check(spec.models, spec.guardrails)
        await self._unique_name(spec.name)
        fields = spec.model_dump(exclude={"name"}, mode="json")
        row = await self.store.add_tenant(secrets.token_hex(8), spec.name, **fields)
        self.auth.set_tenant(row)
        await self.platform.audit(who, "tenant.create", row.id, row.id, tenant_view(row))
        return JSONResponse(tenant_view(row), status_code=201)

    async def list(self, request: Request) -> Response:
        """GET /admin/tenants: all of them, or a tenant admin's own."""
        who = await access.manager(self.auth, request)
        rows = await self.store.list_tenants()
        rows = [r for r in rows if access.owns(who, r.id)]
        data = [renderable(_view(r), "tenant") for r in rows]
        return JSONResponse({"object": "list", "data": data})

    async def _get(self, request: Request, manage: bool) -> tuple[Any, TenantRow]:
        tenant_id = request.path_params["tenant_id"]
        who = await (access.admin if manage else access.manager)(self.auth, request)
        row = await self.store.get_tenant(tenant_id) if access.owns(who, tenant_id) else None
        if row is None:
            raise NotFound(f"No tenant with id '{tenant_id}'.", param="id", code="not_found")
        return who, row

    async def get(self, request: Request) -> Response:
        """GET /admin/tenants/{id}."""
        _, row = await self._get(request, manage=False)
        return JSONResponse(tenant_view(row))

    async def update(self, request: Request) -> Response:
        """PATCH /admin/tenants/{id}: the fields given change; the others stay."""
        who, row = await self._get(request, manage=True)
        spec = parse(UpdateTenant, await read_body(request, _BODY_LIMIT))
        changes = spec.model_dump(exclude_unset=True, mode="json")
        for field in ("name", "guardrails", "log_invocations"):
            if field in changes and changes[field] is None:
                raise InvalidRequest(f"'{field}' cannot be null.", param=field)
        self._check(changes.get("models"), changes.get("guardrails"))
        if "name" in changes:
            await self._unique_name(changes["name"], row.id)
        updated = await self.store.update_tenant(row.id, **changes)
        if updated is None:
            raise NotFound(f"No tenant with id '{row.id}'.", param="id", code="not_found")
        self.auth.set_tenant(updated)
        await self.platform.audit(who, "tenant.update", row.id, row.id, changes)
        return JSONResponse(tenant_view(updated))

    async def delete(self, request: Request) -> Response:
        """DELETE /admin/tenants/{id}: the tenant and all its keys stop working at once."""
        who, row = await self._get(request, manage=True)
        if not await self.store.delete_tenant(row.id):
            raise NotFound(f"No tenant with id '{row.id}'.", param="id", code="not_found")
        self.auth.drop_tenant(row.id)
        await self.platform.audit(who, "tenant.delete", row.id, row.id, {"name": row.name})
        return JSONResponse({"id": row.id, "deleted": True})
