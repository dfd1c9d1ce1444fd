"""Key operations: issue, list, revoke and rotate API keys.

The one place keys are made: the admin API and first-start preparation (`bootstrap`) both
issue through `KeyService`. A key's secret is generated here, stored hashed (and sealed
under the master key, for SigV4), returned once and never again. Every change is
recorded through `audit` (the audit ledger, and other replicas told to reload), and this
process's key cache, when there is one, is updated at once.

Who may do what is the caller's business (`api/admin/access`); this module checks that
the operation makes sense (a tenant that exists, models it may use, one rotation per key).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Container
from typing import Any, Protocol

from cumulo.errors import InvalidRequest, NotFound
from cumulo.governance.identity import keys
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store.db import KeyReplaced, KeyRow, Store

Audit = Callable[
    [str | None, str, str | None, str | None, dict[str, Any] | None], Awaitable[object]
]
"""Records an admin action: (actor key id, action, target, tenant id, details)."""


class KeyCache(Protocol):
    """What a process keeps of keys in memory (`identity.auth.Authenticator` is one)."""

    def add(self, row: KeyRow) -> None: ...

    def remove(self, key_id: str) -> None: ...


def check_models(known: Container[str], models: list[str] | None, param: str = "models") -> None:
    """Every name in `models` is a configured model (400 naming the first that is not)."""
    for i, name in enumerate(models or ()):
        if name not in known:
            raise InvalidRequest(
                f"Unknown model '{name}' in '{param}'.",
                param=f"{param}.{i}",
                code="model_not_found",
            )


def _already_rotated(key_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"The key '{key_id}' was already rotated; rotate its successor instead.",
        param="id",
        code="key_already_rotated",
    )


def _not_found(key_id: str) -> NotFound:
    return NotFound(f"No active key with id '{key_id}'.", param="id", code="key_not_found")


class KeyService:
    def __init__(
        self,
        store: Store,
        master_key: MasterKey,
        audit: Audit,
        cache: KeyCache | None = None,
        models: Container[str] = (),
    ) -> None:
        """`models`: the configured model names, that a key's `models` must be among."""
        self.store = store
        self.master_key = master_key
        self.audit = audit
        self.cache = cache
        self.models = models

    async def active(self, key_id: str) -> KeyRow | None:
        """The key, unless it does not exist or was revoked."""
        row = await self.store.get_key(key_id)
        return row if row is not None and row.revoked_at is None else None

    async def find(self, *, include_revoked: bool, tenant_id: str | None) -> list[KeyRow]:
        return await self.store.list_keys(include_revoked=include_revoked, tenant_id=tenant_id)

    async def has_admin_key(self) -> bool:
        return await self.store.has_admin_key()

    async def create(
        self,
        actor: str | None,
        name: str,
        role: str,
        *,
        tenant_id: str | None = None,
        models: list[str] | None = None,
        limits: dict[str, Any] | None = None,
        budget: dict[str, Any] | None = None,
    ) -> tuple[KeyRow, str]:
        """A new key and its token (the only time the secret is shown).

        Its `models` must be configured models, and within its tenant's (the tenant must
        exist)."""
        if role == "tenant_admin" and tenant_id is None:
            raise InvalidRequest(
                "A tenant admin key needs a tenant.", param="tenant_id", code="tenant_required"
            )
        check_models(self.models, models)
        if tenant_id is not None:
            tenant = await self.store.get_tenant(tenant_id)
            if tenant is None:
                raise NotFound(
                    f"No tenant with id '{tenant_id}'.", param="tenant_id", code="not_found"
                )
            outside = sorted(set(models or ()) - set(tenant.models or models or ()))
            if outside:
                raise InvalidRequest(
                    f"The tenant may not use {', '.join(repr(m) for m in outside)}.",
                    param="models",
                    code="model_not_allowed",
                )
        return await self._issue(
            actor, name, role, tenant_id=tenant_id, models=models, limits=limits, budget=budget
        )

    async def revoke(self, actor: str | None, row: KeyRow) -> None:
        """Revoke a key: it stops working at once here, and on other replicas as soon as
        they reload."""
        if not await self.store.revoke_key(row.id):
            raise _not_found(row.id)
        if self.cache is not None:
            self.cache.remove(row.id)
        await self.audit(actor, "key.revoke", row.id, row.tenant_id, {"name": row.name})

    async def rotate(
        self, actor: str | None, old: KeyRow, grace_s: float
    ) -> tuple[KeyRow, str, float]:
        """A new key with `old`'s name, tenant, role and scopes; `old` keeps working for
        `grace_s` seconds (when it expires is returned too).

        A key is rotated once: a key already replaced (still in its grace period) is a
        400, and one expired or revoked is not found, so one key never has two live
        successors."""
        now = time.time()
        if old.expires_at is not None and old.expires_at <= now:
            raise _not_found(old.id)
        if old.expires_at is not None:
            raise _already_rotated(old.id)
        expires = now + grace_s
        try:
            row, token = await self._issue(
                actor,
                old.name,
                old.role,
                tenant_id=old.tenant_id,
                models=old.models,
                limits=old.limits,
                budget=old.budget,
                replaces=(old.id, expires),
            )
        except KeyReplaced as exc:  # another rotation (or a revocation) got there first
            raise _already_rotated(old.id) from exc
        if self.cache is not None:
            self.cache.add(dataclasses.replace(old, expires_at=expires))
        return row, token, expires

    async def _issue(
        self,
        actor: str | None,
        name: str,
        role: str,
        *,
        tenant_id: str | None,
        models: list[str] | None,
        limits: dict[str, Any] | None,
        budget: dict[str, Any] | None,
        replaces: tuple[str, float] | None = None,
    ) -> tuple[KeyRow, str]:
        new = keys.generate()
        sealed = self.master_key.encrypt(new.id, new.secret)  # for SigV4 (bedrock)
        row = await self.store.add_key(
            new.id,
            name,
            role,
            keys.hash_secret(new.secret),
            sealed,
            tenant_id=tenant_id,
            models=models,
            limits=limits,
            budget=budget,
            expire_key=replaces,
        )
        if self.cache is not None:
            self.cache.add(row)
        data: dict[str, Any] = {"name": name, "role": role, "models": models}
        data |= {"limits": limits, "budget": budget}
        if replaces is None:
            await self.audit(actor, "key.create", new.id, tenant_id, data)
        else:
            data |= {"replaces": replaces[0], "old_expires_at": replaces[1]}
            await self.audit(actor, "key.rotate", new.id, tenant_id, data)
        return row, new.token
