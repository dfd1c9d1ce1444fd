"""A guardrail: one configured policy, checking a text and saying what to do with it.

    guard = Guardrail(config)
    verdict = guard.check("my card is 4111 1111 1111 1111", "INPUT")
    verdict.action      # "GUARDRAIL_INTERVENED"
    verdict.text        # "my card is {CREDIT_DEBIT_CARD_NUMBER}"

A verdict lists its findings (what was found, where, and the action taken on it).
A finding's `match` is the sensitive text itself: it may go back to the caller
who sent it, never into logs, usage or the ledger (`Verdict.summary()` is the
loggable form: policies and rule ids, never a matched or denied phrase). Streamed
output is checked with `Guardrail.stream_checker()` (`guardrails.stream`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cumulo.governance.guardrails import attacks
from cumulo.governance.guardrails.config import Action, GuardrailConfig, Source
from cumulo.governance.guardrails.findings import Finding, Policy
from cumulo.governance.guardrails.pii import MAX_SPACED_VALUE, PiiScanner
from cumulo.governance.guardrails.stream import StreamChecker
from cumulo.governance.guardrails.words import TopicMatcher, WordMatcher

VerdictAction = Literal["NONE", "GUARDRAIL_INTERVENED"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of checking text blocks.

    `outputs` holds one text per checked block, anonymized where needed, or the
    guardrail's blocked message alone when `blocked`. `action` is Bedrock's:
    `GUARDRAIL_INTERVENED` when anything was blocked or anonymized.
    """

    action: VerdictAction
    blocked: bool
    outputs: tuple[str, ...]
    findings: tuple[Finding, ...]

    @property
    def intervened(self) -> bool:
        return self.action == "GUARDRAIL_INTERVENED"

    @property
    def text(self) -> str:
        """The text to pass on: the (anonymized) blocks joined, or the blocked message."""
        return "".join(self.outputs)

    def summary(self) -> dict[str, object]:
        """A description safe for logs, usage and the ledger: counts by policy and rule id,
        never the matched text nor a denied phrase."""
        counts = Counter(f"{f.policy}:{f.rule_id}" for f in self.findings)
        return {
            "action": self.action,
            "blocked": self.blocked,
            "guardrails": sorted({f.guardrail_id for f in self.findings}),
            "findings": dict(sorted(counts.items())),
        }


def anonymize(text: str, findings: Sequence[Finding]) -> str:
    """`text` with each anonymized finding replaced by `{TYPE}` (findings must not overlap)."""
    spans = sorted((f for f in findings if f.action == "ANONYMIZED"), key=lambda f: f.start)
    if not spans:
        return text
    parts: list[str] = []
    pos = 0
    for f in spans:
        parts.append(text[pos : f.start])
        parts.append("{" + f.type + "}")
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)


class Guardrail:
    """A configured guardrail. Immutable and safe to share between requests."""

    def __init__(self, config: GuardrailConfig) -> None:
        self.config = config
        self.id = config.id
        pii = config.pii
        self._pii = (
            PiiScanner(pii.entities, [(r.name, re.compile(r.pattern)) for r in pii.regexes])
            if pii
            else None
        )
        self._pii_action: Action = pii.action if pii else "anonymize"
        self._pii_actions: dict[str, Action] = (
            {kind: action for kind, action in pii.overrides.items()} if pii else {}
        )
        self._pii_actions.update({r.name: r.action for r in pii.regexes} if pii else {})
        self._regex_patterns = {r.name: r.pattern for r in pii.regexes} if pii else {}
        self._words = WordMatcher(config.denied_words) if config.denied_words else None
        self._word_rules: dict[str, str] = {}
        for i, phrase in enumerate(config.denied_words):
            self._word_rules.setdefault(phrase, f"denied_words.{i}")
        self._topics = (
            TopicMatcher([(t.name, t.keywords) for t in config.denied_topics])
            if config.denied_topics
            else None
        )
        attack = config.prompt_attack
        self._attack_threshold = (
            None
            if attack is None or not attack.enabled
            else attack.threshold or attacks.STRENGTH_THRESHOLD[attack.strength]
        )
        self.holdback = config.stream_holdback_chars or max(
            MAX_SPACED_VALUE if pii else 0,
            self._words.longest + 1 if self._words else 0,
            self._topics.longest + 1 if self._topics else 0,
            8,
        )

    def applies(self, source: Source) -> bool:
        return self.config.applies(source)

    def regex_pattern(self, name: str) -> str | None:
        """The pattern of the custom regex `name` (for Bedrock's `regexes` assessment)."""
        return self._regex_patterns.get(name)

    def blocked_message(self, source: Source) -> str:
        c = self.config
        return c.blocked_input_message if source == "INPUT" else c.blocked_output_message

    def scan(self, text: str, source: Source, block: int = 0) -> list[Finding]:
        """Everything this guardrail finds in `text` (whether or not it applies to `source`,
        except prompt attacks, which are looked for in inputs only)."""
        gid = self.id
        found: list[Finding] = []
        if self._attack_threshold is not None and source == "INPUT":
            s = attacks.score(text)
            if s.score >= self._attack_threshold:
                found.append(
                    Finding(gid, "prompt_attack", "PROMPT_ATTACK", "BLOCKED", block=block,
                            confidence=s.confidence, score=s.score)
                )  # fmt: skip
        if self._topics is not None:
            for start, end, name in self._topics.find(text):
                found.append(
                    Finding(gid, "topic", name, "BLOCKED", text[start:end], start, end, block)
                )
        if self._words is not None:
            for start, end, phrase in self._words.find(text):
                found.append(
                    Finding(gid, "word", phrase, "BLOCKED", text[start:end], start, end, block,
                            rule=self._word_rules[phrase])
                )  # fmt: skip
        if self._pii is not None:
            for span in self._pii.scan(text):
                policy: Policy = (
                    "regex" if span.type in self._regex_patterns else "sensitive_information"
                )
                action = self._pii_actions.get(span.type, self._pii_action)
                found.append(
                    Finding(gid, policy, span.type,
                            "BLOCKED" if action == "block" else "ANONYMIZED",
                            text[span.start : span.end], span.start, span.end, block)
                )  # fmt: skip
        return found

    def check(self, text: str, source: Source) -> Verdict:
        """Check one text."""
        return self.check_blocks([text], source)

    def check_blocks(self, texts: Sequence[str], source: Source) -> Verdict:
        """Check several text blocks together (a request's messages, Bedrock's `content`)."""
        if not self.applies(source):
            return Verdict("NONE", False, tuple(texts), ())
        findings = [f for i, text in enumerate(texts) for f in self.scan(text, source, i)]
        if not findings:
            return Verdict("NONE", False, tuple(texts), ())
        if any(f.action == "BLOCKED" for f in findings):
            return Verdict(
                "GUARDRAIL_INTERVENED", True, (self.blocked_message(source),), tuple(findings)
            )
        outputs = tuple(
            anonymize(text, [f for f in findings if f.block == i]) for i, text in enumerate(texts)
        )
        return Verdict("GUARDRAIL_INTERVENED", False, outputs, tuple(findings))

    def stream_checker(self) -> StreamChecker:
        """An incremental checker for one streamed output (see `guardrails.stream`)."""
        return StreamChecker(self)

    def describe(self) -> dict[str, object]:
        """This guardrail for `GET /admin/guardrails`: id, name and its policies, no secrets."""
        c = self.config
        return {
            "id": c.id,
            "name": c.name,
            "description": c.description,
            "applies_to": list(c.applies_to),
            "pii": None
            if c.pii is None
            else {
                "entities": list(c.pii.entities),
                "action": c.pii.action,
                "overrides": dict(c.pii.overrides),
                "regexes": [r.name for r in c.pii.regexes],
            },
            "prompt_attack": None
            if self._attack_threshold is None
            else {"threshold": self._attack_threshold},
            "denied_words": len(c.denied_words),
            "denied_topics": [t.name for t in c.denied_topics],
        }
