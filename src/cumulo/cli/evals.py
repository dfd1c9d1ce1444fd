"""`cumulo eval`: evaluate models on your own data and compare them (the Evals API)."""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from cumulo.cli.common import Ctx, echo_json, iso, json_option, pass_ctx, table
from cumulo.client import Client
from cumulo.evals import CriterionInvalid, promptfoo
from cumulo.evals.criteria import GRADERS, from_spec

ENDED = ("completed", "failed", "canceled")
EXAMPLES = Path(__file__).resolve().parent.parent / "data" / "evals"
TEXT_PERTURBATIONS = ("lowercase", "typos", "whitespace")


@click.group(name="eval")
def eval_() -> None:
    """Evals: grade models on a dataset and compare them side by side."""


# Where each part of a bad grader choice is given on the command line.
_OPTION = {"judge": "--judge", "embedding_model": "--embedding-model"}


def _criterion(spec: str, judge: str | None, embedder: str | None) -> dict[str, Any]:
    try:
        return from_spec(spec, judge, embedder)
    except CriterionInvalid as exc:
        raise click.BadParameter(str(exc), param_hint=_OPTION.get(exc.param, "--grader")) from None


def _perturbations(spec: str | None) -> list[str]:
    if spec is None:
        return []
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        if n not in TEXT_PERTURBATIONS:
            raise click.BadParameter(
                f"{n!r}: one of {', '.join(TEXT_PERTURBATIONS)} (reorder_options needs an "
                "item schema marking options: use the API)",
                param_hint="--robustness",
            )
    if not names:
        raise click.BadParameter("name at least one perturbation", param_hint="--robustness")
    return list(dict.fromkeys(names))


def _bar(run: dict[str, Any], width: int = 20) -> str:
    p = run.get("progress") or {}
    total, done = p.get("total", 0), p.get("done", 0)
    filled = int(width * done / total) if total else 0
    return (
        f"{run['name'] or run['model']:>16} [{'#' * filled}{'-' * (width - filled)}] "
        f"{done}/{total} {run['status']}"
    )


def _wait(client: Client, eval_id: str, run_ids: list[str]) -> list[dict[str, Any]]:
    live = sys.stderr.isatty()
    shown = 0
    while True:
        runs = [client.request("GET", f"/v1/evals/{eval_id}/runs/{r}") for r in run_ids]
        lines = [_bar(r) for r in runs]
        if live:
            if shown:
                click.echo(f"\x1b[{shown}F", nl=False, err=True)
            for line in lines:
                click.echo(line.ljust(70), err=True)
            shown = len(lines)
        if all(r["status"] in ENDED for r in runs):
            if not live:
                for line in lines:
                    click.echo(line, err=True)
            return runs
        time.sleep(0.5)


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_compare(cmp: dict[str, Any]) -> None:
    head = [
        "MODEL",
        "PASS",
        "95% CI",
        *[c.upper() for c in cmp["criteria"]],
        "P50 MS",
        "P95 MS",
        "TTFT P50",
        "TOKENS",
        "COST/1K",
        "ERRORS",
        "FRONTIER",
    ]
    rows = []
    for m in cmp["models"]:
        o = m["overall"]
        lo, hi = o["ci95"]
        rows.append(
            [
                m["name"] or m["model"],
                _fmt(o["pass_rate"], True),
                f"{_fmt(lo, True)}-{_fmt(hi, True)}",
                *[_fmt(m["criteria"][c]["pass_rate"], True) for c in cmp["criteria"]],
                _fmt(m["latency_ms"]["p50"]),
                _fmt(m["latency_ms"]["p95"]),
                _fmt(m["ttft_ms"]["p50"]),
                m["tokens"]["total_tokens"],
                _fmt(m["cost_per_1000_items"]),
                m["errors"],
                "yes" if m["run_id"] in cmp["non_dominated"] else "no",
            ]
        )
    table(head, rows)
    names = {m["run_id"]: m["name"] or m["model"] for m in cmp["models"]}
    for p in cmp["pairs"]:
        verdict = "differ significantly" if p["significant"] else "no significant difference"
        click.echo(
            f"{names[p['a']]} vs {names[p['b']]}: {verdict} (McNemar p={p['p_value']:.3g};"
            f" {p['a_only_passed']} vs {p['b_only_passed']} items passed by one only)"
        )
    click.echo(f"{len(cmp['disagreements'])} items where the models disagree")
    _print_robustness(cmp)


def _print_robustness(cmp: dict[str, Any]) -> None:
    names = cmp.get("perturbations") or []
    models = [m for m in cmp["models"] if m.get("robustness")]
    if not names or not models:
        return
    click.echo("\nRobustness: pass rate on perturbed inputs (drop from the originals)")
    rows = []
    for m in models:
        rob = m["robustness"]
        cells = [m["model"], _fmt(rob["original"]["pass_rate"], True)]
        for n in names:
            r = rob["perturbations"].get(n)
            if r is None or r["pass_rate"] is None:
                cells.append("-")
                continue
            drop = "" if r["drop"] is None else f" ({0.0 - 100 * r['drop']:+.1f})"
            cells.append(_fmt(r["pass_rate"], True) + drop + ("*" if r["significant"] else ""))
        rows.append(cells)
    table(["MODEL", "ORIGINAL", *[n.upper() for n in names]], rows)
    click.echo("* the drop is significant (McNemar, 5%)")


def _report(client: Client, eval_id: str, run_ids: list[str], dest: Path) -> None:
    with dest.open("wb") as out:
        client.download(f"/v1/evals/{eval_id}/report?runs={','.join(run_ids)}", out)
    click.echo(f"report: {dest}", err=True)


@eval_.command()
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--model",
    "-m",
    "models",
    multiple=True,
    help="A model to evaluate (repeatable: one run per model).",
)
@click.option(
    "--grader",
    "-g",
    "graders",
    multiple=True,
    metavar="NAME[:THRESHOLD]",
    help=f"A testing criterion (repeatable): {', '.join(GRADERS)} "
    "[default: exact; and judge with --judge].",
)
@click.option("--judge", metavar="MODEL", help="The chat model grading as judge.")
@click.option("--embedding-model", metavar="MODEL", help="The embedding model of cosine.")
@click.option("--system", metavar="TEXT", help="A system message before each item's input.")
@click.option("--name", help="The eval's name [default: DATA's file name].")
@click.option(
    "--robustness",
    is_flag=False,
    flag_value=",".join(TEXT_PERTURBATIONS),
    metavar="[P,P...]",
    help="Also send each item perturbed and report each model's drop in pass rate: "
    f"{', '.join(TEXT_PERTURBATIONS)} [alone: all three].",
)
@click.option(
    "--robustness-seed",
    type=click.IntRange(0, 1 << 62),
    default=0,
    show_default=True,
    help="The seed of the perturbations (the same seed, the same perturbed inputs).",
)
@click.option(
    "--report",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("report.html"),
    show_default=True,
    help="Where to write the report.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(1, 1 << 20),
    help="The most tokens of each answer [default: 256; a promptfoo config's provider's "
    "max_tokens, else 1024 as promptfoo's].",
)
@json_option
@pass_ctx
def run(
    ctx: Ctx,
    data: Path,
    models: tuple[str, ...],
    graders: tuple[str, ...],
    judge: str | None,
    embedding_model: str | None,
    system: str | None,
    name: str | None,
    report: Path,
    max_tokens: int | None,
    robustness: str | None,
    robustness_seed: int,
    as_json: bool,
) -> None:
    """Grade each model on DATA and compare them.

    DATA is JSONL, one item a line: {"input": "...", "ideal": "..."} (more fields may
    follow). An example shipped with cumulo may be named by its name alone: arithmetic,
    capitals, sentiment. Shows a progress bar per run, prints the comparison and writes
    the HTML report.

    DATA may also be a promptfoo config (.yaml, .yml): its prompts, providers (cumulo
    models; one run each), tests and assertions; --model and --grader are not taken then,
    --judge and --embedding-model are the defaults of llm-rubric and similar.
    """
    if data.suffix in (".yaml", ".yml"):
        if not data.is_file():
            raise click.BadParameter(f"{data}: no such file", param_hint="DATA")
        if models or graders or system:
            raise click.BadParameter(
                "a promptfoo config names its providers and assertions itself",
                param_hint="--model/--grader/--system",
            )
        try:
            plan = promptfoo.load(data, judge, embedding_model)
        except promptfoo.ConfigInvalid as exc:
            raise click.UsageError(str(exc)) from None
        rows = [{"item": it} for it in plan.items]
        specs_ = [
            (
                r.label,
                r.model,
                r.template,
                {
                    k: v
                    for k, v in {
                        **r.sampling,
                        "max_completion_tokens": r.sampling.get("max_completion_tokens")
                        or max_tokens
                        or promptfoo.PROMPTFOO_MAX_TOKENS,
                    }.items()
                    if v is not None
                },
            )
            for r in plan.runs
        ]
        _evaluate(
            ctx.client(),
            name or plan.name,
            plan.item_schema,
            plan.criteria,
            rows,
            specs_,
            data.stem + ".jsonl",
            report,
            as_json,
            _perturbations(robustness),
            robustness_seed,
        )
        return
    if not models:
        raise click.BadParameter("at least one --model", param_hint="--model")
    if not data.exists() and (EXAMPLES / f"{data.name}.jsonl").exists():
        data = EXAMPLES / f"{data.name}.jsonl"
    if not data.exists():
        raise click.BadParameter(
            f"{data}: no such file (examples: arithmetic, capitals, sentiment)", param_hint="DATA"
        )
    perturbations = _perturbations(robustness)
    specs = list(graders) or (["exact", "judge"] if judge else ["exact"])
    criteria = [_criterion(s, judge, embedding_model) for s in specs]
    template = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": "{{item.input}}"}
    ]
    sampling = {"temperature": 0, "max_completion_tokens": max_tokens or 256}
    schema = {
        "type": "object",
        "properties": {"input": {"type": "string"}, "ideal": {"type": "string"}},
        "required": ["input", "ideal"],
    }
    _evaluate(
        ctx.client(),
        name or data.stem,
        schema,
        criteria,
        data,
        [(m, m, template, sampling) for m in models],
        data.name,
        report,
        as_json,
        perturbations,
        robustness_seed,
    )


def _evaluate(
    client: Client,
    name: str,
    schema: dict[str, Any],
    criteria: list[dict[str, Any]],
    data: Path | list[dict[str, Any]],
    runs: list[tuple[str, str, list[dict[str, str]], dict[str, Any]]],
    filename: str,
    report: Path,
    as_json: bool,
    perturbations: list[str] | None = None,
    robustness_seed: int = 0,
) -> None:
    """Creates the eval and one run per (label, model, template, sampling params), waits
    for them, prints the comparison and writes the report; with `perturbations`, each
    run also sends each item perturbed (seeded by `robustness_seed`)."""
    ev = client.request(
        "POST",
        "/v1/evals",
        json={
            "name": name,
            "data_source_config": {"type": "custom", "item_schema": schema},
            "testing_criteria": criteria,
        },
    )
    if isinstance(data, Path):
        with data.open("rb") as local:
            uploaded = client.upload("/v1/files", local, filename, {"purpose": "evals"})
    else:
        rows = b"".join(json.dumps(row).encode() + b"\n" for row in data)
        uploaded = client.upload("/v1/files", io.BytesIO(rows), filename, {"purpose": "evals"})
    run_ids = []
    for label, model, template, sampling in runs:
        r = client.request(
            "POST",
            f"/v1/evals/{ev['id']}/runs",
            json={
                "name": label,
                "data_source": {
                    "type": "completions",
                    "model": model,
                    "input_messages": {"type": "template", "template": template},
                    "sampling_params": sampling,
                    "source": {"type": "file_id", "id": uploaded["id"]},
                    **(
                        {
                            "robustness": {
                                "perturbations": perturbations,
                                "seed": robustness_seed,
                            }
                        }
                        if perturbations
                        else {}
                    ),
                },
            },
        )
        run_ids.append(r["id"])
    click.echo(f"eval {ev['id']}: {len(run_ids)} runs", err=True)
    done = _wait(client, ev["id"], run_ids)
    cmp = client.request("GET", f"/v1/evals/{ev['id']}/compare", params={"runs": ",".join(run_ids)})
    if as_json:
        echo_json(cmp)
    else:
        _print_compare(cmp)
    _report(client, ev["id"], run_ids, report)
    if any(r["status"] != "completed" for r in done):
        for r in done:
            if r.get("error"):
                click.echo(f"{r['name']}: {r['error']['message']}", err=True)
        raise click.exceptions.Exit(1)


@eval_.command(name="list")
@click.option(
    "--limit", type=click.IntRange(1, 100), default=20, show_default=True, help="At most this many."
)
@json_option
@pass_ctx
def list_(ctx: Ctx, limit: int, as_json: bool) -> None:
    """The evals of your tenant, newest first."""
    data = ctx.client().request("GET", "/v1/evals", params={"limit": limit, "order": "desc"})
    if as_json:
        echo_json(data)
        return
    table(
        ["ID", "NAME", "CRITERIA", "CREATED"],
        [
            [
                e["id"],
                e["name"],
                ", ".join(c["name"] for c in e["testing_criteria"]),
                iso(e["created_at"]),
            ]
            for e in data["data"]
        ],
    )


@eval_.command()
@click.argument("eval_id")
@json_option
@pass_ctx
def show(ctx: Ctx, eval_id: str, as_json: bool) -> None:
    """An eval and its runs with their counts."""
    client = ctx.client()
    ev = client.request("GET", f"/v1/evals/{eval_id}")
    runs = client.request("GET", f"/v1/evals/{eval_id}/runs", params={"limit": 100})
    if as_json:
        echo_json({"eval": ev, "runs": runs["data"]})
        return
    click.echo(f"{ev['id']}  {ev['name']}  created {iso(ev['created_at'])}")
    for c in ev["testing_criteria"]:
        click.echo(f"  criterion {c['name']}: {c['type']}")
    table(
        ["RUN", "MODEL", "STATUS", "PASSED", "FAILED", "ERRORED", "TOTAL"],
        [
            [
                r["id"],
                r["model"] or r["name"],
                r["status"],
                *[r["result_counts"][k] for k in ("passed", "failed", "errored", "total")],
            ]
            for r in runs["data"]
        ],
    )


@eval_.command()
@click.argument("eval_id")
@click.option("--runs", metavar="RUN,RUN", help="The runs to compare [default: all].")
@click.option(
    "--report",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the HTML report here.",
)
@json_option
@pass_ctx
def compare(ctx: Ctx, eval_id: str, runs: str | None, report: Path | None, as_json: bool) -> None:
    """Compare the runs of an eval side by side."""
    client = ctx.client()
    params = {"runs": runs} if runs else None
    cmp = client.request("GET", f"/v1/evals/{eval_id}/compare", params=params)
    if as_json:
        click.echo(json.dumps(cmp, indent=2))
    else:
        _print_compare(cmp)
    if report is not None:
        _report(client, eval_id, [m["run_id"] for m in cmp["models"]], report)


@eval_.command()
@click.argument("eval_id")
@click.argument("run_id")
@pass_ctx
def cancel(ctx: Ctx, eval_id: str, run_id: str) -> None:
    """Cancel a run (the items graded so far are kept)."""
    r = ctx.client().request("POST", f"/v1/evals/{eval_id}/runs/{run_id}")
    click.echo(f"{r['id']}: {r['status']}")
