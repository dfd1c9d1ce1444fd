"""Testing criteria by short names, for front ends that let a person pick graders
(`cumulo eval run --grader`, the console's Evaluations page): each name becomes the
criterion `POST /v1/evals` takes, grading the sample's text against the item's `ideal`.

- `exact`, `contains`: string checks (`eq`; `ilike`, contains ignoring case);
- `fuzzy_match`, `bleu`, `gleu`, `meteor`, `cosine`, `rouge_1`…`rouge_5`, `rouge_l`:
  text similarity, passing at a score of at least the threshold (0 to 1, default 0.8);
  `cosine` compares the vectors of a cumulo embedding model;
- `judge`: a cumulo chat model labels the answer correct or incorrect.

A bad choice raises `CriterionInvalid` naming what to fix: `grader`, `threshold`,
`judge` or `embedding_model` (each front end names its own field or option).
"""

from __future__ import annotations

import math
from typing import Any

from cumulo.evals.graders import CriterionInvalid

SIMILARITY = (
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "cosine",
    "rouge_1",
    "rouge_2",
    "rouge_3",
    "rouge_4",
    "rouge_5",
    "rouge_l",
)
STRING_CHECKS = {"exact": "eq", "contains": "ilike"}
GRADERS = (*STRING_CHECKS, "judge", *SIMILARITY)
DEFAULT_THRESHOLD = 0.8
JUDGE_PROMPT = (
    "Is the answer correct, given the reference?\n\nQuestion: {{item.input}}\n"
    "Reference: {{item.ideal}}\nAnswer: {{sample.output_text}}"
)
OUTPUT, IDEAL = "{{sample.output_text}}", "{{item.ideal}}"

__all__ = [
    "DEFAULT_THRESHOLD",
    "GRADERS",
    "JUDGE_PROMPT",
    "SIMILARITY",
    "STRING_CHECKS",
    "criterion",
    "from_spec",
]


def criterion(
    name: str,
    threshold: float | None = None,
    judge: str | None = None,
    embedder: str | None = None,
) -> dict[str, Any]:
    """The criterion called `name` (one of `GRADERS`). `threshold`: the pass threshold of
    a similarity metric; `judge`: the chat model of `judge`; `embedder`: the embedding
    model of `cosine`."""
    if name in STRING_CHECKS:
        return {
            "type": "string_check",
            "name": name,
            "input": OUTPUT,
            "reference": IDEAL,
            "operation": STRING_CHECKS[name],
        }
    if name == "judge":
        if not judge:
            raise CriterionInvalid("judge", "the judge grader needs a judge model")
        return {
            "type": "label_model",
            "name": "judge",
            "model": judge,
            "input": [{"role": "user", "content": JUDGE_PROMPT}],
            "labels": ["correct", "incorrect"],
            "passing_labels": ["correct"],
        }
    if name in SIMILARITY:
        value = DEFAULT_THRESHOLD if threshold is None else threshold
        if not math.isfinite(value) or not 0.0 <= value <= 1.0:
            raise CriterionInvalid(
                "threshold", f"{name}: the threshold must be a number from 0 to 1"
            )
        out: dict[str, Any] = {
            "type": "text_similarity",
            "name": name,
            "input": OUTPUT,
            "reference": IDEAL,
            "evaluation_metric": name,
            "pass_threshold": value,
        }
        if name == "cosine":
            if not embedder:
                raise CriterionInvalid("embedding_model", "cosine needs an embedding model")
            out["model"] = embedder
        return out
    raise CriterionInvalid("grader", f"{name[:64]!r} is not a grader: one of {', '.join(GRADERS)}")


def from_spec(spec: str, judge: str | None = None, embedder: str | None = None) -> dict[str, Any]:
    """The criterion of `NAME[:THRESHOLD]` (the CLI's `--grader`)."""
    name, sep, raw = spec.partition(":")
    threshold = None
    if sep and raw:
        if name not in SIMILARITY:
            raise CriterionInvalid("grader", f"{spec!r}: only similarity graders take a threshold")
        try:
            threshold = float(raw)
        except ValueError:
            raise CriterionInvalid(
                "threshold", f"{spec!r}: the threshold must be a number from 0 to 1"
            ) from None
    return criterion(name, threshold, judge, embedder)
