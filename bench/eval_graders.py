"""Evals: grading time per item for each grader kind, against the metric's library called
directly on the same texts in the same run.

    . .venv/bin/activate
    python bench/eval_graders.py [--items 2000]

cumulo's figure includes rendering the criterion's templates over the item and the sample
and building the result; the baseline is the library's call alone (string_check: Python's
`==`). The model graders (label_model, score_model) and cosine time a judge/embedding
callable that answers at once, so their figure is cumulo's own cost per item (prompt
rendering, answer parsing), without the model's time; `bench/evals.py` times them inside
real runs, calling a fake judge and embedding model through the gateway. meteor is timed
when WordNet is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

import sacrebleu
from nltk.translate.gleu_score import sentence_gleu
from rapidfuzz import fuzz
from rouge_score import rouge_scorer

from cumulo.evals.graders import Call, Grader, check
from cumulo.evals.templates import sample_scope

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "while",
    "a",
    "cat",
    "sleeps",
    "on",
    "the",
    "warm",
    "mat",
]


def texts(n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        a = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(12))
        b = " ".join(WORDS[(i + k + (k % 3 == 0)) % len(WORDS)] for k in range(12))
        out.append((a, b))
    return out


def criterion(kind: str) -> dict[str, Any]:
    io = {"input": "{{sample.output_text}}", "reference": "{{item.ref}}"}
    if kind == "string_check":
        return check({"type": kind, "name": kind, **io, "operation": "eq"}, 0)
    if kind in ("label_model", "score_model"):
        extra: dict[str, Any] = (
            {"labels": ["correct", "wrong"], "passing_labels": ["correct"]}
            if kind == "label_model"
            else {"range": [0, 1]}
        )
        return check(
            {
                "type": kind,
                "name": kind,
                "model": "judge",
                **extra,
                "input": [
                    {"role": "user", "content": "answer: {{sample.output_text}} ref: {{item.ref}}"}
                ],
            },
            0,
        )
    return check(
        {
            "type": "text_similarity",
            "name": kind,
            **io,
            "evaluation_metric": kind,
            "pass_threshold": 0.5,
            **({"model": "e"} if kind == "cosine" else {}),
        },
        0,
    )


async def judge(
    model: str, messages: list[dict[str, str]], params: dict[str, Any]
) -> tuple[str, Call]:
    return '{"label": "correct", "score": 0.8}', Call(model, 20, 8)


async def embed(model: str, inputs: list[str]) -> tuple[list[list[float]], Call]:
    return [[float(len(t)), float(t.count(" ")), 1.0] for t in inputs], Call(model, 8)


def baseline(kind: str) -> Callable[[str, str], Any] | None:
    rouge = {f"rouge_{n}": f"rouge{n}" for n in range(1, 6)} | {"rouge_l": "rougeL"}
    if kind == "string_check":
        return lambda a, b: a == b
    if kind == "fuzzy_match":
        return lambda a, b: fuzz.ratio(a, b)
    if kind == "bleu":
        return lambda a, b: sacrebleu.sentence_bleu(a, [b])
    if kind == "gleu":
        return lambda a, b: sentence_gleu([b.split()], a.split())
    if kind == "meteor":
        from nltk.translate.meteor_score import single_meteor_score

        from cumulo.evals.graders import wordnet

        wn = wordnet()
        return lambda a, b: single_meteor_score(b.split(), a.split(), wordnet=wn)
    if kind in rouge:
        scorer = rouge_scorer.RougeScorer([rouge[kind]])
        return lambda a, b: scorer.score(b, a)
    return None


async def timed(kind: str, pairs: list[tuple[str, str]]) -> tuple[float, float | None]:
    c = criterion(kind)
    g = Grader(chat=judge, embed=embed)
    scopes = [{"item": {"ref": b}, "sample": sample_scope(a)} for a, b in pairs]
    base = baseline(kind)
    await g.grade(c, scopes[0])  # imports and scorers built once, outside the clock
    if base is not None:
        base(*pairs[0])
    t0 = time.perf_counter()
    for s in scopes:
        r = await g.grade(c, s)
        assert r.error is None, r.error
    ours = (time.perf_counter() - t0) / len(pairs)
    if base is None:
        return ours, None
    t0 = time.perf_counter()
    for a, b in pairs:
        base(a, b)
    return ours, (time.perf_counter() - t0) / len(pairs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=2000)
    args = ap.parse_args()
    pairs = texts(args.items)
    from cumulo.evals.criteria import SIMILARITY
    from cumulo.evals.graders import meteor_available

    metrics = [m for m in SIMILARITY if m != "meteor" or meteor_available()]
    kinds = ["string_check", *metrics, "label_model", "score_model"]
    if not meteor_available():
        print("(meteor left out: no WordNet; `make wordnet` installs Debian's wordnet-base)")
    print(f"{'grader':14} {'cumulo us/item':>15} {'library us/item':>16} {'ratio':>7}")
    for kind in kinds:
        ours, base = asyncio.run(timed(kind, pairs))
        ratio = f"{ours / base:7.2f}" if base else "      -"
        lib = f"{base * 1e6:16.1f}" if base else f"{'-':>16}"
        print(f"{kind:14} {ours * 1e6:15.1f} {lib} {ratio}")


if __name__ == "__main__":
    main()
