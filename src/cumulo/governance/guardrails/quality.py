"""Precision and recall of the detectors on labelled sets (`tests/data/guardrails/`).

Sets are JSON Lines. Prompt attacks: `{"text", "label": "attack" | "benign"}`,
scored per prompt. Sensitive information: `{"text", "entities": [[TYPE, VALUE], ...]}`,
scored per (type, value) pair found, so a value found with the wrong type or
the wrong extent counts as one false positive and one false negative.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cumulo.governance.guardrails import attacks
from cumulo.governance.guardrails.config import PII_TYPES
from cumulo.governance.guardrails.pii import PiiScanner


@dataclass
class Scores:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    errors: list[str] = field(default_factory=list)  # "FP …" / "FN …", for reading

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0


def _lines(path: Path) -> Iterable[dict[str, object]]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def attack_scores(path: Path, threshold: float = attacks.STRENGTH_THRESHOLD["high"]) -> Scores:
    """The prompt-attack scorer at `threshold` on a labelled set of prompts."""
    s = Scores()
    for row in _lines(path):
        text, attack = str(row["text"]), row["label"] == "attack"
        flagged = attacks.score(text).score >= threshold
        if flagged and attack:
            s.tp += 1
        elif flagged:
            s.fp += 1
            s.errors.append(f"FP {text[:80]}")
        elif attack:
            s.fn += 1
            s.errors.append(f"FN {text[:80]}")
    return s


def pii_scores_by_type(path: Path, scanner: PiiScanner | None = None) -> dict[str, Scores]:
    """The sensitive-information detectors on a labelled set of texts, type by type."""
    scanner = scanner or PiiScanner(PII_TYPES)
    by_type: dict[str, Scores] = {}
    for row in _lines(path):
        text = str(row["text"])
        entities = row["entities"]
        assert isinstance(entities, list)
        gold = Counter((str(kind), str(value)) for kind, value in entities)
        found = Counter((sp.type, text[sp.start : sp.end]) for sp in scanner.scan(text))
        for (kind, _), n in (gold & found).items():
            by_type.setdefault(kind, Scores()).tp += n
        for (kind, value), n in (found - gold).items():
            s = by_type.setdefault(kind, Scores())
            s.fp += n
            s.errors.append(f"FP {kind} {value!r}")
        for (kind, value), n in (gold - found).items():
            s = by_type.setdefault(kind, Scores())
            s.fn += n
            s.errors.append(f"FN {kind} {value!r}")
    return dict(sorted(by_type.items()))


def pii_scores(path: Path, scanner: PiiScanner | None = None) -> Scores:
    """The sensitive-information detectors (all types together) on a labelled set of texts."""
    total = Scores()
    for s in pii_scores_by_type(path, scanner).values():
        total.tp += s.tp
        total.fp += s.fp
        total.fn += s.fn
        total.errors += s.errors
    return total
