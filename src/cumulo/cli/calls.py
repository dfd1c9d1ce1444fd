"""`cumulo chat` and `cumulo embed`: call a model of the running platform."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from cumulo.cli.common import Ctx, pass_ctx

# The longest reply `chat` asks for when neither --max-tokens nor the model sets one.
CHAT_MAX_TOKENS = 1024


@click.command()
@click.argument("model")
@click.argument("prompt", required=False)
@click.option("--system", metavar="TEXT", help="A system prompt.")
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    metavar="N",
    help="Longest reply, in tokens [default: the model's default_max_tokens, "
    f"else {CHAT_MAX_TOKENS}].",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    metavar="T",
    help="Sampling temperature; 0 picks the likeliest token [default: the model's].",
)
@pass_ctx
def chat(
    ctx: Ctx,
    model: str,
    prompt: str | None,
    system: str | None,
    max_tokens: int | None,
    temperature: float | None,
) -> None:
    """Send PROMPT (or stdin) to MODEL; stream the reply."""
    if prompt is None:
        prompt = sys.stdin.read()
    if not prompt.strip():
        raise click.UsageError("empty prompt")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    client = ctx.client()
    body: dict[str, Any] = {"model": model, "messages": messages}
    if max_tokens is None:  # the model's own default applies when it has one
        info = client.request("GET", f"/v1/models/{model}")
        if not info.get("default_max_tokens"):
            max_tokens = CHAT_MAX_TOKENS
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    for piece in client.stream_chat(body):
        click.echo(piece, nl=False)
    click.echo()


@click.command()
@click.argument("model")
@click.argument("texts", nargs=-1, required=True)
@pass_ctx
def embed(ctx: Ctx, model: str, texts: tuple[str, ...]) -> None:
    """Print the embedding of each of TEXTS, one JSON line each."""
    data = ctx.client().request(
        "POST", "/v1/embeddings", json={"model": model, "input": list(texts)}
    )
    for item in data["data"]:
        click.echo(json.dumps(item["embedding"]))
