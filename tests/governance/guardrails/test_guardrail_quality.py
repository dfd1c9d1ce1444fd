"""Precision and recall of the detectors on the labelled sets in tests/data/guardrails.

The thresholds come from the held-out halves (`*.test.jsonl`), which were never used to
tune a pattern or a weight; see tests/data/guardrails/README.md. Measured when written:
prompt attacks P 1.00 / R 0.975 (39 of 40 attacks, no benign prompt flagged), sensitive
information P 1.00 / R 0.978 (45 of 46 values, no false positive).
"""

from __future__ import annotations

from pathlib import Path

from cumulo.governance.guardrails.quality import attack_scores, pii_scores

DATA = Path(__file__).parents[2] / "data" / "guardrails"


def test_prompt_attack_precision_and_recall_on_the_held_out_set() -> None:
    s = attack_scores(DATA / "prompt_attacks.test.jsonl")
    assert s.tp + s.fn == 40  # the set is what the README says
    assert s.precision >= 0.95, s.errors
    assert s.recall >= 0.92, s.errors


def test_pii_precision_and_recall_on_the_held_out_set() -> None:
    s = pii_scores(DATA / "pii.test.jsonl")
    assert s.tp + s.fn == 46
    assert s.precision >= 0.95, s.errors
    assert s.recall >= 0.95, s.errors


def test_the_development_sets_are_fully_right() -> None:
    """The patterns were tuned on these: a regression shows here first."""
    attacks, pii = (
        attack_scores(DATA / "prompt_attacks.dev.jsonl"),
        pii_scores(DATA / "pii.dev.jsonl"),
    )
    assert (attacks.fp, attacks.fn) == (0, 0), attacks.errors
    assert (pii.fp, pii.fn) == (0, 0), pii.errors
