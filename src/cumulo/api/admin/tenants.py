"""Admin endpoints for tenants: create, list, read, change, delete.

Platform admins manage tenants; a tenant admin may read its own tenant only. Handlers
parse, authorize (`access`) and render; the operations are `identity.tenants`' (every
change is appended to the audit ledger).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.admin import access
from cumulo.api.admin.bounds import renderable
from cumulo.api.admin.protocol import CreateTenant, UpdateTenant
from cumulo.api.admin.service import parse
from cumulo.api.http import JSONResponse, read_body
from cumulo.errors import NotFound
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.governance.identity.tenants import TenantService
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


class TenantAdmin:
    """The tenant endpoints over `identity.tenants.TenantService`."""

    def __init__(self, auth: Authenticator, tenants: TenantService) -> None:
        self.auth = auth
        self.tenants = tenants

    async def create(self, request: Request) -> Response:
        """POST /admin/tenants."""
        who = await access.admin(self.auth, request)
        spec = parse(CreateTenant, await read_body(request, _BODY_LIMIT))
        fields = spec.model_dump(exclude={"name"}, mode="json")
        row = await self.tenants.create(who.key_id, spec.name, fields, tenant_view)
        return JSONResponse(tenant_view(row), status_code=201)

    async def list(self, request: Request) -> Response:
        """GET /admin/tenants: all of them, or a tenant admin's own."""
        who = await access.manager(self.auth, request)
        rows = await self.tenants.all()
        rows = [r for r in rows if access.owns(who, r.id)]
        data = [renderable(_view(r), "tenant") for r in rows]
        return JSONResponse({"object": "list", "data": data})

    async def _get(self, request: Request, manage: bool) -> tuple[Principal, TenantRow]:
        tenant_id = request.path_params["tenant_id"]
        who = await (access.admin if manage else access.manager)(self.auth, request)
        row = await self.tenants.get(tenant_id) if access.owns(who, tenant_id) else None
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
        updated = await self.tenants.update(who.key_id, row, changes)
        return JSONResponse(tenant_view(updated))

    async def delete(self, request: Request) -> Response:
        """DELETE /admin/tenants/{id}: the tenant and all its keys stop working at once."""
        who, row = await self._get(request, manage=True)
        await self.tenants.delete(who.key_id, row)
        return JSONResponse({"id": row.id, "deleted": True})
