"""`cumulo keys`: create, list, revoke and rotate API keys."""

from __future__ import annotations

import time
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


@click.group()
def keys() -> None:
    """Create, list, rotate and revoke API keys.

    A platform admin manages every key; a tenant admin the keys of its own tenant.
    """


@keys.command("create")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["caller", "tenant_admin", "admin"]),
    default="caller",
    show_default=True,
    help="caller: the model APIs; tenant_admin: its tenant's keys, usage and logs; "
    "admin: the whole platform (no tenant).",
)
@click.option(
    "--tenant",
    "tenant_id",
    metavar="ID",
    help="The key's tenant (a tenant admin's keys land in its own tenant).",
)
@limit_options
@budget_options
@pass_ctx
def keys_create(
    ctx: Ctx,
    name: str,
    role: str,
    tenant_id: str | None,
    rpm: int | None,
    tpm: int | None,
    concurrency: int | None,
    models: tuple[str, ...],
    budget_usd: float | None,
    budget_period: str | None,
    budget_soft_pct: float | None,
) -> None:
    """Create a key named NAME; its secret is printed once.

    The models, limits and budget narrow its tenant's further.
    """
    body: dict[str, Any] = {"name": name, "role": role, "tenant_id": tenant_id}
    body["limits"] = limits(rpm, tpm, concurrency)
    body["models"] = list(models) or None
    body["budget"] = budget(budget_usd, budget_period, budget_soft_pct)
    data = ctx.client().request("POST", "/admin/keys", json=body)
    _show_key(data)


def _show_key(data: dict[str, Any]) -> None:
    click.echo(
        f"id:     {data['id']}\nname:   {data['name']}\nrole:   {data['role']}\n"
        f"tenant: {data.get('tenant_id') or '-'}\nkey:    {data['key']}"
    )
    click.echo("The key is shown once only.", err=True)


@keys.command("rotate")
@click.argument("key_id", metavar="ID")
@click.option(
    "--grace",
    type=click.FloatRange(0, 90 * 86400),
    default=86400.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds the old key keeps working.",
)
@pass_ctx
def keys_rotate(ctx: Ctx, key_id: str, grace: float) -> None:
    """Replace key ID; the old one expires after a grace period."""
    data = ctx.client().request("POST", f"/admin/keys/{key_id}/rotate", json={"grace_s": grace})
    _show_key(data)


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@click.option("--tenant", "tenant_id", metavar="ID", help="Only this tenant's keys.")
@json_option
@pass_ctx
def keys_list(ctx: Ctx, include_revoked: bool, tenant_id: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    params: dict[str, Any] = {"include_revoked": include_revoked}
    if tenant_id:
        params["tenant_id"] = tenant_id
    data = ctx.client().request("GET", "/admin/keys", params=params)
    if as_json:
        echo_json(data)
        return
    rows = [
        [k["id"], k["name"], k["role"], k.get("tenant_id") or "-", _state(k)] for k in data["data"]
    ]
    table(["ID", "NAME", "ROLE", "TENANT", "STATE"], rows)


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
@click.argument("key_id", metavar="ID")
@pass_ctx
def keys_revoke(ctx: Ctx, key_id: str) -> None:
    """Revoke key ID at once."""
    ctx.client().request("DELETE", f"/admin/keys/{key_id}")
    click.echo(f"revoked {key_id}")
