"""`cumulo ledger`: verify and list the audit ledger straight from the database."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

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


@ledger.command("lineage")
@click.argument("model")
@_ledger_config
def ledger_lineage(model: str, config_path: str | None) -> None:
    """The lineage of a fine-tuned MODEL, its files checked.

    Training file SHA-256 -> job (base model and its weights' SHA-256, hyperparameters,
    data checks) -> adapter SHA-256 -> model name -> exports, from the ledger; the
    training file (in a local file store), the base's weights and the adapter are hashed
    again when they are still on this machine (the base's hash is cached while its weight
    files keep their sizes and times). Exit 1 if a hash differs."""
    from cumulo.files.blobs import LocalBlobs
    from cumulo.jobs.finetune.hashes import cache_file, sha256_of_dir, weights_sha256
    from cumulo.jobs.finetune.kind import job_dir

    async def find(led: Ledger) -> tuple[Any, Any, list[Any]]:
        finished = await led.entries(limit=10_000, action="fine_tuning.finished")
        done = next((e for e in finished if e.data.get("fine_tuned_model") == model), None)
        if done is None:
            return None, None, []
        created = await led.entries(limit=10_000, action="fine_tuning.created")
        exported = await led.entries(limit=10_000, action="fine_tuning.exported")
        exports = [e for e in exported if e.target == done.target]
        return done, next((e for e in created if e.target == done.target), None), exports

    done, created, exports = _with_ledger(config_path, find)
    if done is None:
        raise click.ClickException(f"no fine-tuning job on the ledger made {model!r}")
    d, home = done.data, cumulo_home()
    bad = False

    def check(label: str, recorded: str | None, path: Path, hasher: Callable[[Path], str]) -> str:
        nonlocal bad
        if not recorded or not path.exists():
            return "not on this machine"
        if hasher(path) == recorded:
            return "verified"
        bad = True
        return "MISMATCH"

    def file_hash(path: Path) -> str:
        import hashlib

        return hashlib.sha256(path.read_bytes()).hexdigest()

    blobs = LocalBlobs(home / "files")
    train_sha = d.get("training_sha256")
    train_state = (
        check("training file", train_sha, blobs.path(train_sha), file_hash)
        if train_sha
        else "not recorded"
    )
    base_sha = d.get("base_sha256")
    base_state = (
        check(
            "base model",
            base_sha,
            Path(d.get("base_path") or "/nonexistent"),
            lambda p: weights_sha256(p, cache_file(home)),
        )
        if base_sha
        else "not recorded"
    )
    adapter = job_dir(home, str(done.target)) / "adapter"
    adapter_state = check("adapter", d.get("adapter_sha256"), adapter, sha256_of_dir)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(done.ts))
    click.echo(f"training file  {d.get('training_file')} sha256 {train_sha} ({train_state})")
    if d.get("trained_sha256") and d.get("trained_sha256") != train_sha:
        click.echo(f"  checked copy {d.get('trained_file')} sha256 {d.get('trained_sha256')}")
    if d.get("data_checks"):
        click.echo(f"  data checks  {json.dumps(d['data_checks'], sort_keys=True)}")
    click.echo(f"job            {done.target} (ledger entry {done.seq}, {when})")
    if created is not None:
        click.echo(f"  created by   {created.actor} (ledger entry {created.seq})")
    click.echo(f"  base model   {d.get('base_model')} sha256 {base_sha} ({base_state})")
    click.echo(f"  hyperparams  {json.dumps(d.get('hyperparameters'), sort_keys=True)}")
    click.echo(f"adapter        sha256 {d.get('adapter_sha256')} ({adapter_state})")
    click.echo(f"model          {d.get('fine_tuned_model')}")
    for e in reversed(exports):  # oldest first
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.ts))
        what = e.data.get("model") if e.data.get("model") != model else ""
        click.echo(
            f"export         {e.data.get('format')} sha256 {e.data.get('sha256')} "
            f"by {e.actor} {at} (ledger entry {e.seq}){' ' + what if what else ''}"
        )
    if bad:
        sys.exit(1)


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
