"""`cumulo chat` and `cumulo embed`: call a model of the running platform."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cumulo.cli.common import Ctx, pass_ctx


@click.command()
@click.argument("model")
@click.argument("prompt", required=False)
@click.option("--system", default=None, help="A system prompt.")
@click.option("--max-tokens", type=int, default=None)
@click.option("--temperature", type=float, default=None)
@pass_ctx
def chat(
    ctx: Ctx,
    model: str,
    prompt: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
) -> None:
    """Send PROMPT (or stdin) to MODEL and stream the reply."""
    if prompt is None:
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.UsageError("empty prompt")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    body: dict[str, Any] = {"model": model, "messages": messages}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    for piece in ctx.client().stream_chat(body):
        click.echo(piece, nl=False)
    click.echo()


@click.command()
@click.argument("model")
@click.argument("texts", nargs=-1, required=True)
@pass_ctx
def embed(ctx: Ctx, model: str, texts: tuple[str, ...]) -> None:
    """Print embeddings of TEXTS as JSON lines."""
    data = ctx.client().request(
        "POST", "/v1/embeddings", json={"model": model, "input": list(texts)}
    )
    for item in data["data"]:
        click.echo(json.dumps(item["embedding"]))
