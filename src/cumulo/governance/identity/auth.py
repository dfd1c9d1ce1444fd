"""Authentication from an in-memory key cache: no I/O on the request path.

The cache is loaded at start and reloaded in the background whenever the keys
table changes (another worker or replica created or revoked a key). A request
with a key this process has never seen waits for a reload that starts after it
arrived; all such requests share one, and there is at most one per `poll_s`.
So a key created through another worker works on its first request, and a
flood of bad keys cannot turn into a flood of queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

from cumulo.errors import AuthenticationFailed, PermissionDenied
from cumulo.governance.identity import keys, sigv4
from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store.db import KeyRow, Store, TenantRow

log = logging.getLogger(__name__)

ADMIN_ENV_ID = "admin-env"


@dataclass(slots=True, frozen=True)
class Principal:
    """Who is calling, with everything the request path needs to know about them.

    Built once per key (and rebuilt when the key or its tenant changes), so that
    authenticating a request is a dictionary lookup and one hash.
    """

    key_id: str
    name: str
    role: keys.Role
    tenant_id: str | None = None
    tenant_name: str | None = None
    models: frozenset[str] | None = None  # the models it may use (None: all)
    key_limits: dict[str, Any] | None = None
    tenant_limits: dict[str, Any] | None = None
    key_budget: dict[str, Any] | None = None
    tenant_budget: dict[str, Any] | None = None
    guardrails: tuple[str, ...] = ()  # the tenant's guardrail ids
    log_invocations: bool = False
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def principal_for(row: KeyRow, tenant: TenantRow | None) -> Principal:
    """The principal of a key row and its tenant: the key narrows what its tenant allows."""
    role: keys.Role = row.role if row.role in keys.ROLES else "caller"
    models: frozenset[str] | None = None
    for allowed in (tenant.models if tenant else None, row.models):
        if allowed is not None:
            models = frozenset(allowed) if models is None else models & frozenset(allowed)
    return Principal(
        key_id=row.id,
        name=row.name,
        role=role,
        tenant_id=row.tenant_id,
        tenant_name=tenant.name if tenant else None,
        models=models,
        key_limits=row.limits,
        tenant_limits=tenant.limits if tenant else None,
        key_budget=row.budget,
        tenant_budget=tenant.budget if tenant else None,
        guardrails=tuple(tenant.guardrails or ()) if tenant else (),
        log_invocations=bool(tenant and tenant.log_invocations),
        expires_at=row.expires_at,
    )


class Authenticator:
    def __init__(
        self,
        store: Store,
        env_admin_key: str | None = None,
        poll_s: float = 1.0,
        master_key: MasterKey | None = None,
    ) -> None:
        self.store = store
        self.master_key = master_key
        self._signing: dict[str, str] = {}  # key id → secret, for SigV4 (decrypted once)
        self.poll_s = poll_s
        self._env_admin = keys.hash_secret(env_admin_key) if env_admin_key else None
        self._keys: dict[str, KeyRow] = {}
        self._tenants: dict[str, TenantRow] = {}
        self._principals: dict[str, Principal] = {}
        self._version: tuple[int, float, int, float] | None = None
        self._changes = 0  # changes made through this process (add, remove, tenants)
        self._last_miss_reload = 0.0
        self._miss_reload: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._last_used: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.reload()
        self._task = asyncio.create_task(self._poll(), name="cumulo-key-poll")

    async def close(self) -> None:
        for task in (self._task, self._miss_reload):
            if task:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._flush_last_used()

    async def reload(self, force: bool = False) -> None:
        async with self._reload_lock:
            version = await self.store.keys_version()
            if force or version != self._version:
                # A change made here while the tables are read (a tenant deleted, a key
                # revoked) is committed already: read again, or the stale copy would
                # bring it back until the next poll.
                while True:
                    changes = self._changes
                    rows = await self.store.list_keys()
                    tenants = await self.store.list_tenants()
                    if changes == self._changes:
                        break
                self._tenants = {t.id: t for t in tenants}
                self._keys = {r.id: r for r in rows}
                self._signing = {r.id: s for r in rows if (s := self._signing_secret(r))}
                self._principals = {r.id: self._principal(r) for r in rows}
                self._version = version

    def _principal(self, row: KeyRow) -> Principal:
        tenant = self._tenants.get(row.tenant_id) if row.tenant_id else None
        return principal_for(row, tenant)

    def add(self, row: KeyRow) -> None:
        self._changes += 1
        self._keys[row.id] = row
        self._principals[row.id] = self._principal(row)
        if secret := self._signing_secret(row):
            self._signing[row.id] = secret

    def remove(self, key_id: str) -> None:
        self._changes += 1
        self._keys.pop(key_id, None)
        self._principals.pop(key_id, None)
        self._signing.pop(key_id, None)

    def set_tenant(self, tenant: TenantRow) -> None:
        """A tenant was created or changed here: its keys' principals follow at once."""
        self._changes += 1
        self._tenants[tenant.id] = tenant
        for key_id, row in self._keys.items():
            if row.tenant_id == tenant.id:
                self._principals[key_id] = self._principal(row)

    def drop_tenant(self, tenant_id: str) -> None:
        self._changes += 1
        self._tenants.pop(tenant_id, None)
        for key_id in [k for k, r in self._keys.items() if r.tenant_id == tenant_id]:
            self.remove(key_id)

    def principal(self, key_id: str) -> Principal | None:
        """The principal of an active key by its id, from the cache (a job acting as its
        owner, a web console session); None once the key is revoked, deleted or expired.
        The admin key from `CUMULO_ADMIN_KEY` is `ADMIN_ENV_ID`, while that is set."""
        if key_id == ADMIN_ENV_ID:
            return self._env_principal() if self._env_admin is not None else None
        who = self._principals.get(key_id)
        if who is None or (who.expires_at is not None and time.time() >= who.expires_at):
            return None
        return who

    def tenant(self, tenant_id: str) -> TenantRow | None:
        return self._tenants.get(tenant_id)

    def budgets(self) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(scope kind, id, name, budget) of every tenant and active key with a budget."""
        out = [("tenant", t.id, t.name, t.budget) for t in self._tenants.values() if t.budget]
        out += [("key", k.id, k.name, k.budget) for k in self._keys.values() if k.budget]
        return out

    def _signing_secret(self, row: KeyRow) -> str | None:
        """The key's secret for SigV4: decrypted on the first load only (secrets never change)."""
        if row.id in self._signing:
            return self._signing[row.id]
        if row.secret_enc is None or self.master_key is None:
            return None
        try:
            return self.master_key.decrypt(row.id, row.secret_enc)
        except ValueError:
            log.warning(
                "key %s: cannot decrypt its secret (another master key?); "
                "it can be used as a bearer token only",
                row.id,
            )
            return None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.reload()
                await self._flush_last_used()
            except Exception:  # keep polling through a transient store failure
                log.exception("key cache refresh failed")

    async def _flush_last_used(self) -> None:
        pending, self._last_used = self._last_used, {}
        await self.store.touch_keys(pending)

    async def authenticate(self, authorization: str | None) -> Principal:
        """The principal for an `Authorization: Bearer …` header value."""
        if not authorization:
            raise AuthenticationFailed(
                "Missing API key: send it as 'Authorization: Bearer <key>'.", code="missing_api_key"
            )
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed(
                "Malformed Authorization header: expected 'Bearer <key>'.", code="invalid_api_key"
            )
        return await self.check_token(token)

    async def check_token(self, token: str) -> Principal:
        parts = keys.split(token)
        row = self._keys.get(parts[0]) if parts is not None else None
        # The token is hashed here only when it is no cached key: one hash per request.
        if (
            row is None
            and self._env_admin is not None
            and hmac.compare_digest(keys.hash_secret(token), self._env_admin)
        ):
            return self._env_principal()
        if parts is not None:
            key_id, secret = parts
            if row is None:
                await self._reload_for_unknown_key()
                row = self._keys.get(key_id)
            if row is not None and keys.matches(secret, row.secret_hash):
                return self._admit(key_id)
        raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")

    @staticmethod
    def _env_principal() -> Principal:
        return Principal(ADMIN_ENV_ID, "admin (CUMULO_ADMIN_KEY)", "admin")

    def _admit(self, key_id: str) -> Principal:
        """The principal of a key whose secret checked out, unless it has expired."""
        who = self._principals[key_id]
        now = time.time()
        if who.expires_at is not None and now >= who.expires_at:
            raise AuthenticationFailed(
                "This API key has expired (it was rotated); use its replacement.",
                code="expired_api_key",
            )
        self._last_used[key_id] = now
        return who

    async def _reload_for_unknown_key(self) -> None:
        """Wait for the shared reload for unknown keys (see the module docstring)."""
        if self._miss_reload is None:
            delay = self._last_miss_reload + self.poll_s - time.monotonic()
            self._miss_reload = asyncio.create_task(self._reload_after(delay))
        await asyncio.shield(self._miss_reload)

    async def _reload_after(self, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        # From here on, a new miss needs a reload that starts after it: the next task.
        self._miss_reload = None
        self._last_miss_reload = time.monotonic()
        await self.reload()

    async def authenticate_sigv4(self, req: sigv4.SignedRequest, service: str) -> Principal:
        """The principal whose key signed `req` with AWS Signature V4 (see `governance.identity.sigv4`)."""
        sig = sigv4.parse(req.header("authorization") or "")
        key_id = sig.key_id.removeprefix(keys.PREFIX)
        row = self._keys.get(key_id)
        if row is None:
            await self._reload_for_unknown_key()
            row = self._keys.get(key_id)
        if row is None:
            raise AuthenticationFailed(
                "The security token included in the request is invalid.", code="invalid_api_key"
            )
        secret = self._signing.get(key_id)
        if secret is None:
            raise AuthenticationFailed(
                "This key predates SigV4 support: send it as 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )
        sigv4.verify(req, sig, secret, service)
        return self._admit(key_id)

    @staticmethod
    def require_admin(principal: Principal) -> None:
        if not principal.is_admin:
            raise PermissionDenied("This endpoint needs an admin key.", code="admin_required")
