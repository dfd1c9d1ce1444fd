"""`cumulo finetune`: fine-tuning jobs of the running platform (OpenAI's fine-tuning API)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from cumulo.cli.common import Ctx, echo_json, iso, json_option, pass_ctx, table
from cumulo.client import Client

ENDED = ("succeeded", "failed", "cancelled")
JOBS = "/v1/fine_tuning/jobs"


@click.group()
def finetune() -> None:
    """Fine-tuning jobs (LoRA on local models), served at once."""


def _show(j: dict[str, Any]) -> None:
    rows = [
        ["id", j["id"]],
        ["status", j["status"]],
        ["base model", j["model"]],
        ["tuned model", j.get("fine_tuned_model") or "-"],
        ["training file", j["training_file"]],
        ["epochs", (j.get("hyperparameters") or {}).get("n_epochs")],
        ["trained tokens", j.get("trained_tokens") or "-"],
        ["created", iso(j.get("created_at"))],
        ["finished", iso(j.get("finished_at"))],
    ]
    for row in rows:
        click.echo(f"{row[0] + ':':16} {row[1]}")
    if j.get("error"):
        click.echo(f"  error: {j['error'].get('message')}")


def _latest_step(client: Client, job_id: str) -> dict[str, Any] | None:
    events = client.request("GET", f"{JOBS}/{job_id}/events", params={"limit": 20})
    for e in events["data"]:
        data = e.get("data")
        if e.get("type") == "metrics" and isinstance(data, dict) and data.get("type") == "metrics":
            return data
    return None


class Progress:
    """A one-line live bar on stderr: step, training loss, ETA."""

    WIDTH = 30

    def __init__(self) -> None:
        self.first: tuple[float, int] | None = None
        self.live = sys.stderr.isatty()

    def line(self, j: dict[str, Any], m: dict[str, Any] | None) -> str:
        if m is None:
            return f"[{'-' * self.WIDTH}] waiting to train ({j['status']})"
        step, total = int(m["step"]), int(m["total_steps"])
        now = time.monotonic()
        if self.first is None:
            self.first = (now, step)
        rate = (step - self.first[1]) / (now - self.first[0]) if now > self.first[0] else 0.0
        eta = f"{(total - step) / rate:.0f}s" if rate > 0 and total > step else "-"
        filled = int(self.WIDTH * step / total) if total else 0
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        return (
            f"[{bar}] step {step}/{total}, loss {m['train_loss']:.4f}, "
            f"{m['tokens_per_s']:.0f} tokens/s, ETA {eta} ({j['status']})"
        )

    def show(self, j: dict[str, Any], m: dict[str, Any] | None) -> None:
        text = self.line(j, m)
        if self.live:
            click.echo("\r" + text.ljust(100), nl=False, err=True)
        else:
            click.echo(text, err=True)

    def end(self) -> None:
        if self.live:
            click.echo(err=True)


@finetune.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", required=True, help="The base: a local chat model.")
@click.option("--suffix", help="Part of the tuned model's name (ft:BASE:SUFFIX:JOB).")
@click.option("--epochs", type=click.IntRange(1, 50), help="Passes over the data [default: 3].")
@click.option("--batch-size", type=click.IntRange(1, 256), help="Examples per step [default: 1].")
@click.option(
    "--learning-rate-multiplier",
    type=click.FloatRange(0, 100, min_open=True),
    help="Scales the adapter's learning rate (1e-3) [default: 1].",
)
@click.option("--seed", type=click.IntRange(0, 2**31 - 1), help="For a repeatable run.")
@click.option(
    "--validation-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Examples to measure the validation loss on.",
)
@click.option("--wait", is_flag=True, help="Show progress until the job ends.")
@json_option
@pass_ctx
def create(
    ctx: Ctx,
    file: Path,
    model: str,
    suffix: str | None,
    epochs: int | None,
    batch_size: int | None,
    learning_rate_multiplier: float | None,
    seed: int | None,
    validation_file: Path | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Upload FILE (chat-format JSONL) and fine-tune MODEL on it."""
    client = ctx.client()

    def upload(path: Path) -> str:
        with path.open("rb") as local:
            return str(client.upload("/v1/files", local, path.name, {"purpose": "fine-tune"})["id"])

    hp: dict[str, Any] = {}
    for key, value in (
        ("n_epochs", epochs),
        ("batch_size", batch_size),
        ("learning_rate_multiplier", learning_rate_multiplier),
    ):
        if value is not None:
            hp[key] = value
    body: dict[str, Any] = {
        "model": model,
        "training_file": upload(file),
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
    }
    if validation_file is not None:
        body["validation_file"] = upload(validation_file)
    if suffix:
        body["suffix"] = suffix
    if seed is not None:
        body["seed"] = seed
    j = client.request("POST", JOBS, json=body)
    if not wait:
        echo_json(j) if as_json else click.echo(j["id"])
        return
    click.echo(f"fine-tuning job {j['id']}", err=True)
    progress = Progress()
    while j["status"] not in ENDED:
        progress.show(j, _latest_step(client, j["id"]))
        time.sleep(1.0)
        j = client.request("GET", f"{JOBS}/{j['id']}")
    progress.show(j, _latest_step(client, j["id"]))
    progress.end()
    echo_json(j) if as_json else _show(j)
    if j["status"] != "succeeded":
        sys.exit(1)


@finetune.command(name="list")
@click.option(
    "--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="At most this many."
)
@json_option
@pass_ctx
def list_(ctx: Ctx, limit: int, as_json: bool) -> None:
    """The fine-tuning jobs of your tenant, newest first."""
    data = ctx.client().request("GET", JOBS, params={"limit": limit})
    if as_json:
        echo_json(data)
        return
    rows = [
        [j["id"], j["status"], j["model"], j.get("fine_tuned_model") or "-", iso(j["created_at"])]
        for j in data["data"]
    ]
    table(["ID", "STATUS", "BASE", "TUNED MODEL", "CREATED"], rows)


@finetune.command()
@click.argument("job_id")
@json_option
@pass_ctx
def get(ctx: Ctx, job_id: str, as_json: bool) -> None:
    """A job's status, base and tuned model."""
    j = ctx.client().request("GET", f"{JOBS}/{job_id}")
    echo_json(j) if as_json else _show(j)


@finetune.command()
@click.argument("job_id")
@click.option(
    "--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="At most this many."
)
@json_option
@pass_ctx
def events(ctx: Ctx, job_id: str, limit: int, as_json: bool) -> None:
    """A job's events, newest first (steps, loss, speed, checkpoints)."""
    data = ctx.client().request("GET", f"{JOBS}/{job_id}/events", params={"limit": limit})
    if as_json:
        echo_json(data)
        return
    table(
        ["TIME", "LEVEL", "MESSAGE"],
        [[iso(e["created_at"]), e["level"], e["message"]] for e in data["data"]],
    )


def _act(ctx: Ctx, job_id: str, verb: str, as_json: bool) -> None:
    j = ctx.client().request("POST", f"{JOBS}/{job_id}/{verb}")
    echo_json(j) if as_json else click.echo(f"{j['id']}: {j['status']}")


@finetune.command()
@click.argument("job_id")
@json_option
@pass_ctx
def cancel(ctx: Ctx, job_id: str, as_json: bool) -> None:
    """Cancel a job: training stops at its next step."""
    _act(ctx, job_id, "cancel", as_json)


@finetune.command()
@click.argument("job_id")
@json_option
@pass_ctx
def pause(ctx: Ctx, job_id: str, as_json: bool) -> None:
    """Pause a running job at its next step (checkpointed there)."""
    _act(ctx, job_id, "pause", as_json)


@finetune.command()
@click.argument("job_id")
@json_option
@pass_ctx
def resume(ctx: Ctx, job_id: str, as_json: bool) -> None:
    """Resume a paused job from its last checkpoint."""
    _act(ctx, job_id, "resume", as_json)
