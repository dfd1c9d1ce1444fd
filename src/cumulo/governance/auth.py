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

from cumulo.errors import AuthenticationFailed, PermissionDenied
from cumulo.governance import keys, sigv4
from cumulo.governance.masterkey import MasterKey
from cumulo.store.db import KeyRow, Store

log = logging.getLogger(__name__)

ADMIN_ENV_ID = "admin-env"


@dataclass(slots=True, frozen=True)
class Principal:
    key_id: str
    name: str
    role: keys.Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


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
        self._version: tuple[int, float] | None = None
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

    async def reload(self) -> None:
        async with self._reload_lock:
            version = await self.store.keys_version()
            if version != self._version:
                rows = await self.store.list_keys()
                self._keys = {r.id: r for r in rows}
                self._signing = {r.id: s for r in rows if (s := self._signing_secret(r))}
                self._version = version

    def add(self, row: KeyRow) -> None:
        self._keys[row.id] = row
        if secret := self._signing_secret(row):
            self._signing[row.id] = secret

    def remove(self, key_id: str) -> None:
        self._keys.pop(key_id, None)
        self._signing.pop(key_id, None)

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
            return Principal(ADMIN_ENV_ID, "admin (CUMULO_ADMIN_KEY)", "admin")
        if parts is not None:
            key_id, secret = parts
            if row is None:
                await self._reload_for_unknown_key()
                row = self._keys.get(key_id)
            if row is not None and keys.matches(secret, row.secret_hash):
                self._last_used[key_id] = time.time()
                role: keys.Role = "admin" if row.role == "admin" else "caller"
                return Principal(row.id, row.name, role)
        raise AuthenticationFailed("Incorrect API key provided.", code="invalid_api_key")

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
        """The principal whose key signed `req` with AWS Signature V4 (see `governance.sigv4`)."""
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
        self._last_used[key_id] = time.time()
        role: keys.Role = "admin" if row.role == "admin" else "caller"
        return Principal(row.id, row.name, role)

    @staticmethod
    def require_admin(principal: Principal) -> None:
        if not principal.is_admin:
            raise PermissionDenied("This endpoint needs an admin key.", code="admin_required")
