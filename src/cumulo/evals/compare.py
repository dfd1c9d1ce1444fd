"""Runs of one eval side by side (`GET /v1/evals/{id}/compare`, `cumulo eval compare`).

For each run (a model): pass rate overall and per criterion with a 95% Wilson interval,
mean scores, latency and time to first token (p50/p95), tokens, cost per 1,000 items and
errors. Between each pair of runs, McNemar's exact test on the items both graded (scipy's
binomial test on the discordant pairs); the items where runs disagree; and the runs not
dominated on quality (pass rate), cost and latency together.

All of that is of the original items. A run with robustness (`cumulo.evals.perturb`) also
gets, for each perturbation, its pass rate (with its 95% interval), the drop from the
originals' pass rate, and McNemar's test between each item and its perturbed copy.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from scipy.stats import binomtest

from cumulo.store.evals import EvalRow
from cumulo.store.jobs import JobRow

ALPHA = 0.05
MAX_DISAGREEMENTS = 500


def wilson(passed: int, n: int) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    ci = binomtest(passed, n).proportion_ci(confidence_level=1 - ALPHA, method="wilson")
    return round(float(ci.low), 6), round(float(ci.high), 6)


def mcnemar(a_only: int, b_only: int) -> float:
    """Exact two-sided p-value of McNemar's test on the discordant pairs."""
    n = a_only + b_only
    return 1.0 if n == 0 else float(binomtest(a_only, n, 0.5).pvalue)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return round(s[lo] + (s[hi] - s[lo]) * (k - lo), 3)


def _rate(passed: int, n: int) -> dict[str, Any]:
    low, high = wilson(passed, n)
    return {
        "passed": passed,
        "graded": n,
        "pass_rate": None if n == 0 else round(passed / n, 6),
        "ci95": [low, high],
    }


def _model(job: JobRow, outputs: list[dict[str, Any]], criteria: list[str]) -> dict[str, Any]:
    per: dict[str, dict[str, Any]] = {c: {"passed": 0, "n": 0, "scores": []} for c in criteria}
    lat, ttft, costs = [], [], []
    tokens = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    errors = passed = graded = 0
    cost_known = True
    for o in outputs:
        s = o["sample"]
        if s.get("latency_ms") is not None:
            lat.append(float(s["latency_ms"]))
        if s.get("ttft_ms") is not None:
            ttft.append(float(s["ttft_ms"]))
        if s.get("cost") is not None:
            costs.append(float(s["cost"]))
        elif job.params["data_source"]["type"] == "completions" and s.get("error") is None:
            cost_known = False
        for k in tokens:
            v = (s.get("usage") or {}).get(k)
            tokens[k] += v if isinstance(v, int) else 0
        if o["status"] == "error":
            errors += 1
        else:
            graded += 1
            passed += o["status"] == "pass"
        for r in o["results"]:
            c = per.get(r["name"])
            if c is None or r.get("error") is not None:
                continue
            c["n"] += 1
            c["passed"] += bool(r["passed"])
            c["scores"].append(float(r["score"]))
    n = len(outputs)
    cost = None  # unknown: pre-produced samples, or a deployment without a price
    if job.params["data_source"]["type"] == "completions" and n and cost_known:
        cost = round(sum(costs) / n * 1000, 6)
    return {
        "run_id": job.id,
        "name": job.params.get("name"),
        "model": job.params["data_source"].get("model") or job.params.get("name"),
        "status": job.status,
        "items": n,
        "overall": _rate(passed, graded),
        "criteria": {
            name: {
                **_rate(c["passed"], c["n"]),
                "mean_score": round(sum(c["scores"]) / len(c["scores"]), 6)
                if c["scores"]
                else None,
            }
            for name, c in per.items()
        },
        "latency_ms": {"p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95)},
        "ttft_ms": {"p50": percentile(ttft, 0.5), "p95": percentile(ttft, 0.95)},
        "tokens": tokens,
        "cost_per_1000_items": cost,
        "errors": errors,
    }


def _dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """a is at least as good as b on every known axis and better on one."""
    axes = [((a["overall"]["pass_rate"] or 0.0), (b["overall"]["pass_rate"] or 0.0), 1)]
    for key in ("cost_per_1000_items",):
        if a[key] is not None and b[key] is not None:
            axes.append((a[key], b[key], -1))
    la, lb = a["latency_ms"]["p50"], b["latency_ms"]["p50"]
    if la is not None and lb is not None:
        axes.append((la, lb, -1))
    ge = all((x - y) * sign >= 0 for x, y, sign in axes)
    gt = any((x - y) * sign > 0 for x, y, sign in axes)
    return ge and gt


def _robustness(
    job: JobRow, originals: list[dict[str, Any]], perturbed: list[dict[str, Any]]
) -> dict[str, Any] | None:
    rob = job.params["data_source"].get("robustness")
    if rob is None:
        return None
    base = {o["datasource_item_id"]: o["status"] for o in originals}
    graded = [s for s in base.values() if s != "error"]
    original = _rate(sum(s == "pass" for s in graded), len(graded))
    out: dict[str, Any] = {}
    for name in rob["perturbations"]:
        mine = {
            o["datasource_item_id"]: o["status"]
            for o in perturbed
            if o["perturbation"]["type"] == name
        }
        ok = [s for s in mine.values() if s != "error"]
        rate = _rate(sum(s == "pass" for s in ok), len(ok))
        paired = [i for i in mine if i in base and "error" not in (mine[i], base[i])]
        lost = sum(base[i] == "pass" and mine[i] != "pass" for i in paired)
        gained = sum(mine[i] == "pass" and base[i] != "pass" for i in paired)
        p = mcnemar(lost, gained)
        drop = None
        if rate["pass_rate"] is not None and original["pass_rate"] is not None:
            drop = round(original["pass_rate"] - rate["pass_rate"], 6)
        out[name] = {
            **rate,
            "drop": drop,
            "paired_items": len(paired),
            "lost": lost,  # passed as the original, not perturbed
            "gained": gained,
            "p_value": round(p, 6),
            "significant": p < ALPHA,
            "errors": sum(s == "error" for s in mine.values()),
        }
    return {"seed": rob["seed"], "original": original, "perturbations": out}


def compare(ev: EvalRow, runs: list[tuple[JobRow, list[dict[str, Any]]]]) -> dict[str, Any]:
    criteria = [c["name"] for c in ev.testing_criteria]
    split = [
        (
            job,
            [o for o in outs if o.get("perturbation") is None],
            [o for o in outs if o.get("perturbation") is not None],
        )
        for job, outs in runs
    ]
    runs = [(job, originals) for job, originals, _ in split]
    models = [_model(job, outs, criteria) for job, outs in runs]
    for m, (job, originals, perturbed) in zip(models, split, strict=True):
        m["robustness"] = _robustness(job, originals, perturbed)
    perturbations: list[str] = []
    for m in models:
        for name in (m["robustness"] or {}).get("perturbations", {}):
            if name not in perturbations:
                perturbations.append(name)
    by_run = {job.id: {o["datasource_item_id"]: o for o in outs} for job, outs in runs}
    pairs = []
    for (ja, _), (jb, _) in combinations(runs, 2):
        a, b = by_run[ja.id], by_run[jb.id]
        shared = [i for i in a if i in b and "error" not in (a[i]["status"], b[i]["status"])]
        a_only = sum(a[i]["status"] == "pass" and b[i]["status"] != "pass" for i in shared)
        b_only = sum(b[i]["status"] == "pass" and a[i]["status"] != "pass" for i in shared)
        p = mcnemar(a_only, b_only)
        pairs.append(
            {
                "a": ja.id,
                "b": jb.id,
                "items": len(shared),
                "a_only_passed": a_only,
                "b_only_passed": b_only,
                "p_value": round(p, 6),
                "significant": p < ALPHA,
            }
        )
    disagreements = []
    all_items = sorted({i for r in by_run.values() for i in r})
    for i in all_items:
        statuses = {rid: r[i]["status"] for rid, r in by_run.items() if i in r}
        if len(set(statuses.values())) > 1:
            first = next(r[i] for r in by_run.values() if i in r)
            disagreements.append(
                {
                    "datasource_item_id": i,
                    "item": first["datasource_item"],
                    "runs": {
                        rid: {
                            "status": r[i]["status"],
                            "output": ((r[i]["sample"].get("output") or [{}])[0] or {}).get(
                                "content"
                            ),
                        }
                        for rid, r in by_run.items()
                        if i in r
                    },
                }
            )
            if len(disagreements) >= MAX_DISAGREEMENTS:
                break
    frontier = [m["run_id"] for m in models if not any(_dominates(o, m) for o in models)]
    return {
        "object": "eval.comparison",
        "eval_id": ev.id,
        "eval_name": ev.name,
        "criteria": criteria,
        "perturbations": perturbations,
        "models": models,
        "pairs": pairs,
        "disagreements": disagreements,
        "non_dominated": frontier,
    }
