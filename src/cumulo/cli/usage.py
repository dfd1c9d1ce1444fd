"""`cumulo usage`: usage totals of the running platform, per key, model and tenant."""

from __future__ import annotations

from typing import Any

import click

from cumulo.cli.common import Ctx, echo_json, iso, json_option, pass_ctx, table, when

_GROUPS = (("by_key", "KEY"), ("by_model", "MODEL"), ("by_tenant", "TENANT"))
_COLUMNS = ["REQUESTS", "ERRORS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "COST_USD", "AVG_MS"]


@click.command()
@click.option(
    "--since",
    callback=when,
    metavar="WHEN",
    help="Only requests since then: 24h, 7d, 30m ago, a UTC date or time "
    "(2025-01-31, 2025-01-31T12:00) or Unix seconds [default: all time].",
)
@click.option("--tenant", "tenant_id", metavar="ID", help="Only this tenant's requests.")
@json_option
@pass_ctx
def usage(ctx: Ctx, since: float | None, tenant_id: str | None, as_json: bool) -> None:
    """Requests, tokens and cost per key, model and tenant."""
    params: dict[str, Any] = {}
    if since is not None:
        params["since"] = since
    if tenant_id:
        params["tenant_id"] = tenant_id
    data = ctx.client().request("GET", "/admin/usage", params=params)
    if as_json:
        echo_json(data)
        return
    window = f"since {iso(since)}" if since is not None else "all time"
    click.echo(f"usage, {window}" + (f", tenant {tenant_id}" if tenant_id else "") + "\n")
    for group, title in _GROUPS:
        rows = [
            [
                r[group.removeprefix("by_")] or "-",
                r["requests"],
                r["errors"],
                r["prompt_tokens"],
                r["completion_tokens"],
                f"{r.get('cost_usd') or 0:.6f}",
                f"{r['avg_latency_ms'] or 0:.1f}",
            ]
            for r in data.get(group, [])
        ]
        table([title, *_COLUMNS], rows)
        click.echo()
