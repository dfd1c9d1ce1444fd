"""`cumulo models`: list the served models; export a fine-tuned one; build the demo model."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from urllib.parse import quote

import click

from cumulo.cli.common import Ctx, pass_ctx, table
from cumulo.config import demo_model_dir


@click.group()
def models() -> None:
    """List the served models; export tuned ones; build the demo."""


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


@models.command("export")
@click.argument("model")
@click.argument("directory", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--merged",
    is_flag=True,
    help="The base with the adapter merged in: a Hugging Face directory (safetensors, "
    "tokenizer, generation config) that transformers and vLLM load.",
)
@click.option(
    "--onnx",
    is_flag=True,
    help="Also an ONNX export of the merged model (DIR/onnx/model.onnx), checked with "
    "onnxruntime against transformers (needs the onnx extra: pip install 'cumulo[onnx]').",
)
@pass_ctx
def models_export(ctx: Ctx, model: str, directory: Path, merged: bool, onnx: bool) -> None:
    """Write fine-tuned MODEL (ft:...) into DIR.

    By default its LoRA adapter (a PEFT directory). Downloaded from the running platform with your key (only your tenant's models); DIR
    must be new or empty. The export is recorded on the audit ledger (`cumulo ledger
    lineage MODEL` lists it)."""
    from cumulo.jobs.finetune.hashes import sha256_of_dir

    if directory.exists() and any(directory.iterdir()):
        raise click.UsageError(f"{directory} is not empty")
    if onnx:
        from cumulo.jobs.finetune.onnx_export import check_installed

        try:
            check_installed()
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from None
    form = "merged" if merged or onnx else "adapter"
    client = ctx.client()
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory.parent, prefix=".cumulo-export-") as tmp:
        archive = Path(tmp) / "export.tar"
        headers: dict[str, str] = {}
        with archive.open("wb") as out:
            client.download(
                f"/v1/fine_tuning/models/{quote(model, safe='')}/export",
                out,
                params={"format": form},
                headers=headers,
            )
        staged = Path(tmp) / "out"
        with tarfile.open(archive) as tar:
            tar.extractall(staged, filter="data")
        sha = sha256_of_dir(staged)
        if sha != headers.get("x-cumulo-sha256"):
            raise click.ClickException(
                f"the download does not match the server's SHA-256 ({sha} here)"
            )
        if directory.exists():
            directory.rmdir()
        staged.rename(directory)
    click.echo(f"{form} of {model} in {directory} (sha256 {sha})")
    if onnx:
        from cumulo.jobs.finetune.onnx_export import export_onnx, verify_onnx

        path = export_onnx(directory, directory / "onnx")
        try:
            tokens = verify_onnx(directory, path)
        except ValueError as exc:
            raise click.ClickException(f"the ONNX export does not match: {exc}") from None
        click.echo(
            f"onnx in {path}: onnxruntime's greedy tokens match transformers' "
            f"({len(tokens)} tokens)"
        )
