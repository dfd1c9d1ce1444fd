"""`cumulo tenants`: create, list, show, change and delete tenants."""

from __future__ import annotations

from typing import Any

import click

from cumulo.cli.common import (
    Ctx,
    budget,
    budget_options,
    echo_json,
    json_option,
    limit_options,
    limits,
    pass_ctx,
    table,
)

_RETENTION = click.IntRange(1, 3650)


@click.group()
def tenants() -> None:
    """Create, list, show, change and delete tenants (teams)."""


@tenants.command("create")
@click.argument("name")
@limit_options
@budget_options
@click.option(
    "--guardrail", "guardrails", multiple=True, metavar="ID", help="A guardrail (repeatable)."
)
@click.option("--log-invocations", is_flag=True, help="Store its prompts and responses.")
@click.option(
    "--log-retention-days",
    type=_RETENTION,
    metavar="DAYS",
    help="Days its invocation logs are kept [default: 30].",
)
@json_option
@pass_ctx
def tenants_create(
    ctx: Ctx,
    name: str,
    rpm: int | None,
    tpm: int | None,
    concurrency: int | None,
    models: tuple[str, ...],
    budget_usd: float | None,
    budget_period: str | None,
    budget_soft_pct: float | None,
    guardrails: tuple[str, ...],
    log_invocations: bool,
    log_retention_days: int | None,
    as_json: bool,
) -> None:
    """Create a tenant named NAME (needs an admin key)."""
    body: dict[str, Any] = {"name": name, "models": list(models) or None}
    body["limits"] = limits(rpm, tpm, concurrency)
    body["budget"] = budget(budget_usd, budget_period, budget_soft_pct)
    body |= {"guardrails": list(guardrails), "log_invocations": log_invocations}
    body["log_retention_days"] = log_retention_days
    _show(ctx.client().request("POST", "/admin/tenants", json=body), as_json)


@tenants.command("list")
@json_option
@pass_ctx
def tenants_list(ctx: Ctx, as_json: bool) -> None:
    """List tenants (a tenant admin sees its own)."""
    data = ctx.client().request("GET", "/admin/tenants")
    if as_json:
        echo_json(data)
        return
    rows = [
        [t["id"], t["name"], ",".join(t["models"] or ["*"]), ",".join(t["guardrails"]) or "-"]
        for t in data["data"]
    ]
    table(["ID", "NAME", "MODELS", "GUARDRAILS"], rows)


@tenants.command("show")
@click.argument("tenant_id", metavar="ID")
@json_option
@pass_ctx
def tenants_show(ctx: Ctx, tenant_id: str, as_json: bool) -> None:
    """Show tenant ID: its models, limits, budget and guardrails."""
    _show(ctx.client().request("GET", f"/admin/tenants/{tenant_id}"), as_json)


@tenants.command("update")
@click.argument("tenant_id", metavar="ID")
@click.option("--name", metavar="NAME", help="A new name.")
@limit_options
@click.option("--all-models", is_flag=True, help="Allow every model (clears --model).")
@click.option("--no-limits", is_flag=True, help="Remove its limits.")
@budget_options
@click.option("--no-budget", is_flag=True, help="Remove its budget.")
@click.option(
    "--guardrail",
    "guardrails",
    multiple=True,
    metavar="ID",
    help="A guardrail (repeatable; replaces the list).",
)
@click.option("--no-guardrails", is_flag=True, help="Remove its guardrails.")
@click.option(
    "--log-invocations/--no-log-invocations",
    default=None,
    help="Store its prompts and responses, or stop.",
)
@click.option(
    "--log-retention-days",
    type=_RETENTION,
    metavar="DAYS",
    help="Days its invocation logs are kept.",
)
@json_option
@pass_ctx
def tenants_update(
    ctx: Ctx,
    tenant_id: str,
    name: str | None,
    rpm: int | None,
    tpm: int | None,
    concurrency: int | None,
    models: tuple[str, ...],
    all_models: bool,
    no_limits: bool,
    budget_usd: float | None,
    budget_period: str | None,
    budget_soft_pct: float | None,
    no_budget: bool,
    guardrails: tuple[str, ...],
    no_guardrails: bool,
    log_invocations: bool | None,
    log_retention_days: int | None,
    as_json: bool,
) -> None:
    """Change tenant ID (needs an admin key); what is not given stays.

    --rpm, --tpm and --concurrency change only the limit they name; --budget-* only
    that part of the budget.
    """
    budget_given = budget_usd is not None or budget_period or budget_soft_pct is not None
    for clash, flag, other in (
        (all_models and models, "--all-models", "--model"),
        (no_limits and limits(rpm, tpm, concurrency), "--no-limits", "--rpm/--tpm/--concurrency"),
        (no_budget and budget_given, "--no-budget", "--budget-*"),
        (no_guardrails and guardrails, "--no-guardrails", "--guardrail"),
    ):
        if clash:
            raise click.UsageError(f"{flag} and {other} contradict each other")
    client = ctx.client()
    current = client.request("GET", f"/admin/tenants/{tenant_id}")
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if models or all_models:
        changes["models"] = list(models) or None
    given = limits(rpm, tpm, concurrency)
    if given or no_limits:
        changes["limits"] = (
            None if no_limits else {**(current.get("limits") or {}), **(given or {})}
        )
    if no_budget:
        changes["budget"] = None
    elif budget_given:
        changes["budget"] = budget(budget_usd, budget_period, budget_soft_pct, current["budget"])
    if guardrails or no_guardrails:
        changes["guardrails"] = list(guardrails)
    if log_invocations is not None:
        changes["log_invocations"] = log_invocations
    if log_retention_days is not None:
        changes["log_retention_days"] = log_retention_days
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    _show(client.request("PATCH", f"/admin/tenants/{tenant_id}", json=changes), as_json)


@tenants.command("delete")
@click.argument("tenant_id", metavar="ID")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def tenants_delete(ctx: Ctx, tenant_id: str, yes: bool) -> None:
    """Delete tenant ID; its keys stop working at once."""
    if not yes:
        click.confirm(f"Delete tenant {tenant_id} and stop all its keys?", abort=True)
    ctx.client().request("DELETE", f"/admin/tenants/{tenant_id}")
    click.echo(f"deleted {tenant_id}")


def _show(tenant: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(tenant)
        return
    lim = tenant.get("limits") or {}
    bud = tenant.get("budget")
    lines = {
        "id": tenant["id"],
        "name": tenant["name"],
        "models": ",".join(tenant.get("models") or ["*"]),
        "limits": " ".join(f"{k}={v}" for k, v in lim.items() if v is not None) or "-",
        "budget": f"{bud['usd']} USD/{bud['period']} (alert at {bud['soft_pct']:.0%})"
        if bud
        else "-",
        "guardrails": ",".join(tenant.get("guardrails") or []) or "-",
        "log": "on" if tenant.get("log_invocations") else "off",
    }
    for key, value in lines.items():
        click.echo(f"{key + ':':<12}{value}")
