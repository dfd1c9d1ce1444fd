"""Tenant operations: create, list, read, change and delete tenants.

A tenant groups keys and carries their shared scopes: models, limits, budget, guardrails
and invocation logging. Every change is recorded through `audit` (the audit ledger, and
other replicas told to reload) and applied to this process's cache at once. Deleting a
tenant stops all its keys.

Who may do what is the caller's business (`api/admin/access`); this module checks that
the change makes sense (known models and guardrails, unique names).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Container, Mapping
from typing import Any, Protocol

from cumulo.errors import InvalidRequest, NotFound
from cumulo.governance.identity.key_service import Audit, check_models
from cumulo.store.db import Store, TenantRow


class TenantCache(Protocol):
    """What a process keeps of tenants in memory (`identity.auth.Authenticator` is one)."""

    def set_tenant(self, row: TenantRow) -> None: ...

    def drop_tenant(self, tenant_id: str) -> None: ...


class TenantService:
    def __init__(
        self,
        store: Store,
        audit: Audit,
        cache: TenantCache | None = None,
        models: Container[str] = (),
        guardrails: Callable[[], Container[str]] = lambda: (),
    ) -> None:
        """`models`: the configured model names; `guardrails()`: the configured guardrail
        ids, that a tenant's may name."""
        self.store = store
        self.audit = audit
        self.cache = cache
        self.models = models
        self.guardrails = guardrails

    def _check(self, models: list[str] | None, guardrails: list[str] | None) -> None:
        check_models(self.models, models)
        known = self.guardrails()
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

    async def create(
        self,
        actor: str | None,
        name: str,
        fields: Mapping[str, Any],
        view: Callable[[TenantRow], dict[str, Any]],
    ) -> TenantRow:
        """A new tenant; `view` is what the ledger records of it."""
        self._check(fields.get("models"), fields.get("guardrails"))
        await self._unique_name(name)
        row = await self.store.add_tenant(secrets.token_hex(8), name, **fields)
        if self.cache is not None:
            self.cache.set_tenant(row)
        await self.audit(actor, "tenant.create", row.id, row.id, view(row))
        return row

    async def all(self) -> list[TenantRow]:
        return await self.store.list_tenants()

    async def get(self, tenant_id: str) -> TenantRow | None:
        return await self.store.get_tenant(tenant_id)

    async def update(self, actor: str | None, row: TenantRow, changes: dict[str, Any]) -> TenantRow:
        """Change the fields in `changes`; the others stay."""
        for field in ("name", "guardrails", "log_invocations"):
            if field in changes and changes[field] is None:
                raise InvalidRequest(f"'{field}' cannot be null.", param=field)
        self._check(changes.get("models"), changes.get("guardrails"))
        if "name" in changes:
            await self._unique_name(changes["name"], row.id)
        updated = await self.store.update_tenant(row.id, **changes)
        if updated is None:
            raise NotFound(f"No tenant with id '{row.id}'.", param="id", code="not_found")
        if self.cache is not None:
            self.cache.set_tenant(updated)
        await self.audit(actor, "tenant.update", row.id, row.id, changes)
        return updated

    async def delete(self, actor: str | None, row: TenantRow) -> None:
        """Delete the tenant: it and all its keys stop working at once."""
        if not await self.store.delete_tenant(row.id):
            raise NotFound(f"No tenant with id '{row.id}'.", param="id", code="not_found")
        if self.cache is not None:
            self.cache.drop_tenant(row.id)
        await self.audit(actor, "tenant.delete", row.id, row.id, {"name": row.name})
