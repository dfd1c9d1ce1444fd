"""`cumulo tls`: certificates for serving HTTPS."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from cumulo import tls as certificates
from cumulo.cli.common import this_program
from cumulo.config import cumulo_home
from cumulo.errors import CumuloError

CERT_NAME, KEY_NAME = "cert.pem", "key.pem"


@click.group()
def tls() -> None:
    """Certificates for serving HTTPS (`cumulo serve --tls-certfile`)."""


@tls.command("self-signed")
@click.option(
    "--dir",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Where to write cert.pem and key.pem [default: $CUMULO_HOME/tls].",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME|IP",
    help="A host name or IP address clients use to reach the server (repeatable) "
    f"[default: {', '.join(certificates.DEFAULT_HOSTS)}].",
)
@click.option(
    "--days",
    type=click.IntRange(1, certificates.MAX_DAYS),
    default=365,
    show_default=True,
    metavar="N",
    help=f"Days the certificate is valid (1 to {certificates.MAX_DAYS}).",
)
@click.option("--force", is_flag=True, help="Replace an existing cert.pem and key.pem.")
def self_signed(out_dir: Path | None, hosts: tuple[str, ...], days: int, force: bool) -> None:
    """Create a self-signed certificate and key for local HTTPS.

    Clients trust it only when told to (boto3's `verify=`, `AWS_CA_BUNDLE`, `SSL_CERT_FILE`).
    The key file is readable by its owner only. For other machines, use a certificate from
    your own certificate authority instead."""
    directory = (out_dir or cumulo_home() / "tls").expanduser().absolute()
    certfile, keyfile = directory / CERT_NAME, directory / KEY_NAME
    try:
        pair = certificates.self_signed(hosts or certificates.DEFAULT_HOSTS, days)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--host'") from None
    try:
        certificates.write_pair(pair, certfile, keyfile, force=force)
    except FileExistsError as exc:
        raise CumuloError(
            f"{exc.args[0]} already exists: keep it, or give --force to replace it"
        ) from None
    except OSError as exc:
        raise CumuloError(
            f"cannot write {exc.filename or directory}: {exc.strerror or exc}"
        ) from None
    click.echo(
        f"certificate: {certfile}  (valid until {pair.not_after:%Y-%m-%d}; give it to clients)"
    )
    click.echo(f"key:         {keyfile}  (mode 0600; keep it on the server)")
    click.echo(f"hosts:       {', '.join(dict.fromkeys(hosts or certificates.DEFAULT_HOSTS))}")
    click.echo("\nServe HTTPS with:\n")
    click.echo(
        f"    {this_program()} serve --tls-certfile {shlex.quote(str(certfile))} "
        f"--tls-keyfile {shlex.quote(str(keyfile))}"
    )
