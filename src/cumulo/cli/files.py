"""`cumulo files`: upload, list, show, download and delete files (the /v1/files API)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from cumulo.cli.common import Ctx, echo_json, iso, json_option, pass_ctx, table
from cumulo.files import PURPOSES, UPLOAD_PURPOSES


@click.group()
def files() -> None:
    """Upload, list, download and delete files.

    Each key sees the files of its own tenant. Files feed batches, evaluations and fine-tuning; cumulo writes their results as files.
    """


def _show(data: dict[str, Any]) -> None:
    for name in ("id", "filename", "purpose", "bytes", "status"):
        click.echo(f"{name + ':':10}{data[name]}")
    click.echo(f"{'created:':10}{iso(data['created_at'])}")


@files.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--purpose",
    type=click.Choice(UPLOAD_PURPOSES),
    default="batch",
    show_default=True,
    help="What the file is for.",
)
@click.option("--name", "filename", metavar="NAME", help="The file's name [default: PATH's].")
@json_option
@pass_ctx
def files_upload(ctx: Ctx, path: Path, purpose: str, filename: str | None, as_json: bool) -> None:
    """Upload the file at PATH.

    It is streamed, never read whole into memory.
    """
    with path.open("rb") as local:
        data = ctx.client().upload("/v1/files", local, filename or path.name, {"purpose": purpose})
    echo_json(data) if as_json else _show(data)


@files.command("list")
@click.option("--purpose", type=click.Choice(PURPOSES), help="Only files with this purpose.")
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=100,
    show_default=True,
    help="Files to show, newest first.",
)
@click.option("--after", metavar="ID", help="Files after this one (the next page).")
@json_option
@pass_ctx
def files_list(ctx: Ctx, purpose: str | None, limit: int, after: str | None, as_json: bool) -> None:
    """List files, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if purpose:
        params["purpose"] = purpose
    if after:
        params["after"] = after
    data = ctx.client().request("GET", "/v1/files", params=params)
    if as_json:
        echo_json(data)
        return
    rows = [
        [f["id"], f["purpose"], f["bytes"], iso(f["created_at"]), f["filename"]]
        for f in data["data"]
    ]
    table(["ID", "PURPOSE", "BYTES", "CREATED", "FILENAME"], rows)
    if data["has_more"]:
        click.echo(f"more: --after {data['last_id']}", err=True)


@files.command("get")
@click.argument("file_id", metavar="ID")
@json_option
@pass_ctx
def files_get(ctx: Ctx, file_id: str, as_json: bool) -> None:
    """Show file ID."""
    data = ctx.client().request("GET", f"/v1/files/{file_id}")
    echo_json(data) if as_json else _show(data)


@files.command("download")
@click.argument("file_id", metavar="ID")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Write to PATH [default: standard output].",
)
@pass_ctx
def files_download(ctx: Ctx, file_id: str, output: Path | None) -> None:
    """Write the contents of file ID to a file or stdout.

    The contents are streamed; with -o they appear at PATH once complete.
    """
    client = ctx.client()
    if output is None:
        client.download(f"/v1/files/{file_id}/content", sys.stdout.buffer)
        return
    partial = output.with_name(output.name + ".part")
    try:
        with partial.open("wb") as out:
            written = client.download(f"/v1/files/{file_id}/content", out)
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)
    click.echo(f"{output}: {written} bytes", err=True)


@files.command("rm")
@click.argument("file_ids", metavar="ID...", nargs=-1, required=True)
@pass_ctx
def files_rm(ctx: Ctx, file_ids: tuple[str, ...]) -> None:
    """Delete files.

    Their contents are removed once no other file holds the same bytes.
    """
    client = ctx.client()
    for file_id in file_ids:
        client.request("DELETE", f"/v1/files/{file_id}")
        click.echo(f"deleted {file_id}")
