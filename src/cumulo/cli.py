"""The `cumulo` command.

`serve`, `models build-demo` and `ledger` work locally (`ledger` reads the database
directly, and exits 1 when the ledger does not verify); every other command is a client
of a running platform (`--url`, default http://127.0.0.1:8080) authenticated
with `--key` or `CUMULO_API_KEY`. Errors become one line on stderr and exit
code 1, in `main()` only.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cumulo.client import Client
from cumulo.config import cumulo_home, demo_model_dir, load_config
from cumulo.errors import ConfigError, CumuloError

if TYPE_CHECKING:
    from cumulo.governance.ledger import Ledger

DEFAULT_URL = "http://127.0.0.1:8080"
T = TypeVar("T")


class _Ctx:
    def __init__(self, url: str, key: str | None) -> None:
        self.url = url
        self.key = key

    def client(self) -> Client:
        return Client(self.url, self.key)


pass_ctx = click.make_pass_decorator(_Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="CUMULO_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Base URL of a running cumulo (env CUMULO_URL).",
)
@click.option(
    "--key",
    envvar="CUMULO_API_KEY",
    default=None,
    help="API key for client commands (env CUMULO_API_KEY).",
)
@click.version_option(package_name="cumulo")
@click.pass_context
def cli(ctx: click.Context, url: str, key: str | None) -> None:
    """cumulo: a self-hosted AI model platform."""
    ctx.obj = _Ctx(url, key or os.environ.get("CUMULO_ADMIN_KEY"))


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CUMULO_CONFIG",
    help="cumulo.yaml (env CUMULO_CONFIG); default: the embedded config.",
)
@click.option("--host", default=None, help="Bind address [default: 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [default: 8080].")
@click.option("--workers", type=int, default=None, help="Worker processes [default: 1].")
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(
    config_path: str | None, host: str | None, port: int | None, workers: int | None, log_level: str
) -> None:
    """Start the platform."""
    import uvicorn

    from cumulo.bootstrap import prepare
    from cumulo.providers.registry import ProviderRegistry

    config = load_config(config_path)
    ProviderRegistry().check(config, config_path or "<default config>")
    home = cumulo_home()
    admin_key = prepare(config, home)
    if admin_key:
        click.echo(
            "Created the first admin key. It is shown once only; keep it safe:\n\n"
            f"    {admin_key}\n\n"
            "Use it as CUMULO_API_KEY for the cumulo CLI, or create tenant keys with "
            "'cumulo keys create NAME'.\n"
        )
    os.environ["CUMULO_HOME"] = str(home)
    if config_path:
        os.environ["CUMULO_CONFIG"] = str(Path(config_path).resolve())
    server = config.server
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["cumulo"] = {
        "handlers": ["default"],
        "level": log_level.upper(),
        "propagate": False,
    }
    uvicorn.run(
        "cumulo.app:create_app_from_env",
        factory=True,
        host=host or server.host,
        port=server.port if port is None else port,
        workers=workers or server.workers,
        loop="uvloop",
        http="httptools",
        access_log=server.access_log,
        log_level=log_level,
        log_config=log_config,
        timeout_graceful_shutdown=30,
        server_header=False,  # no `server: uvicorn`: what it runs on is nobody's business
        # Forwarded headers only from proxies the config names (reading them costs ~2%).
        proxy_headers=bool(server.forwarded_allow_ips),
        forwarded_allow_ips=server.forwarded_allow_ips or None,
    )


# -- keys -------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Create, list and revoke API keys (needs an admin key)."""


def _limits(rpm: int | None, tpm: int | None, concurrency: int | None) -> dict[str, int] | None:
    given = {"rpm": rpm, "tpm": tpm, "concurrency": concurrency}
    return {k: v for k, v in given.items() if v is not None} or None


_limit_options = [
    click.option("--rpm", type=int, help="Requests per minute."),
    click.option("--tpm", type=int, help="Tokens per minute."),
    click.option("--concurrency", type=int, help="Requests at once."),
    click.option("--model", "models", multiple=True, help="A model it may use (repeatable)."),
]


def limit_options(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_limit_options):
        f = option(f)
    return f


@keys.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["caller", "tenant_admin", "admin"]),
    default="caller",
    show_default=True,
)
@click.option("--tenant", "tenant_id", help="The key's tenant (id).")
@limit_options
@pass_ctx
def keys_create(
    ctx: _Ctx,
    name: str,
    role: str,
    tenant_id: str | None,
    rpm: int | None,
    tpm: int | None,
    concurrency: int | None,
    models: tuple[str, ...],
) -> None:
    """Create a key; its secret is printed once."""
    body: dict[str, Any] = {"name": name, "role": role, "tenant_id": tenant_id}
    body["limits"] = _limits(rpm, tpm, concurrency)
    body["models"] = list(models) or None
    data = ctx.client().request("POST", "/admin/keys", json=body)
    _show_key(data)


def _show_key(data: dict[str, Any]) -> None:
    click.echo(
        f"id:     {data['id']}\nname:   {data['name']}\nrole:   {data['role']}\n"
        f"tenant: {data.get('tenant_id') or '-'}\nkey:    {data['key']}"
    )
    click.echo("The key is shown once only.", err=True)


@keys.command("rotate")
@click.argument("key_id")
@click.option("--grace", type=float, default=86400.0, show_default=True,
              help="Seconds the old key keeps working.")  # fmt: skip
@pass_ctx
def keys_rotate(ctx: _Ctx, key_id: str, grace: float) -> None:
    """Issue a replacement key; the old one expires after the grace period."""
    data = ctx.client().request("POST", f"/admin/keys/{key_id}/rotate", json={"grace_s": grace})
    _show_key(data)


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@pass_ctx
def keys_list(ctx: _Ctx, include_revoked: bool) -> None:
    """List keys (never their secrets)."""
    data = ctx.client().request("GET", "/admin/keys", params={"include_revoked": include_revoked})
    rows = [
        [k["id"], k["name"], k["role"], k.get("tenant_id") or "-", _state(k)] for k in data["data"]
    ]
    _table(["ID", "NAME", "ROLE", "TENANT", "STATE"], rows)


def _state(key: dict[str, Any]) -> str:
    if key["revoked_at"]:
        return "revoked"
    expires = key.get("expires_at")
    if expires is not None:
        return (
            "expired"
            if expires <= time.time()
            else "expires " + time.strftime("%Y-%m-%d %H:%M", time.gmtime(expires))
        )
    return "active"


@keys.command("revoke")
@click.argument("key_id")
@pass_ctx
def keys_revoke(ctx: _Ctx, key_id: str) -> None:
    """Revoke a key by id."""
    ctx.client().request("DELETE", f"/admin/keys/{key_id}")
    click.echo(f"revoked {key_id}")


# -- tenants ------------------------------------------------------------------------


@cli.group()
def tenants() -> None:
    """Create and list tenants (needs an admin key)."""


@tenants.command("create")
@click.argument("name")
@limit_options
@click.option("--budget-usd", type=float, help="Budget in USD per period.")
@click.option("--budget-period", type=click.Choice(["day", "month"]), default="month",
              show_default=True)  # fmt: skip
@click.option("--guardrail", "guardrails", multiple=True, help="A guardrail id (repeatable).")
@click.option("--log-invocations", is_flag=True, help="Store its prompts and responses.")
@pass_ctx
def tenants_create(
    ctx: _Ctx,
    name: str,
    rpm: int | None,
    tpm: int | None,
    concurrency: int | None,
    models: tuple[str, ...],
    budget_usd: float | None,
    budget_period: str,
    guardrails: tuple[str, ...],
    log_invocations: bool,
) -> None:
    """Create a tenant."""
    body: dict[str, Any] = {"name": name, "models": list(models) or None}
    body["limits"] = _limits(rpm, tpm, concurrency)
    if budget_usd is not None:
        body["budget"] = {"usd": budget_usd, "period": budget_period}
    body |= {"guardrails": list(guardrails), "log_invocations": log_invocations}
    data = ctx.client().request("POST", "/admin/tenants", json=body)
    click.echo(f"id:   {data['id']}\nname: {data['name']}")


@tenants.command("list")
@pass_ctx
def tenants_list(ctx: _Ctx) -> None:
    """List tenants."""
    data = ctx.client().request("GET", "/admin/tenants")
    rows = [
        [t["id"], t["name"], ",".join(t["models"] or ["*"]), ",".join(t["guardrails"]) or "-"]
        for t in data["data"]
    ]
    _table(["ID", "NAME", "MODELS", "GUARDRAILS"], rows)


# -- models -------------------------------------------------------------------------


@cli.group()
def models() -> None:
    """List models; build the demo model."""


@models.command("list")
@pass_ctx
def models_list(ctx: _Ctx) -> None:
    """Models the running platform serves."""
    data = ctx.client().request("GET", "/v1/models")
    rows = []
    for m in data["data"]:
        notes = [
            n
            for n, on in (
                ("UNTRAINED: random weights", m.get("untrained")),
                ("loading", not m.get("ready", True)),
            )
            if on
        ]
        rows.append(
            [m["id"], m.get("kind", ""), ",".join(m.get("providers", [])), "; ".join(notes)]
        )
    _table(["MODEL", "KIND", "PROVIDERS", "NOTES"], rows)


@models.command("build-demo")
@click.option(
    "--path",
    type=click.Path(file_okay=False),
    default=None,
    help="Target directory [default: $CUMULO_HOME/models/demo-tiny].",
)
@click.option("--seed", type=int, default=0, show_default=True)
def models_build_demo(path: str | None, seed: int) -> None:
    """Build the tiny untrained demo chat model offline."""
    from cumulo.engine.demo import build_demo_model

    target = build_demo_model(Path(path) if path else demo_model_dir(), seed=seed)
    click.echo(f"built {target} (untrained: random weights, for trying the platform only)")


# -- ledger (offline, straight from the database) -----------------------------------


@cli.group()
def ledger() -> None:
    """Verify, list and acknowledge repairs of the audit ledger, from the database (no
    server needed).

    Reads the database of the config (`database_url`, default $CUMULO_HOME/cumulo.db)
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
    """Check every entry; exit 1 naming the first edited, missing, reordered or truncated
    one. Keep the printed head (seq and hash) elsewhere to detect a later rollback."""
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
    help="The entry `cumulo ledger verify` names: a repair, or where the chain ends.",
)
@click.option("--reason", required=True, help="Why it is accepted; kept in the ledger.")
def ledger_acknowledge(config_path: str | None, seq: int, reason: str) -> None:
    """Accept a repair of the chain (or a checkpoint problem at its end), so that verify
    passes again; recorded as a `ledger.acknowledged` entry by cli:<user>."""
    import getpass

    from cumulo.governance.ledger import NotAcknowledgeable

    actor = f"cli:{getpass.getuser()}"[:64]
    try:
        entry = _with_ledger(config_path, lambda led: led.acknowledge(actor, seq, reason))
    except NotAcknowledgeable as exc:
        raise CumuloError(f"nothing to acknowledge at entry {seq}: {exc}") from exc
    click.echo(f"acknowledged entry {entry.data['seq']} in entry {entry.seq}")


@ledger.command("list")
@_ledger_config
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
@click.option("--tenant", "tenant_id", default=None, help="Only this tenant's entries.")
@click.option("--action", default=None, help="Only this action (e.g. key.create).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def ledger_list(
    config_path: str | None, limit: int, tenant_id: str | None, action: str | None, as_json: bool
) -> None:
    """The newest entries, newest first (not verified: see `cumulo ledger verify`)."""
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
    _table(["SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "TENANT"], rows)


def _with_ledger(config_path: str | None, use: Callable[[Ledger], Awaitable[T]]) -> T:
    """Run `use` on the ledger of the configured database, without migrating or creating
    anything: a missing database or master key is an error."""
    from cumulo.config import database_url
    from cumulo.governance.ledger import Ledger
    from cumulo.governance.masterkey import ENV, FILE_NAME, MasterKey
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


# -- chat, embed, usage -------------------------------------------------------------


@cli.command()
@click.argument("model")
@click.argument("prompt", required=False)
@click.option("--system", default=None, help="A system prompt.")
@click.option("--max-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@pass_ctx
def chat(
    ctx: _Ctx,
    model: str,
    prompt: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
) -> None:
    """Send PROMPT (or stdin) to MODEL and stream the reply."""
    if prompt is None:
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.UsageError("empty prompt")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    body: dict[str, Any] = {"model": model, "messages": messages}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    for piece in ctx.client().stream_chat(body):
        click.echo(piece, nl=False)
    click.echo()


@cli.command()
@click.argument("model")
@click.argument("texts", nargs=-1, required=True)
@pass_ctx
def embed(ctx: _Ctx, model: str, texts: tuple[str, ...]) -> None:
    """Print embeddings of TEXTS as JSON lines."""
    data = ctx.client().request(
        "POST", "/v1/embeddings", json={"model": model, "input": list(texts)}
    )
    for item in data["data"]:
        click.echo(json.dumps(item["embedding"]))


@cli.command()
@pass_ctx
def usage(ctx: _Ctx) -> None:
    """Usage totals per key and per model."""
    data = ctx.client().request("GET", "/admin/usage")
    for group, title in (("by_key", "KEY"), ("by_model", "MODEL")):
        rows = [
            [
                r[group.removeprefix("by_")] or "-",
                r["requests"],
                r["errors"],
                r["prompt_tokens"],
                r["completion_tokens"],
                f"{r['avg_latency_ms'] or 0:.1f}",
            ]
            for r in data[group]
        ]
        _table([title, "REQUESTS", "ERRORS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "AVG_MS"], rows)
        click.echo()


def _table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def main() -> None:
    """Entry point: the one place errors become a message and an exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        cli.main(standalone_mode=False)
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
