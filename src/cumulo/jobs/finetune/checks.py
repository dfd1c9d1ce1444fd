"""Training data through the tenant's guardrails, before any training.

Every text of each example (system, user, tool and assistant turns: an attack or an
instruction planted in an assistant turn is what poisoning looks like) is checked as one
request's input would be, by the guardrails that guard the caller on the base model. A
guardrail that anonymizes rewrites the example; one that blocks flags it, and the job's
`flagged` policy then refuses the file (the default: an error naming the line) or drops
the flagged examples. What was found is kept as counts by policy and rule id, never the
text.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from cumulo.governance.guardrails import GuardrailSet

Flagged = Literal["refuse", "drop"]


@dataclass(slots=True)
class DataCheck:
    examples: list[list[dict[str, Any]]] = field(default_factory=list)
    findings: Counter[str] = field(default_factory=Counter)
    dropped: list[int] = field(default_factory=list)  # line numbers
    anonymized: int = 0
    refused_line: int | None = None

    @property
    def changed(self) -> bool:
        return bool(self.dropped or self.anonymized)

    def summary(self) -> dict[str, Any]:
        return {
            "findings": dict(sorted(self.findings.items())),
            "dropped": len(self.dropped),
            "anonymized": self.anonymized,
        }


def check_examples(
    guards: GuardrailSet,
    examples: list[list[dict[str, Any]]],
    lines: list[int],
    flagged: Flagged,
) -> DataCheck:
    out = DataCheck()
    for number, messages in zip(lines, examples, strict=True):
        verdict = guards.check_blocks([m["content"] for m in messages], "INPUT")
        out.findings.update(f"{f.policy}:{f.rule_id}" for f in verdict.findings)
        if verdict.blocked:
            if flagged == "refuse":
                out.refused_line = number
                return out
            out.dropped.append(number)
            continue
        if verdict.intervened:
            out.anonymized += 1
            messages = [
                {**m, "content": text} for m, text in zip(messages, verdict.outputs, strict=True)
            ]
        out.examples.append(messages)
    return out


__all__ = ["DataCheck", "Flagged", "check_examples"]
