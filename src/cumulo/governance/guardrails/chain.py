"""Several guardrails applied in order, as one (a model's guardrails, then its tenant's).

Each guardrail sees the text as the previous one left it (anonymized); the first
that blocks decides, and its blocked message is the one returned.
"""

from __future__ import annotations

from collections.abc import Sequence

from cumulo.governance.guardrails.config import Source
from cumulo.governance.guardrails.findings import Finding
from cumulo.governance.guardrails.policy import Guardrail, Verdict
from cumulo.governance.guardrails.stream import StreamCheck, StreamChecker


class GuardrailSet:
    """An ordered list of guardrails with the interface of one."""

    def __init__(self, guardrails: Sequence[Guardrail]) -> None:
        self.guardrails = tuple(guardrails)

    def __bool__(self) -> bool:
        return bool(self.guardrails)

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(g.id for g in self.guardrails)

    def check(self, text: str, source: Source) -> Verdict:
        return self.check_blocks([text], source)

    def check_blocks(self, texts: Sequence[str], source: Source) -> Verdict:
        outputs = tuple(texts)
        findings: list[Finding] = []
        for g in self.guardrails:
            v = g.check_blocks(outputs, source)
            findings.extend(v.findings)
            if v.blocked:
                return Verdict("GUARDRAIL_INTERVENED", True, v.outputs, tuple(findings))
            outputs = v.outputs
        if not findings:
            return Verdict("NONE", False, outputs, ())
        return Verdict("GUARDRAIL_INTERVENED", False, outputs, tuple(findings))

    def stream_checker(self) -> ChainedStreamChecker:
        return ChainedStreamChecker([g.stream_checker() for g in self.guardrails])


class ChainedStreamChecker:
    """Stream checkers in series: each one's released text feeds the next."""

    def __init__(self, checkers: Sequence[StreamChecker]) -> None:
        self.checkers = list(checkers)
        self.blocked = False

    @property
    def findings(self) -> list[Finding]:
        return [f for c in self.checkers for f in c.findings]

    @property
    def intervened(self) -> bool:
        return any(c.intervened for c in self.checkers)

    def feed(self, delta: str) -> StreamCheck:
        return self._through(delta, final=False)

    def finish(self) -> StreamCheck:
        return self._through("", final=True)

    def _through(self, text: str, final: bool) -> StreamCheck:
        found: list[Finding] = []
        for c in self.checkers:
            step = c.feed(text) if text else StreamCheck("")
            if final and not step.blocked:
                tail = c.finish()
                step = StreamCheck(
                    step.text + tail.text, tail.blocked, tail.message, step.findings + tail.findings
                )
            found.extend(step.findings)
            if step.blocked:
                self.blocked = True
                return StreamCheck("", True, step.message, tuple(found))
            text = step.text
        return StreamCheck(text, findings=tuple(found))
