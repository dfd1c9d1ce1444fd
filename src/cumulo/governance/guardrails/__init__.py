"""Guardrails: named policies checking inputs and outputs.

Policies: sensitive information (personal data and secrets, anonymized or
blocked; `pii`, `credentials`, `checksums`), prompt attacks (`attacks`), denied
words and topics (`words`). `Guardrail` (`policy`) applies one configured
guardrail to a text; `GuardrailSet` (`chain`) applies several in order;
`stream_checker()` (`stream`) checks streamed output incrementally.
Configuration models are in `config`; `default_guardrails()` is the embedded
default's `pii-anonymize`.
"""

from __future__ import annotations

from cumulo.governance.guardrails.chain import ChainedStreamChecker, GuardrailSet
from cumulo.governance.guardrails.config import (
    PII_TYPES,
    DeniedTopicConfig,
    GuardrailConfig,
    PiiConfig,
    PiiType,
    PromptAttackConfig,
    RegexConfig,
    Source,
    default_guardrails,
)
from cumulo.governance.guardrails.findings import Finding
from cumulo.governance.guardrails.policy import Guardrail, Verdict
from cumulo.governance.guardrails.stream import StreamCheck, StreamChecker

__all__ = [
    "PII_TYPES",
    "ChainedStreamChecker",
    "DeniedTopicConfig",
    "Finding",
    "Guardrail",
    "GuardrailConfig",
    "GuardrailSet",
    "PiiConfig",
    "PiiType",
    "PromptAttackConfig",
    "RegexConfig",
    "Source",
    "StreamCheck",
    "StreamChecker",
    "Verdict",
    "build_guardrails",
    "default_guardrails",
]


def build_guardrails(configs: list[GuardrailConfig]) -> dict[str, Guardrail]:
    """Each configured guardrail, by id (ids are unique: the configuration checks it)."""
    return {c.id: Guardrail(c) for c in configs}
