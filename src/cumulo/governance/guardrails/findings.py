"""What a guardrail found: one `Finding` per match, shared by whole-text and stream checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cumulo.governance.guardrails import attacks

Policy = Literal["sensitive_information", "regex", "word", "topic", "prompt_attack"]
FindingAction = Literal["BLOCKED", "ANONYMIZED"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a guardrail found in one text block.

    `type` is the PII type, the custom regex's name, the topic's name, the denied
    phrase as configured, or `PROMPT_ATTACK`. `match` is the text found (empty for
    a prompt attack); `start`/`end` locate it in block `block` of the checked input.
    `rule` names the rule that matched without quoting it: `type`, except for a denied
    phrase, named by its place in the guardrail's `denied_words` (`denied_words.2`).
    """

    guardrail_id: str
    policy: Policy
    type: str
    action: FindingAction
    match: str = ""
    start: int = 0
    end: int = 0
    block: int = 0
    confidence: attacks.Confidence | None = None
    score: float | None = None
    rule: str = ""

    @property
    def rule_id(self) -> str:
        return self.rule or self.type
