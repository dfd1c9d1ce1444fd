"""`cumulo guardrails`, `cumulo deployments` and `cumulo engine`: how the running platform is
set up and doing (admin keys)."""

from __future__ import annotations

from typing import Any

import click

from cumulo.cli.common import Ctx, echo_json, json_option, pass_ctx, table


@click.command()
@json_option
@pass_ctx
def guardrails(ctx: Ctx, as_json: bool) -> None:
    """The configured guardrails and their policies."""
    data = ctx.client().request("GET", "/admin/guardrails")
    if as_json:
        echo_json(data)
        return
    rows = [[g["id"], ",".join(g["applies_to"]), _policies(g)] for g in data["data"]]
    table(["ID", "APPLIES_TO", "POLICIES"], rows)


def _policies(g: dict[str, Any]) -> str:
    parts = []
    if g.get("prompt_attack"):
        parts.append("prompt attacks")
    if g.get("pii"):
        parts.append(f"personal data ({g['pii']['action']})")
    if g.get("denied_words"):
        parts.append(f"{g['denied_words']} denied words")
    if g.get("denied_topics"):
        parts.append("denied topics: " + ", ".join(g["denied_topics"]))
    return "; ".join(parts) or "-"


@click.command()
@json_option
@pass_ctx
def deployments(ctx: Ctx, as_json: bool) -> None:
    """Each model's deployments: circuit, load, latency, price."""
    data = ctx.client().request("GET", "/admin/deployments")
    if as_json:
        echo_json(data)
        return
    rows = []
    for m in data["data"]:
        for d in m["deployments"]:
            price = d.get("price")
            rows.append(
                [
                    m["model"],
                    d["label"],
                    "ready" if d["ready"] else "not ready",
                    d["state"],
                    d["in_flight"],
                    d["requests"],
                    d["failures"],
                    _ms(d.get("latency_ewma_ms")),
                    f"{price['input_per_mtok']}/{price['output_per_mtok']}" if price else "-",
                ]
            )
    table(
        [
            "MODEL",
            "DEPLOYMENT",
            "READY",
            "CIRCUIT",
            "IN_FLIGHT",
            "REQUESTS",
            "FAILURES",
            "LATENCY_MS",
            "USD_PER_MTOK_IN/OUT",
        ],
        rows,
    )


@click.command()
@json_option
@pass_ctx
def engine(ctx: Ctx, as_json: bool) -> None:
    """Serving engines: local chat models' and vLLM replicas'."""
    data = ctx.client().request("GET", "/admin/engine")
    if as_json:
        echo_json(data)
        return
    rows = [
        [
            e["model"] if e.get("engine") != "vllm" else f"{e['model']} ({e['deployment']})",
            e.get("state") or ("loaded" if e["loaded"] else "not loaded"),
            e.get("running", "-"),
            e.get("waiting", "-"),
            e.get("total_requests", "-"),
            e.get("tokens_per_s", "-"),
            _ms(e.get("queue_ms_p50")),
            _ms(e.get("ttft_ms_p50")),
        ]
        for e in data["data"]
    ]
    table(
        [
            "MODEL",
            "STATE",
            "RUNNING",
            "WAITING",
            "REQUESTS",
            "TOKENS_PER_S",
            "QUEUE_MS_P50",
            "TTFT_MS_P50",
        ],
        rows,
    )


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
