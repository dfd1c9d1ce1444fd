"""Routes of the admin API."""

from __future__ import annotations

from starlette.routing import Route

from cumulo.api.admin.service import AdminService
from cumulo.api.admin.tenants import TenantAdmin
from cumulo.api.http import Handler, error_response, guarded


def _route(path: str, handler: Handler, method: str) -> Route:
    return Route(path, guarded(handler, error_response), methods=[method])


def routes(service: AdminService, tenants: TenantAdmin) -> list[Route]:
    return [
        _route("/admin/keys", service.create_key, "POST"),
        _route("/admin/keys", service.list_keys, "GET"),
        _route("/admin/keys/{key_id}", service.revoke_key, "DELETE"),
        _route("/admin/keys/{key_id}/rotate", service.rotate_key, "POST"),
        _route("/admin/tenants", tenants.create, "POST"),
        _route("/admin/tenants", tenants.list, "GET"),
        _route("/admin/tenants/{tenant_id}", tenants.get, "GET"),
        _route("/admin/tenants/{tenant_id}", tenants.update, "PATCH"),
        _route("/admin/tenants/{tenant_id}", tenants.delete, "DELETE"),
        _route("/admin/usage", service.usage, "GET"),
        _route("/admin/guardrails", service.guardrails, "GET"),
        _route("/admin/engine", service.engine, "GET"),
        _route("/admin/deployments", service.deployments, "GET"),
    ]
