"""`cumulo tls self-signed`: where it writes, what it prints, and that it never replaces a
pair unless told to."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from cumulo.cli import cli


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["tls", "self-signed", *args])
    return result.exit_code, result.output


def test_it_writes_under_cumulo_home_and_prints_the_serve_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUMULO_HOME", str(tmp_path))
    code, out = run()
    assert code == 0, out
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    assert f"certificate: {cert}" in out and f"key:         {key}" in out
    assert f"serve --tls-certfile {cert} --tls-keyfile {key}" in out
    assert "hosts:       localhost, 127.0.0.1, ::1" in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_text() not in out


def test_it_never_replaces_a_pair_without_force(tmp_path: Path) -> None:
    assert run("--dir", str(tmp_path))[0] == 0
    before = (tmp_path / "key.pem").read_bytes()
    result = CliRunner().invoke(
        cli, ["tls", "self-signed", "--dir", str(tmp_path)], standalone_mode=False
    )
    assert result.exception is not None and "already exists" in str(result.exception)
    assert "--force" in str(result.exception)
    assert (tmp_path / "key.pem").read_bytes() == before
    code, _ = run("--dir", str(tmp_path), "--force", "--host", "gw.internal", "--days", "7")
    assert code == 0 and (tmp_path / "key.pem").read_bytes() != before
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.internal"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--days", "0"), "--days"),
        (("--days", "9999"), "--days"),
        (("--host", "not a host"), "not a host name or IP address"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    code, out = run("--dir", str(tmp_path), *args)
    assert code == 2 and message in out
    assert not (tmp_path / "key.pem").exists()
