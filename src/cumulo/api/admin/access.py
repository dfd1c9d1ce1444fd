"""Who may call which admin endpoint, and on which tenant.

    platform admin   everything, every tenant
    tenant admin     its own tenant: the tenant itself (read), its keys, usage, alerts, logs
    caller           no admin endpoint (403)

Another tenant's objects are reported as not found, never as forbidden, so that a
tenant admin cannot even learn which ids exist elsewhere.
"""

from __future__ import annotations

from starlette.requests import Request

from cumulo.errors import NotFound, PermissionDenied
from cumulo.governance.auth import Authenticator, Principal


async def principal(auth: Authenticator, request: Request) -> Principal:
    return await auth.authenticate(request.headers.get("authorization"))


async def admin(auth: Authenticator, request: Request) -> Principal:
    """A platform admin, else 403."""
    who = await principal(auth, request)
    auth.require_admin(who)
    return who


async def manager(auth: Authenticator, request: Request) -> Principal:
    """A platform admin or a tenant admin, else 403."""
    who = await principal(auth, request)
    if who.role == "caller":
        raise PermissionDenied(
            "This endpoint needs an admin or tenant admin key.", code="admin_required"
        )
    if who.role == "tenant_admin" and who.tenant_id is None:
        raise PermissionDenied("This tenant admin key has no tenant.", code="admin_required")
    return who


def scope(who: Principal, tenant_id: str | None) -> str | None:
    """The tenant a request may act on: a tenant admin's own only, whatever it asks for.

    A platform admin gets `tenant_id` as asked (None: all tenants).
    """
    if who.is_admin:
        return tenant_id
    if tenant_id is not None and tenant_id != who.tenant_id:
        raise NotFound(f"No tenant with id '{tenant_id}'.", param="tenant_id", code="not_found")
    return who.tenant_id


def owns(who: Principal, tenant_id: str | None) -> bool:
    """May `who` act on an object that belongs to `tenant_id`?"""
    return who.is_admin or (tenant_id is not None and tenant_id == who.tenant_id)
