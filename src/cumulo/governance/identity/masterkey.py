"""The master key: encrypts API-key secrets at rest (AES-256-GCM).

Keys are checked by hash (`governance.identity.keys`), which is all bearer auth needs.
AWS Signature V4 needs the secret itself, to recompute the caller's HMAC, so
each key created since migration 0002 also stores its secret encrypted under
this key (`api_keys.secret_enc`); keys created before can only be used as
bearer tokens.

The master key comes from `CUMULO_MASTER_KEY` (base64 of 32 bytes; every
replica sharing a database needs the same one), else from
`CUMULO_HOME/master.key`, created at first start with mode 0600. Ciphertexts
are bound to their key id (AES-GCM associated data), so a row's secret cannot
be moved to another row. Neither the master key nor a secret is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cumulo.errors import ConfigError

log = logging.getLogger(__name__)

ENV = "CUMULO_MASTER_KEY"
FILE_NAME = "master.key"
_VERSION = "v1."
_NONCE = 12


def _parse(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"{source}: the master key must be base64 of 32 bytes") from exc
    if len(key) != 32:
        raise ConfigError(f"{source}: the master key must be base64 of 32 bytes, not {len(key)}")
    return key


def _load_or_create(path: Path) -> bytes:
    """The key in `path`; created atomically (mode 0600) when missing, even with racing workers."""
    with contextlib.suppress(FileNotFoundError):
        return _parse(path.read_text(), str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, base64.b64encode(os.urandom(32)) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic and never overwrites: the first process to get here wins
        log.info("created the master key %s", path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _parse(path.read_text(), str(path))


class MasterKey:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._aead = AESGCM(key)
        self._key = key

    @classmethod
    def load(cls, home: Path) -> MasterKey:
        """From `CUMULO_MASTER_KEY`, else `home/master.key` (created when missing)."""
        value = os.environ.get(ENV)
        if value:
            return cls(_parse(value, ENV))
        return cls(_load_or_create(home / FILE_NAME))

    def __repr__(self) -> str:
        return "MasterKey(<hidden>)"

    def derive(self, purpose: str) -> bytes:
        """A 32-byte key for `purpose` (HKDF-SHA256): the same on every replica, and
        independent of the encryption key and of every other purpose's."""
        info = b"cumulo:" + purpose.encode()
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self._key)

    def encrypt(self, key_id: str, secret: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, secret.encode(), key_id.encode())
        return _VERSION + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, key_id: str, blob: str) -> str:
        """The secret sealed by `encrypt(key_id, …)`; ValueError if it was not (or another key)."""
        if not blob.startswith(_VERSION):
            raise ValueError("unknown secret encoding")
        try:
            raw = base64.urlsafe_b64decode(blob[len(_VERSION) :])
            opened = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], key_id.encode())
        except (binascii.Error, InvalidTag) as exc:
            raise ValueError("cannot decrypt the secret with this master key") from exc
        return opened.decode()
