"""`cumulo usage`: usage totals of the running platform."""

from __future__ import annotations

import click

from cumulo.cli.common import Ctx, pass_ctx, table


@click.command()
@pass_ctx
def usage(ctx: Ctx) -> None:
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
        table([title, "REQUESTS", "ERRORS", "PROMPT_TOKENS", "COMPLETION_TOKENS", "AVG_MS"], rows)
        click.echo()
