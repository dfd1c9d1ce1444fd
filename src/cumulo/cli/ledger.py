"""`cumulo ledger`: verify and list the audit ledger straight from the database."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from cumulo.cli.common import table
from cumulo.config import cumulo_home, load_config
from cumulo.errors import ConfigError

if TYPE_CHECKING:
    from cumulo.governance.audit.ledger import Ledger

T = TypeVar("T")


@click.group()
def ledger() -> None:
    """Verify, list and acknowledge the audit ledger.

    No server needed: reads the database of the config (`database_url`, default $CUMULO_HOME/cumulo.db)
    with the platform's master key (CUMULO_MASTER_KEY or $CUMULO_HOME/master.key).
    """


_ledger_config = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CUMULO_CONFIG",
    help="cumulo.yaml (env CUMULO_CONFIG); default: the embedded config.",
)


@ledger.command("verify")
@_ledger_config
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def ledger_verify(config_path: str | None, as_json: bool) -> None:
    """Check every entry; exit 1 naming the first bad one.

    Names the first edited, missing, reordered or truncated entry. Keep the printed head
    (seq and hash) elsewhere to detect a later rollback."""
    result = _with_ledger(config_path, lambda led: led.verify())
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    else:
        click.echo(f"entries checked: {result.checked}")
        if result.head is not None:
            click.echo(f"head: entry {result.head.seq} {result.head.hash}")
    for warning in result.warnings:
        click.echo(f"cumulo: ledger: warning: {warning}", err=True)
    if result.first_bad is not None:
        bad = result.first_bad
        click.echo(
            f"cumulo: ledger: FAILED at entry {bad.seq} ({bad.reason}): {bad.detail}", err=True
        )
        sys.exit(1)
    if not as_json:
        click.echo("ok")


@ledger.command("acknowledge")
@_ledger_config
@click.option(
    "--seq",
    type=click.IntRange(1, 2**63 - 1),
    required=True,
    metavar="N",
    help="The entry `cumulo ledger verify` names: a repair, or where the chain ends.",
)
@click.option(
    "--reason", required=True, metavar="TEXT", help="Why it is accepted; kept in the ledger."
)
def ledger_acknowledge(config_path: str | None, seq: int, reason: str) -> None:
    """Accept a repair, or a checkpoint problem at the chain's end.

    Verify passes again afterwards; recorded as a `ledger.acknowledged` entry by
    cli:<user>."""
    import getpass

    from cumulo.errors import CumuloError
    from cumulo.governance.audit.ledger import NotAcknowledgeable

    actor = f"cli:{getpass.getuser()}"[:64]
    try:
        entry = _with_ledger(config_path, lambda led: led.acknowledge(actor, seq, reason))
    except NotAcknowledgeable as exc:
        raise CumuloError(f"nothing to acknowledge at entry {seq}: {exc}") from exc
    click.echo(f"acknowledged entry {entry.data['seq']} in entry {entry.seq}")


@ledger.command("list")
@_ledger_config
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    metavar="N",
    help="At most this many entries.",
)
@click.option("--tenant", "tenant_id", metavar="ID", help="Only this tenant's entries.")
@click.option("--action", metavar="ACTION", help="Only this action (e.g. key.create).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def ledger_list(
    config_path: str | None, limit: int, tenant_id: str | None, action: str | None, as_json: bool
) -> None:
    """The newest entries, newest first (unverified).

    `cumulo ledger verify` checks them."""
    found = _with_ledger(
        config_path, lambda led: led.entries(limit=limit, tenant_id=tenant_id, action=action)
    )
    if as_json:
        for entry in found:
            click.echo(json.dumps(entry.as_dict()))
        return
    rows = [
        [
            e.seq,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.ts)),
            e.actor or "-",
            e.action,
            e.target or "-",
            e.tenant_id or "-",
        ]
        for e in found
    ]
    table(["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "TENANT"], rows)


def _with_ledger(config_path: str | None, use: Callable[[Ledger], Awaitable[T]]) -> T:
    """Run `use` on the ledger of the configured database, without migrating or creating
    anything: a missing database or master key is an error."""
    from cumulo.config import database_url
    from cumulo.governance.audit.ledger import Ledger
    from cumulo.governance.identity.masterkey import ENV, FILE_NAME, MasterKey
    from cumulo.store.db import Store
    from cumulo.store.url import parse_url

    config = load_config(config_path)
    home = cumulo_home()
    if not os.environ.get(ENV) and not (home / FILE_NAME).is_file():
        raise ConfigError(
            f"no master key: set {ENV}, or CUMULO_HOME to the platform's home "
            f"({home / FILE_NAME} does not exist)"
        )
    url = parse_url(database_url(config, home))
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        raise ConfigError(f"no database at {url.database}: check CUMULO_HOME or database_url")

    async def run() -> T:
        store = Store(url)
        try:
            export = config.ledger.checkpoint_path(home)
            return await use(Ledger(store, MasterKey.load(home), checkpoint_file=export))
        finally:
            await store.close()

    return asyncio.run(run())
