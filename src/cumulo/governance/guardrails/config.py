"""Guardrail configuration: the `guardrails:` section of cumulo.yaml.

A guardrail is a named policy; models and tenants name the guardrails they
use (`guardrails: [pii-anonymize]`). This module only declares the data: it
imports nothing from `cumulo.config`, which imports it.

```yaml
guardrails:
  - id: support-bot
    pii: {action: anonymize, overrides: {CREDIT_DEBIT_CARD_NUMBER: block}}
    prompt_attack: {strength: high}
    denied_words: [project falcon]
    denied_topics:
      - name: investment advice
        definition: Recommendations about what to invest in.
        keywords: ["which stock*", "invest in", "buy shares"]
        examples: ["Which stocks should I buy this year?"]
    blocked_input_message: Sorry, I can't help with that request.
```
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cumulo.governance.guardrails.words import phrase_pattern

PiiType = Literal[
    "EMAIL",
    "PHONE",
    "CREDIT_DEBIT_CARD_NUMBER",
    "INTERNATIONAL_BANK_ACCOUNT_NUMBER",
    "US_SOCIAL_SECURITY_NUMBER",
    "UK_NATIONAL_INSURANCE_NUMBER",
    "ES_NATIONAL_ID",
    "IN_AADHAAR",
    "AWS_ACCESS_KEY",
    "AWS_SECRET_KEY",
    "API_KEY",
    "PRIVATE_KEY",
    "SECRET",
]
"""Sensitive-data types. Names shared with Bedrock's PII entity types keep Bedrock's spelling;
`ES_NATIONAL_ID` (Spanish DNI/NIE), `IN_AADHAAR`, `API_KEY`, `PRIVATE_KEY` and `SECRET`
are cumulo's own."""
PII_TYPES: tuple[PiiType, ...] = get_args(PiiType)

Action = Literal["block", "anonymize"]
Source = Literal["INPUT", "OUTPUT"]
Strength = Literal["low", "medium", "high"]
Direction = Literal["input", "output"]
DIRECTIONS: tuple[Direction, ...] = ("input", "output")

DEFAULT_BLOCKED_MESSAGE = "Sorry, the model cannot answer this question."
_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegexConfig(_Strict):
    """A custom sensitive-data pattern (Bedrock's `regexesConfig`)."""

    name: str = Field(min_length=1, max_length=100)
    pattern: str = Field(min_length=1, max_length=500, description="A Python regular expression.")
    action: Action = "anonymize"
    description: str | None = None

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            compiled = re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        if compiled.search(""):
            raise ValueError("must not match the empty string")
        return v


class PiiConfig(_Strict):
    """Sensitive information: which types to detect and what to do with them."""

    entities: list[PiiType] = Field(
        default_factory=lambda: list(PII_TYPES),
        description="Types to detect (default: all).",
    )
    action: Action = Field(
        "anonymize",
        description="`anonymize` replaces a match with `{TYPE}`; `block` refuses the text.",
    )
    overrides: dict[PiiType, Action] = Field(
        default_factory=dict, description="Per-type action, overriding `action`."
    )
    regexes: list[RegexConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _regex_names(self) -> PiiConfig:
        names = [r.name for r in self.regexes]
        if len(set(names)) != len(names):
            raise ValueError("regexes: names must be unique")
        if clash := set(names) & set(PII_TYPES):
            raise ValueError(f"regexes: {sorted(clash)[0]} is a built-in type's name")
        return self


class PromptAttackConfig(_Strict):
    """Prompt-attack detection on inputs (jailbreaks, instruction overrides, prompt leaks).

    A weighted pattern scorer rates each input; its score maps to a confidence
    (LOW, MEDIUM, HIGH). As with Bedrock's filter strength, `high` blocks at LOW
    confidence and above, `medium` at MEDIUM and above, `low` at HIGH only.
    """

    enabled: bool = True
    strength: Strength = "high"
    threshold: float | None = Field(
        None, gt=0, description="A score threshold of its own, instead of `strength`'s."
    )


class DeniedTopicConfig(_Strict):
    """A topic the guardrail refuses, recognised by its keywords.

    Keywords are words or phrases matched whole and case-insensitively; a trailing
    `*` matches any ending (`invest*`: invest, investing, investments). The
    definition documents the intent; every example must be caught by the keywords
    (checked when the configuration is loaded).
    """

    name: str = Field(min_length=1, max_length=100)
    definition: str = ""
    keywords: list[str] = Field(min_length=1)
    examples: list[str] = Field(default_factory=list)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, v: list[str]) -> list[str]:
        for k in v:
            if not k.strip(" *"):
                raise ValueError("a keyword must contain a word")
        return v

    @model_validator(mode="after")
    def _examples_caught(self) -> DeniedTopicConfig:
        pattern = phrase_pattern(self.keywords)
        for i, example in enumerate(self.examples):
            if not pattern.search(example):
                raise ValueError(f"examples.{i} is matched by none of the keywords")
        return self


class GuardrailConfig(_Strict):
    """One named guardrail: its policies and the messages sent when it blocks."""

    id: str = Field(description="Lower-case letters, digits and hyphens; used in paths and config.")
    name: str | None = None
    description: str | None = None
    applies_to: list[Direction] = Field(default_factory=lambda: list(DIRECTIONS), min_length=1)
    pii: PiiConfig | None = None
    prompt_attack: PromptAttackConfig | None = Field(
        None, description="Checked on inputs only (an output is not an instruction)."
    )
    denied_words: list[str] = Field(
        default_factory=list, description="Words or phrases, matched whole and case-insensitively."
    )
    denied_topics: list[DeniedTopicConfig] = Field(default_factory=list)
    blocked_input_message: str = Field(DEFAULT_BLOCKED_MESSAGE, min_length=1)
    blocked_output_message: str = Field(DEFAULT_BLOCKED_MESSAGE, min_length=1)
    stream_holdback_chars: int | None = Field(
        None,
        ge=8,
        le=4096,
        description="Streamed output held back for checking (default: enough for the longest "
        "sensitive value or denied phrase).",
    )

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not _ID.match(v):
            raise ValueError("must be 1-64 lower-case letters, digits or hyphens")
        return v

    @field_validator("denied_words")
    @classmethod
    def _words(cls, v: list[str]) -> list[str]:
        for w in v:
            if not w.strip():
                raise ValueError("a denied word must not be blank")
        return v

    @model_validator(mode="after")
    def _unique_topics(self) -> GuardrailConfig:
        names = [t.name for t in self.denied_topics]
        if len(set(names)) != len(names):
            raise ValueError("denied_topics: names must be unique")
        return self

    def applies(self, source: Source) -> bool:
        return source.lower() in self.applies_to


def default_guardrails() -> list[GuardrailConfig]:
    """The embedded default's guardrails: `pii-anonymize`, every PII type anonymized both ways."""
    return [
        GuardrailConfig(
            id="pii-anonymize",
            name="Anonymize personal data and secrets",
            description="Replaces e-mail addresses, phone numbers, payment cards, IBANs, national "
            "ID numbers, API keys and other secrets with placeholders such as {EMAIL}, in "
            "prompts and in replies.",
            pii=PiiConfig(),
        )
    ]
