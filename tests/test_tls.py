"""Self-signed pairs and the check of a certificate and key before the server starts."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from cumulo import tls


def write(tmp_path: Path, pair: tls.SelfSigned) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    tls.write_pair(pair, cert, key)
    return cert, key


def test_a_self_signed_pair_names_its_hosts_and_expires(tmp_path: Path) -> None:
    pair = tls.self_signed(("localhost", "127.0.0.1", "::1", "gw.internal"), days=30)
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "gw.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    days = (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).days
    assert 29 <= days <= 30
    assert cert.issuer == cert.subject
    tls.check_pair(*write(tmp_path, pair))


def test_a_client_trusting_the_certificate_completes_a_handshake(tmp_path: Path) -> None:
    cert, key = write(tmp_path, tls.self_signed())
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))  # the host name is checked too
    names = ["localhost", "127.0.0.1", "not-in-the-certificate"]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def accept() -> None:
            for _ in names:
                conn, _ = listener.accept()
                with (
                    contextlib.suppress(ssl.SSLError, OSError),
                    server_ctx.wrap_socket(conn, server_side=True) as tls_conn,
                ):
                    tls_conn.recv(1)

        thread = threading.Thread(target=accept)
        thread.start()
        for name in names[:2]:
            with (
                socket.create_connection(("127.0.0.1", port)) as raw,
                client_ctx.wrap_socket(raw, server_hostname=name) as conn,
            ):
                conn.sendall(b"x")
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            pytest.raises(ssl.SSLCertVerificationError, match="mismatch"),
        ):
            client_ctx.wrap_socket(raw, server_hostname=names[2])
        thread.join(10)


@pytest.mark.parametrize(
    ("hosts", "days"),
    [
        ((), 365),
        (("a b",), 365),
        (("-x.com",), 365),
        (("localhost",), 0),
        (("localhost",), 826),
        (tuple(f"h{i}" for i in range(101)), 365),
    ],
)
def test_bounds(hosts: tuple[str, ...], days: int) -> None:
    with pytest.raises(ValueError):
        tls.self_signed(hosts, days)


def test_the_key_is_written_for_its_owner_only_and_never_overwritten(tmp_path: Path) -> None:
    cert, key = write(tmp_path, tls.self_signed())
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    before = key.read_bytes()
    with pytest.raises(FileExistsError):
        tls.write_pair(tls.self_signed(), cert, key)
    assert key.read_bytes() == before
    tls.write_pair(tls.self_signed(), cert, key, force=True)
    assert key.read_bytes() != before and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_check_pair_names_the_file_at_fault(tmp_path: Path) -> None:
    cert, key = write(tmp_path, tls.self_signed())
    with pytest.raises(tls.TLSFilesError, match=r"cannot read .*missing\.pem") as missing:
        tls.check_pair(cert, tmp_path / "missing.pem")
    assert missing.value.which == "keyfile"
    with pytest.raises(tls.TLSFilesError, match="is a directory") as directory:
        tls.check_pair(tmp_path, key)
    assert directory.value.which == "certfile"
    with pytest.raises(tls.TLSFilesError, match="is not a regular file"):
        tls.check_pair(cert, Path("/dev/zero"))  # would be read for ever
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * (tls.MAX_FILE_BYTES + 1))
    with pytest.raises(tls.TLSFilesError, match="is larger than 1024 KiB"):
        tls.check_pair(big, key)
    other_cert, _ = write(tmp_path / "other", tls.self_signed())
    with pytest.raises(tls.TLSFilesError, match="not a PEM certificate and its private key") as odd:
        tls.check_pair(other_cert, key)  # a key that is not this certificate's
    assert odd.value.which is None
    assert key.read_text() not in str(odd.value)
