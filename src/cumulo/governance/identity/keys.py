"""API keys: `ck-<id>.<secret>`, stored as the SHA-256 of the secret.

The id is visible (it names the key in usage and admin views); the secret is
shown once, at creation, and only its hash is kept. Keys are 256-bit random,
so a fast hash is the right one; comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal, TypeAlias

# admin: the whole platform; tenant_admin: its own tenant's keys and usage; caller: /v1 only.
Role: TypeAlias = Literal["admin", "tenant_admin", "caller"]
ROLES: tuple[Role, ...] = ("admin", "tenant_admin", "caller")
PREFIX = "ck-"


@dataclass(slots=True, frozen=True)
class NewKey:
    id: str
    secret: str

    @property
    def token(self) -> str:
        return f"{PREFIX}{self.id}.{self.secret}"


def generate() -> NewKey:
    return NewKey(id=secrets.token_hex(8), secret=secrets.token_urlsafe(32))


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split(token: str) -> tuple[str, str] | None:
    """(`id`, `secret`) of a well-formed key, else None."""
    if not token.startswith(PREFIX):
        return None
    key_id, dot, secret = token[len(PREFIX) :].partition(".")
    if not dot or not key_id or not secret or len(key_id) > 32:
        return None
    return key_id, secret


def matches(secret: str, secret_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), secret_hash)
