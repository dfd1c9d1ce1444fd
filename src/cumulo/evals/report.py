"""The comparison of runs as one self-contained HTML page (no network needed to open it).

Charts are drawn by matplotlib as SVG and inlined: quality against cost, quality against
latency, and pass rate per criterion (with the 95% intervals). Then the comparison table,
the pairwise tests, and the items where the models disagree (a `<details>` list). Runs
with robustness add a chart and a table of each model's pass rate on the original items
and on each perturbation, with the drop.
"""

from __future__ import annotations

import html as h
import io
from typing import Any

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}.charts{display:flex;
flex-wrap:wrap;gap:1em}.charts svg{width:420px;height:auto}details{margin:.3em 0}
pre{white-space:pre-wrap;background:#f8f8f8;padding:.5em}"""


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.find("<svg") :]


def _scatter(models: list[dict[str, Any]], x_of: Any, xlabel: str, title: str) -> str | None:
    pts = [(x_of(m), m["overall"]["pass_rate"], m["model"]) for m in models]
    pts = [p for p in pts if p[0] is not None and p[1] is not None]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for x, y, label in pts:
        ax.scatter([x], [y])
        ax.annotate(str(label), (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("pass rate")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    return _svg(fig)


def _bars(cmp: dict[str, Any]) -> str | None:
    models, criteria = cmp["models"], cmp["criteria"]
    if not models or not criteria:
        return None
    fig, ax = plt.subplots(figsize=(max(5, 1.5 * len(criteria)), 3.5))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        xs: list[float] = []
        ys: list[float] = []
        err: list[list[float]] = [[], []]
        for j, c in enumerate(criteria):
            r = m["criteria"][c]
            rate = r["pass_rate"] or 0.0
            lo, hi = r["ci95"]
            xs.append(j + i * width)
            ys.append(rate)
            err[0].append(rate - (lo if lo is not None else rate))
            err[1].append((hi if hi is not None else rate) - rate)
        ax.bar(xs, ys, width, yerr=err, capsize=3, label=str(m["model"]))
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(criteria))])
    ax.set_xticklabels(criteria)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pass rate (95% CI)")
    ax.set_title("Pass rate per criterion")
    ax.legend(fontsize="small")
    return _svg(fig)


def _robust_bars(cmp: dict[str, Any]) -> str | None:
    names = cmp.get("perturbations") or []
    models = [m for m in cmp["models"] if m.get("robustness")]
    if not names or not models:
        return None
    groups = ["original", *names]
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(groups)), 3.5))
    width = 0.8 / len(models)
    for i, m in enumerate(models):
        rob = m["robustness"]
        rates = [rob["original"]["pass_rate"]] + [
            (rob["perturbations"].get(n) or {}).get("pass_rate") for n in names
        ]
        ax.bar(
            [j + i * width for j in range(len(groups))],
            [r or 0.0 for r in rates],
            width,
            label=str(m["model"]),
        )
    ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(groups))])
    ax.set_xticklabels(groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("pass rate")
    ax.set_title("Robustness: pass rate on perturbed inputs")
    ax.legend(fontsize="small")
    return _svg(fig)


def _robust_table(cmp: dict[str, Any]) -> str:
    names = cmp.get("perturbations") or []
    if not names:
        return ""
    head = "<th class=l>model</th><th>original</th>" + "".join(
        f"<th>{h.escape(n)}</th><th>{h.escape(n)} drop</th><th>{h.escape(n)} p</th>" for n in names
    )
    rows = []
    for m in cmp["models"]:
        rob = m.get("robustness")
        if not rob:
            continue
        cells = [f"<td class=l>{_fmt(m['model'])}</td>", f"<td>{_pct(rob['original'])}</td>"]
        for n in names:
            r = rob["perturbations"].get(n)
            if r is None:
                cells += ["<td>-</td>"] * 3
                continue
            drop = "-" if r["drop"] is None else f"{100 * r['drop']:+.1f} pts"
            mark = " *" if r["significant"] else ""
            cells += [
                f"<td>{_pct(r)}</td>",
                f"<td>{drop}</td>",
                f"<td>{_fmt(r['p_value'])}{mark}</td>",
            ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        "<h2>Robustness</h2><p>Pass rate on the original items and on each perturbation of "
        "their inputs; drop: original minus perturbed, in percentage points; p: McNemar's "
        "exact test between each item and its perturbed copy (* below 5%).</p>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>"
    )


def _pct(r: dict[str, Any]) -> str:
    rate = r.get("pass_rate")
    return "-" if rate is None else f"{100 * rate:.1f}% ({r['passed']}/{r['graded']})"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return h.escape(str(v))


def html(cmp: dict[str, Any]) -> str:
    models = cmp["models"]
    charts = [
        _scatter(
            models,
            lambda m: m["cost_per_1000_items"],
            "cost per 1,000 items",
            "Quality against cost",
        ),
        _scatter(
            models, lambda m: m["latency_ms"]["p50"], "latency p50 (ms)", "Quality against latency"
        ),
        _bars(cmp),
        _robust_bars(cmp),
    ]
    names = {m["run_id"]: m["model"] for m in models}
    head = ["model", "run", "items", "pass rate", "95% CI"]
    head += [f"{c} pass rate" for c in cmp["criteria"]] + [
        f"{c} mean score" for c in cmp["criteria"]
    ]
    head += [
        "latency p50",
        "latency p95",
        "TTFT p50",
        "TTFT p95",
        "tokens",
        "cost/1k items",
        "errors",
        "non-dominated",
    ]
    rows = []
    for m in models:
        o = m["overall"]
        cells = [
            m["model"],
            m["run_id"],
            m["items"],
            o["pass_rate"],
            f"{_fmt(o['ci95'][0])} to {_fmt(o['ci95'][1])}",
        ]
        cells += [m["criteria"][c]["pass_rate"] for c in cmp["criteria"]]
        cells += [m["criteria"][c]["mean_score"] for c in cmp["criteria"]]
        cells += [
            m["latency_ms"]["p50"],
            m["latency_ms"]["p95"],
            m["ttft_ms"]["p50"],
            m["ttft_ms"]["p95"],
            m["tokens"]["total_tokens"],
            m["cost_per_1000_items"],
            m["errors"],
            "yes" if m["run_id"] in cmp["non_dominated"] else "no",
        ]
        rows.append(
            "<tr>"
            + "".join(
                f"<td class=l>{_fmt(c)}</td>" if i < 2 else f"<td>{_fmt(c)}</td>"
                for i, c in enumerate(cells)
            )
            + "</tr>"
        )
    pairs = "".join(
        f"<tr><td class=l>{_fmt(names[p['a']])}</td><td class=l>{_fmt(names[p['b']])}</td>"
        f"<td>{p['items']}</td><td>{p['a_only_passed']}</td><td>{p['b_only_passed']}</td>"
        f"<td>{_fmt(p['p_value'])}</td><td>{'yes' if p['significant'] else 'no'}</td></tr>"
        for p in cmp["pairs"]
    )
    items = []
    for d in cmp["disagreements"]:
        per = "".join(
            f"<li><b>{_fmt(names.get(rid, rid))}</b>: {_fmt(r['status'])} — "
            f"<code>{_fmt(r['output'])}</code></li>"
            for rid, r in d["runs"].items()
        )
        import json

        items.append(
            f"<details><summary>item {d['datasource_item_id']}</summary>"
            f"<pre>{h.escape(json.dumps(d['item'], ensure_ascii=False, indent=1))}</pre>"
            f"<ul>{per}</ul></details>"
        )
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>cumulo eval {_fmt(cmp['eval_name'])}</title><style>{STYLE}</style></head><body>"
        f"<h1>Eval {_fmt(cmp['eval_name'])}</h1><p>{_fmt(cmp['eval_id'])}</p>"
        f"<div class=charts>{''.join(c for c in charts if c)}</div>"
        "<h2>Comparison</h2><table><tr>"
        + "".join(f"<th>{h.escape(x)}</th>" for x in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
        + _robust_table(cmp)
        + "<h2>Paired tests (McNemar, exact)</h2><table><tr><th class=l>A</th><th class=l>B</th>"
        "<th>items</th><th>only A passed</th><th>only B passed</th><th>p</th>"
        f"<th>significant at 5%</th></tr>{pairs}</table>"
        f"<h2>Items where the models disagree ({len(cmp['disagreements'])})</h2>"
        + "".join(items)
        + "</body></html>"
    )
