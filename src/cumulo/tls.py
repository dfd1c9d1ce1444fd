"""TLS for `cumulo serve`: checking a certificate and key before the server starts, and
making a self-signed pair for local use.

Some clients send credentials over HTTPS only (botocore refuses to send a Bedrock bearer
token, `AWS_BEARER_TOKEN_BEDROCK`, to a plain-HTTP endpoint), so cumulo serves TLS itself
when given a certificate and its key. Certificates come from the `cryptography` package;
the server's TLS is uvicorn's (the standard library's `ssl`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_HOSTS",
    "MAX_DAYS",
    "MAX_FILE_BYTES",
    "SelfSigned",
    "TLSFilesError",
    "check_pair",
    "self_signed",
    "write_pair",
]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
MAX_DAYS = 825  # the longest validity clients accept for a server certificate
MAX_HOSTS = 100
MAX_FILE_BYTES = 1024 * 1024  # a certificate chain is a few KiB


class TLSFilesError(ValueError):
    """A certificate or key that cannot be used; the message names the file, never key bytes.

    `which` is the file at fault (`certfile` or `keyfile`), None when they do not match."""

    def __init__(self, message: str, which: str | None) -> None:
        super().__init__(message)
        self.which = which


@dataclass(frozen=True)
class SelfSigned:
    cert_pem: bytes
    key_pem: bytes
    not_after: dt.datetime


def check_pair(certfile: Path, keyfile: Path) -> None:
    """Raise `TLSFilesError` unless `certfile` and `keyfile` can be read and load as one
    certificate chain and its private key (what the server will do at start)."""
    for which, path in (("certfile", certfile), ("keyfile", keyfile)):
        if path.is_dir():
            raise TLSFilesError(f"{path} is a directory, not a file", which)
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise TLSFilesError(f"cannot read {path}: {exc.strerror or exc}", which) from None
        if not path.is_file():
            raise TLSFilesError(f"{path} is not a regular file", which)
        if path.stat().st_size > MAX_FILE_BYTES:
            raise TLSFilesError(f"{path} is larger than {MAX_FILE_BYTES // 1024} KiB", which)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise TLSFilesError(
            f"{certfile} and {keyfile} are not a PEM certificate and its private key ({reason})",
            None,
        ) from None


def self_signed(hosts: tuple[str, ...] = DEFAULT_HOSTS, days: int = 365) -> SelfSigned:
    """A new P-256 key and a certificate for `hosts` (names or IP addresses) signed by it."""
    if not hosts or len(hosts) > MAX_HOSTS:
        raise ValueError(f"give 1 to {MAX_HOSTS} host names or addresses")
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"days must be 1 to {MAX_DAYS}")
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(_dns_name(host)))
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cumulo (self-signed)"),
            x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64]),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    not_after = now + dt.timedelta(days=days)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # clocks of clients that run behind
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return SelfSigned(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        not_after=not_after,
    )


def write_pair(pair: SelfSigned, certfile: Path, keyfile: Path, *, force: bool = False) -> None:
    """Write the certificate (0644) and the key (0600, created so, never readable by others
    even for a moment). Without `force`, an existing file is an error and nothing is written."""
    if not force:
        for path in (certfile, keyfile):
            if path.exists():
                raise FileExistsError(path)
    certfile.parent.mkdir(parents=True, exist_ok=True)
    keyfile.parent.mkdir(parents=True, exist_ok=True)
    _write(keyfile, pair.key_pem, 0o600)
    _write(certfile, pair.cert_pem, 0o644)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        with os.fdopen(fd, "wb") as out:
            out.write(data)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _dns_name(host: str) -> str:
    labels = host.rstrip(".").split(".")
    valid = all(
        0 < len(label) <= 63
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label.removeprefix("*"))
        and not label.startswith("-")
        for label in labels
    )
    if not valid or len(host) > 253 or any("*" in label for label in labels[1:]):
        raise ValueError(f"not a host name or IP address: {host!r}")
    return host.rstrip(".")
