"""`cumulo tenants`: create and list tenants."""

from __future__ import annotations

from typing import Any

import click

from cumulo.cli.common import Ctx, limit_options, limits, pass_ctx, table


@click.group()
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
    ctx: Ctx,
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
    body["limits"] = limits(rpm, tpm, concurrency)
    if budget_usd is not None:
        body["budget"] = {"usd": budget_usd, "period": budget_period}
    body |= {"guardrails": list(guardrails), "log_invocations": log_invocations}
    data = ctx.client().request("POST", "/admin/tenants", json=body)
    click.echo(f"id:   {data['id']}\nname: {data['name']}")


@tenants.command("list")
@pass_ctx
def tenants_list(ctx: Ctx) -> None:
    """List tenants."""
    data = ctx.client().request("GET", "/admin/tenants")
    rows = [
        [t["id"], t["name"], ",".join(t["models"] or ["*"]), ",".join(t["guardrails"]) or "-"]
        for t in data["data"]
    ]
    table(["ID", "NAME", "MODELS", "GUARDRAILS"], rows)
