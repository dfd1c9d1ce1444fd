"""`cumulo keys`: create, list, revoke and rotate API keys."""

from __future__ import annotations

import time
from typing import Any

import click

from cumulo.cli.common import Ctx, limit_options, limits, pass_ctx, table


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (needs an admin key)."""


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
    ctx: Ctx,
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
    body["limits"] = limits(rpm, tpm, concurrency)
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
def keys_rotate(ctx: Ctx, key_id: str, grace: float) -> None:
    """Issue a replacement key; the old one expires after the grace period."""
    data = ctx.client().request("POST", f"/admin/keys/{key_id}/rotate", json={"grace_s": grace})
    _show_key(data)


@keys.command("list")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked keys.")
@pass_ctx
def keys_list(ctx: Ctx, include_revoked: bool) -> None:
    """List keys (never their secrets)."""
    data = ctx.client().request("GET", "/admin/keys", params={"include_revoked": include_revoked})
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
@click.argument("key_id")
@pass_ctx
def keys_revoke(ctx: Ctx, key_id: str) -> None:
    """Revoke a key by id."""
    ctx.client().request("DELETE", f"/admin/keys/{key_id}")
    click.echo(f"revoked {key_id}")
