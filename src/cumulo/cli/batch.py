"""`cumulo batch`: batches of the running platform (OpenAI's Batch API)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from cumulo.cli.common import Ctx, echo_json, iso, json_option, pass_ctx, table
from cumulo.client import Client

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
ENDED = ("completed", "failed", "expired", "cancelled")


@click.group()
def batch() -> None:
    """Batches: JSONL requests in, output files out."""


def _counts(b: dict[str, Any]) -> str:
    c = b.get("request_counts") or {}
    return f"{c.get('completed', 0)}/{c.get('total', 0)} done, {c.get('failed', 0)} failed"


def _show(b: dict[str, Any]) -> None:
    rows = [
        ["id", b["id"]],
        ["status", b["status"]],
        ["endpoint", b["endpoint"]],
        ["requests", _counts(b)],
        ["input file", b["input_file_id"]],
        ["output file", b.get("output_file_id") or "-"],
        ["error file", b.get("error_file_id") or "-"],
        ["created", iso(b.get("created_at"))],
        ["expires", iso(b.get("expires_at"))],
    ]
    for row in rows:
        click.echo(f"{row[0] + ':':13} {row[1]}")
    errors = (b.get("errors") or {}).get("data") or []
    for e in errors[:20]:
        click.echo(f"  error: {e.get('message')}")
    if len(errors) > 20:
        click.echo(f"  ... and {len(errors) - 20} more errors")


class Progress:
    """A one-line live progress bar on stderr: done, failed, rate, ETA."""

    WIDTH = 30

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.first: tuple[float, int] | None = None
        self.live = sys.stderr.isatty()

    def line(self, b: dict[str, Any]) -> str:
        c = b.get("request_counts") or {}
        total, ok, failed = c.get("total", 0), c.get("completed", 0), c.get("failed", 0)
        done = ok + failed
        now = time.monotonic()
        if self.first is None and total:
            self.first = (now, done)
        rate = 0.0
        if self.first is not None and now > self.first[0]:
            rate = (done - self.first[1]) / (now - self.first[0])
        filled = int(self.WIDTH * done / total) if total else 0
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        eta = f"{(total - done) / rate:.0f}s" if rate > 0 and total > done else "-"
        return (
            f"[{bar}] {done}/{total} done, {failed} failed, {rate:.1f} lines/s, "
            f"ETA {eta} ({b['status']})"
        )

    def show(self, b: dict[str, Any]) -> None:
        text = self.line(b)
        if self.live:
            click.echo("\r" + text.ljust(100), nl=False, err=True)
        else:
            click.echo(text, err=True)

    def end(self) -> None:
        if self.live:
            click.echo(err=True)


def _download(client: Client, b: dict[str, Any], output: Path | None, errors: Path | None) -> None:
    base = Path(b["id"])
    if b.get("output_file_id"):
        dest = output or base.with_suffix(".output.jsonl")
        with dest.open("wb") as out:
            n = client.download(f"/v1/files/{b['output_file_id']}/content", out)
        click.echo(f"output: {dest} ({n} bytes)")
    if b.get("error_file_id"):
        dest = errors or base.with_suffix(".errors.jsonl")
        with dest.open("wb") as out:
            n = client.download(f"/v1/files/{b['error_file_id']}/content", out)
        click.echo(f"errors: {dest} ({n} bytes)")


@batch.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--endpoint", type=click.Choice(ENDPOINTS), required=True, help="What every line calls."
)
@click.option(
    "--metadata",
    multiple=True,
    metavar="KEY=VALUE",
    help="A metadata pair (repeatable).",
)
@click.option(
    "--concurrency", type=click.IntRange(1, 4096), metavar="N", help="Lines in flight at once."
)
@click.option("--wait", is_flag=True, help="Show progress until it ends, then download results.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --wait: where to write the output file [default: BATCH_ID.output.jsonl].",
)
@click.option(
    "--errors",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --wait: where to write the error file [default: BATCH_ID.errors.jsonl].",
)
@json_option
@pass_ctx
def create(
    ctx: Ctx,
    file: Path,
    endpoint: str,
    metadata: tuple[str, ...],
    concurrency: int | None,
    wait: bool,
    output: Path | None,
    errors: Path | None,
    as_json: bool,
) -> None:
    """Upload FILE (JSONL, one request per line) and run it as a batch."""
    meta: dict[str, str] = {}
    for pair in metadata:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--metadata")
        meta[key] = value
    client = ctx.client()
    with file.open("rb") as local:
        uploaded = client.upload("/v1/files", local, file.name, {"purpose": "batch"})
    body: dict[str, Any] = {
        "input_file_id": uploaded["id"],
        "endpoint": endpoint,
        "completion_window": "24h",
    }
    if meta:
        body["metadata"] = meta
    if concurrency is not None:
        body["concurrency"] = concurrency
    b = client.request("POST", "/v1/batches", json=body)
    if not wait:
        echo_json(b) if as_json else click.echo(b["id"])
        return
    click.echo(f"batch {b['id']} ({uploaded['id']})", err=True)
    progress = Progress()
    while b["status"] not in ENDED:
        progress.show(b)
        time.sleep(1.0)
        b = client.request("GET", f"/v1/batches/{b['id']}")
    progress.show(b)
    progress.end()
    if as_json:
        echo_json(b)
    else:
        _show(b)
    _download(client, b, output, errors)
    if b["status"] != "completed":
        raise click.exceptions.Exit(1)


@batch.command(name="list")
@click.option(
    "--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="At most this many."
)
@json_option
@pass_ctx
def list_(ctx: Ctx, limit: int, as_json: bool) -> None:
    """The batches of your tenant, newest first."""
    data = ctx.client().request("GET", "/v1/batches", params={"limit": limit})
    if as_json:
        echo_json(data)
        return
    rows = [
        [b["id"], b["status"], b["endpoint"], _counts(b), iso(b["created_at"])]
        for b in data["data"]
    ]
    table(["ID", "STATUS", "ENDPOINT", "REQUESTS", "CREATED"], rows)


@batch.command()
@click.argument("batch_id")
@json_option
@pass_ctx
def get(ctx: Ctx, batch_id: str, as_json: bool) -> None:
    """A batch's status, counts and files."""
    b = ctx.client().request("GET", f"/v1/batches/{batch_id}")
    echo_json(b) if as_json else _show(b)


@batch.command()
@click.argument("batch_id")
@json_option
@pass_ctx
def cancel(ctx: Ctx, batch_id: str, as_json: bool) -> None:
    """Cancel a batch and its requests in flight.

    The lines that finished are still delivered in its output and error files.
    """
    b = ctx.client().request("POST", f"/v1/batches/{batch_id}/cancel")
    echo_json(b) if as_json else click.echo(f"{b['id']}: {b['status']}")


@batch.command()
@click.argument("batch_id")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the output file [default: BATCH_ID.output.jsonl].",
)
@click.option(
    "--errors",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the error file [default: BATCH_ID.errors.jsonl].",
)
@pass_ctx
def download(ctx: Ctx, batch_id: str, output: Path | None, errors: Path | None) -> None:
    """Download a finished batch's output and error files."""
    client = ctx.client()
    b = client.request("GET", f"/v1/batches/{batch_id}")
    if not (b.get("output_file_id") or b.get("error_file_id")):
        raise click.ClickException(f"{batch_id} has no results yet ({b['status']})")
    _download(client, b, output, errors)
