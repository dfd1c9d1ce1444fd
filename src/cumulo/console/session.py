"""Console sign-in: a session per sign-in, a signed cookie, a CSRF token per session.

Signing in with a cumulo key opens a session: a random id, signed (itsdangerous, with a
key derived from the master key, the same on every replica) into an HttpOnly,
SameSite=Strict cookie, Secure when the console is served over HTTPS. The database
keeps the id's SHA-256 with its key and expiry (`store.sessions`); signing out revokes
that row, so a copied cookie dies with it. The key itself is never stored in the
cookie or anywhere else: each request looks its key up again (`Authenticator.principal`),
so a revoked or expired key ends its sessions too.

Every state-changing request carries the session's CSRF token (an HMAC of its id) in a
form field or the `X-CSRF-Token` header. The sign-in form itself, before any session,
uses a double-submit token (a random value in a short-lived cookie and in the form).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from cumulo.governance.identity.masterkey import MasterKey
from cumulo.store import sessions as sql
from cumulo.store.db import Store

COOKIE = "cumulo_session"
SIGNIN_COOKIE = "cumulo_signin"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
TTL_S = 8 * 3600  # a session lasts a working day at most
SIGNIN_TTL_S = 30 * 60  # the sign-in form's token


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    key_id: str
    expires_at: float


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class Sessions:
    def __init__(self, store: Store, master_key: MasterKey, ttl_s: float = TTL_S) -> None:
        secret = master_key.derive("console-session")
        self._csrf_key = master_key.derive("console-csrf")
        self._signer = URLSafeTimedSerializer(secret, salt="cumulo-console")
        self.store = store
        self.ttl_s = ttl_s
        self._next_purge = 0.0

    async def open(self, key_id: str) -> tuple[Session, str]:
        """A new session for `key_id` and its cookie value."""
        now = time.time()
        if now >= self._next_purge:  # sessions long dead leave the table now and then
            self._next_purge = now + 3600
            await sql.purge(self.store, now - 86400)
        session_id = secrets.token_urlsafe(32)
        session = Session(session_id, key_id, now + self.ttl_s)
        await sql.add(self.store, _digest(session_id), key_id, session.expires_at)
        return session, self._signer.dumps(session_id)

    async def resolve(self, cookie: str | None) -> Session | None:
        """The live session a cookie names, else None (bad signature, expired, revoked)."""
        if not cookie or len(cookie) > 512:
            return None
        try:
            session_id = self._signer.loads(cookie, max_age=int(self.ttl_s))
        except BadSignature:
            return None
        if not isinstance(session_id, str):
            return None
        found = await sql.live(self.store, _digest(session_id))
        if found is None:
            return None
        return Session(session_id, found[0], found[1])

    async def close(self, session: Session) -> None:
        """Sign out: the session is revoked for every copy of its cookie."""
        await sql.revoke(self.store, _digest(session.id))

    def csrf(self, session: Session) -> str:
        """The CSRF token of a session (the same for its whole life)."""
        return hmac.new(self._csrf_key, session.id.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf(session), token or "")

    # -- the sign-in form, before any session ---------------------------------------

    def signin_token(self) -> tuple[str, str]:
        """(cookie value, form value) of a double-submit token for the sign-in form."""
        nonce = secrets.token_urlsafe(24)
        return self._signer.dumps(nonce, salt="cumulo-console-signin"), nonce

    def signin_ok(self, cookie: str | None, form_value: str | None) -> bool:
        if not cookie or not form_value or len(cookie) > 512:
            return False
        try:
            nonce = self._signer.loads(cookie, max_age=SIGNIN_TTL_S, salt="cumulo-console-signin")
        except BadSignature:
            return False
        return isinstance(nonce, str) and hmac.compare_digest(nonce, form_value)
