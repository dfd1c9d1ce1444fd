"""`cumulo models`: list the served models; build the demo model."""

from __future__ import annotations

from pathlib import Path

import click

from cumulo.cli.common import Ctx, pass_ctx, table
from cumulo.config import demo_model_dir


@click.group()
def models() -> None:
    """List the served models; build the demo model."""


@models.command("list")
@pass_ctx
def models_list(ctx: Ctx) -> None:
    """The models the running platform serves."""
    data = ctx.client().request("GET", "/v1/models")
    rows = []
    for m in data["data"]:
        notes = [
            n
            for n, on in (
                ("UNTRAINED: random weights", m.get("untrained")),
                (f"FAILED: {m.get('load_error')}", m.get("load_error")),
                ("loading", not m.get("ready", True) and not m.get("load_error")),
            )
            if on
        ]
        rows.append(
            [m["id"], m.get("kind", ""), ",".join(m.get("providers", [])), "; ".join(notes)]
        )
    table(["MODEL", "KIND", "PROVIDERS", "NOTES"], rows)


@models.command("build-demo")
@click.option(
    "--path",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="Target directory [default: $CUMULO_HOME/models/demo-tiny].",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    metavar="N",
    help="Seed of the random weights.",
)
def models_build_demo(path: str | None, seed: int) -> None:
    """Build the tiny untrained demo chat model offline."""
    from cumulo.engine.demo import build_demo_model

    target = build_demo_model(Path(path) if path else demo_model_dir(), seed=seed)
    click.echo(f"built {target} (untrained: random weights, for trying the platform only)")
