"""The `cumulo` group, its global options, and `main()`: the one place errors become a
message and an exit code."""

from __future__ import annotations

import logging
import os
import sys

import click

from cumulo.cli.alerts import alerts, invocations
from cumulo.cli.batch import batch
from cumulo.cli.calls import chat, embed
from cumulo.cli.common import DEFAULT_URL, Ctx
from cumulo.cli.evals import eval_
from cumulo.cli.files import files
from cumulo.cli.finetune import finetune
from cumulo.cli.keys import keys
from cumulo.cli.ledger import ledger
from cumulo.cli.models import models
from cumulo.cli.platform_state import deployments, engine, guardrails
from cumulo.cli.serve import serve
from cumulo.cli.tenants import tenants
from cumulo.cli.tls import tls
from cumulo.cli.usage import usage
from cumulo.cli.worker import worker
from cumulo.errors import CumuloError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="CUMULO_URL",
    default=DEFAULT_URL,
    show_default=True,
    metavar="URL",
    help="Base URL of a running cumulo (env CUMULO_URL).",
)
@click.option(
    "--key",
    envvar="CUMULO_API_KEY",
    default=None,
    metavar="KEY",
    help="API key of the client commands (env CUMULO_API_KEY, else CUMULO_ADMIN_KEY).",
)
@click.version_option(package_name="cumulo")
@click.pass_context
def cli(ctx: click.Context, url: str, key: str | None) -> None:
    """cumulo: a self-hosted AI model platform.

    `serve`, `models build-demo`, `tls` and `ledger` work on this machine; the other
    commands are clients of a running platform at --url, authenticated with --key.
    """
    ctx.obj = Ctx(url, key or os.environ.get("CUMULO_ADMIN_KEY"))


for command in (
    serve,
    worker,
    keys,
    tenants,
    models,
    ledger,
    chat,
    embed,
    files,
    usage,
    alerts,
    invocations,
    guardrails,
    deployments,
    engine,
    tls,
    batch,
    eval_,
    finetune,
):
    cli.add_command(command)


def main() -> None:
    """Entry point: the one place errors become a message and an exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        # Without standalone mode click returns an `Exit`'s code instead of exiting with it.
        code = cli.main(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except CumuloError as exc:
        click.echo(f"cumulo: error: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
