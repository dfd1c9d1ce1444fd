"""Who may call which admin endpoint, and on which tenant.

    platform admin   everything, every tenant
    tenant admin     its own tenant: the tenant itself (read), its keys, usage, alerts, logs
    caller           no admin endpoint (403)

Another tenant's objects are reported as not found, never as forbidden, so that a
tenant admin cannot even learn which ids exist elsewhere.
"""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request

from cumulo.errors import NotFound, PermissionDenied
from cumulo.governance.identity.auth import Authenticator, Principal


async def principal(auth: Authenticator, request: Request) -> Principal:
    return await auth.authenticate(request.headers.get("authorization"))


async def admin(auth: Authenticator, request: Request) -> Principal:
    """A platform admin, else 403."""
    who = await principal(auth, request)
    auth.require_admin(who)
    return who


class Scoped(Protocol):
    """What these rules need to know of a caller (a `Principal` is one)."""

    @property
    def role(self) -> str: ...

    @property
    def tenant_id(self) -> str | None: ...


async def manager(auth: Authenticator, request: Request) -> Principal:
    """A platform admin or a tenant admin, else 403."""
    who = await principal(auth, request)
    require_manager(who)
    return who


def require_manager(who: Scoped) -> None:
    """403 unless `who` is a platform admin or a tenant admin with a tenant."""
    if who.role not in ("admin", "tenant_admin"):
        raise PermissionDenied(
            "This endpoint needs an admin or tenant admin key.", code="admin_required"
        )
    if who.role == "tenant_admin" and who.tenant_id is None:
        raise PermissionDenied("This tenant admin key has no tenant.", code="admin_required")


def scope(who: Scoped, tenant_id: str | None) -> str | None:
    """The tenant a request may act on: a tenant admin's own only, whatever it asks for.

    A platform admin gets `tenant_id` as asked (None: all tenants).
    """
    if who.role == "admin":
        return tenant_id
    if tenant_id is not None and tenant_id != who.tenant_id:
        raise NotFound(f"No tenant with id '{tenant_id}'.", param="tenant_id", code="not_found")
    return who.tenant_id


def owns(who: Scoped, tenant_id: str | None) -> bool:
    """May `who` act on an object that belongs to `tenant_id`?"""
    return who.role == "admin" or (tenant_id is not None and tenant_id == who.tenant_id)


def require_may_issue(who: Scoped, role: str, tenant_id: str | None) -> None:
    """403 unless `who` may issue a key of `role` in `tenant_id`: only a platform admin
    issues admin keys, and those belong to no tenant."""
    if role == "admin" and (who.role != "admin" or tenant_id is not None):
        raise PermissionDenied(
            "Only a platform admin creates admin keys, and they belong to no tenant.",
            param="role",
            code="role_not_allowed",
        )
