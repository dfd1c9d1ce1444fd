"""`cumulo alerts` and `cumulo invocations`: what the platform noticed, and what it logged."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from cumulo.cli.common import Ctx, echo_json, iso, json_option, pass_ctx, table, when

_LIMIT = click.IntRange(1, 1000)


def _page_options(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option("--tenant", "tenant_id", metavar="ID", help="Only this tenant's."),
            click.option("--key", "key_id", metavar="ID", help="Only this key's."),
            click.option(
                "--since",
                callback=when,
                metavar="WHEN",
                help="Only since then (24h, 7d, a UTC date or time, or Unix seconds).",
            ),
            click.option(
                "--limit",
                type=_LIMIT,
                default=20,
                show_default=True,
                metavar="N",
                help="At most this many, newest first.",
            ),
            click.option(
                "--before",
                "before_id",
                type=int,
                metavar="ID",
                help="Only those older than this id (the next page).",
            ),
        ]
    ):
        f = option(f)
    return f


def _params(**given: Any) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v is not None}


@click.command()
@_page_options
@click.option("--kind", metavar="KIND", help="Only this kind, e.g. anomaly.request_spike.")
@json_option
@pass_ctx
def alerts(
    ctx: Ctx,
    tenant_id: str | None,
    key_id: str | None,
    since: float | None,
    limit: int,
    before_id: int | None,
    kind: str | None,
    as_json: bool,
) -> None:
    """Anomaly and budget alerts, newest first."""
    params = _params(
        tenant_id=tenant_id, key_id=key_id, since=since, limit=limit, before_id=before_id, kind=kind
    )
    data = ctx.client().request("GET", "/admin/alerts", params=params)
    if as_json:
        echo_json(data)
        return
    rows = [
        [
            a["id"],
            iso(a["ts"]),
            a["severity"],
            a["kind"],
            a.get("key_id") or "-",
            a.get("tenant_id") or "-",
            a["message"],
        ]
        for a in data["data"]
    ]
    table(["ID", "TIME", "SEVERITY", "KIND", "KEY", "TENANT", "MESSAGE"], rows)


@click.command()
@_page_options
@click.option("--model", metavar="NAME", help="Only requests for this model.")
@click.option("--until", callback=when, metavar="WHEN", help="Only until then.")
@pass_ctx
def invocations(
    ctx: Ctx,
    tenant_id: str | None,
    key_id: str | None,
    since: float | None,
    limit: int,
    before_id: int | None,
    model: str | None,
    until: float | None,
) -> None:
    """Logged prompts and responses (JSON lines), newest first.

    Only tenants with log_invocations on are logged.
    """
    params = _params(
        tenant_id=tenant_id,
        key_id=key_id,
        since=since,
        limit=limit,
        before_id=before_id,
        model=model,
        until=until,
    )
    data = ctx.client().request("GET", "/admin/invocations", params=params)
    for entry in data["data"]:
        click.echo(json.dumps(entry))
    if data.get("has_more") and data["data"]:
        click.echo(f"(more: --before {data['data'][-1]['id']})", err=True)
