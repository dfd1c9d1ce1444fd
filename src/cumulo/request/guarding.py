"""Guardrails applied to canonical chat requests, responses and streams.

A request for model M by a key of tenant T is checked by M's guardrails, then
T's (`models[].guardrails` in the config; `guardrails` of the tenant). Input:
the text of every system, user and tool message, as one check (so that an
attack split across messages is seen whole); a block answers with the
guardrail's blocked-input message and `finish_reason: content_filter`, without
calling any model; anonymization rewrites the messages before they leave.
Output: the reply's text (whole, or incrementally for streams: see
`guardrails.stream`), blocked or anonymized the same way.

Each intervention is counted in the request's usage record
(`guardrail_interventions`), in the metrics, and queued for the audit ledger
(`guardrail.intervened`, with counts by policy and rule id, never the matched text).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from typing import Literal

from cumulo.governance.guardrails import GuardrailSet, Verdict
from cumulo.governance.guardrails.chain import ChainedStreamChecker
from cumulo.governance.guardrails.policy import Guardrail
from cumulo.governance.identity.auth import Principal
from cumulo.types import (
    ChatRequest,
    ChatResponse,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)

InterventionHook = Callable[[Principal, str, Literal["INPUT", "OUTPUT"], Verdict], None]
_CHECKED_ROLES = ("system", "user", "tool")


class Guarding:
    def __init__(
        self,
        guardrails: Mapping[str, Guardrail],
        model_guardrails: Mapping[str, list[str]],
        on_intervention: InterventionHook | None = None,
        public: Iterable[str] = (),
    ) -> None:
        """`public`: ids of guardrails any key may apply on its own (the built-in ones,
        whose policies are documented); see `may_apply`."""
        self.guardrails = dict(guardrails)
        self.model_guardrails = {m: tuple(ids) for m, ids in model_guardrails.items() if ids}
        self.on_intervention = on_intervention
        self.public = frozenset(public)
        self._sets: dict[tuple[tuple[str, ...], tuple[str, ...]], GuardrailSet | None] = {}

    def for_request(self, who: Principal, model: str) -> GuardrailSet | None:
        """The guardrails for `who` calling `model` (None: none apply). Cached."""
        model_ids = self.model_guardrails.get(model, ())
        if not model_ids and not who.guardrails:
            return None
        key = (model_ids, who.guardrails)
        if key not in self._sets:
            ids = list(dict.fromkeys(model_ids + who.guardrails))  # in order, once each
            found = [self.guardrails[i] for i in ids if i in self.guardrails]
            self._sets[key] = GuardrailSet(found) if found else None
        return self._sets[key]

    def may_apply(self, who: Principal, guardrail_id: str) -> bool:
        """May `who` apply guardrail `guardrail_id` to a text of its own (ApplyGuardrail)?

        A platform admin may apply any; another key only those that already guard its
        traffic (its tenant's, or those of a model it may use) and the public ones. Any
        other would tell it what a guardrail of another tenant denies.
        """
        if who.is_admin or guardrail_id in self.public or guardrail_id in who.guardrails:
            return True
        return any(
            guardrail_id in ids and who.may_use(model)
            for model, ids in self.model_guardrails.items()
        )

    def _report(self, who: Principal, model: str, source: Literal["INPUT", "OUTPUT"],
                verdict: Verdict) -> None:  # fmt: skip
        if self.on_intervention is not None:
            self.on_intervention(who, model, source, verdict)

    def check_input(
        self, guards: GuardrailSet, who: Principal, req: ChatRequest
    ) -> tuple[ChatRequest, Verdict | None]:
        """The request as it may go on (anonymized), and the verdict if it intervened."""
        checked = [i for i, m in enumerate(req.messages) if m.role in _CHECKED_ROLES and m.content]
        if not checked:
            return req, None
        verdict = guards.check_blocks([req.messages[i].content or "" for i in checked], "INPUT")
        if not verdict.intervened:
            return req, None
        self._report(who, req.model, "INPUT", verdict)
        if verdict.blocked:
            return req, verdict
        messages = list(req.messages)
        for i, text in zip(checked, verdict.outputs, strict=True):
            messages[i] = dataclasses.replace(messages[i], content=text)
        return dataclasses.replace(req, messages=messages), verdict

    def check_output(
        self, guards: GuardrailSet, who: Principal, model: str, resp: ChatResponse
    ) -> tuple[ChatResponse, Verdict | None]:
        text = resp.message.content
        if not text:
            return resp, None
        verdict = guards.check(text, "OUTPUT")
        if not verdict.intervened:
            return resp, None
        self._report(who, model, "OUTPUT", verdict)
        message = dataclasses.replace(resp.message, content=verdict.text)
        if verdict.blocked:
            message.tool_calls = None
            return dataclasses.replace(
                resp, message=message, finish_reason="content_filter"
            ), verdict
        return dataclasses.replace(resp, message=message), verdict

    def stream_verdict(self, who: Principal, model: str, checker: ChainedStreamChecker) -> None:
        """Report a finished stream's interventions (once, when it ends)."""
        if checker.intervened:
            findings = tuple(checker.findings)
            verdict = Verdict("GUARDRAIL_INTERVENED", checker.blocked, (), findings)
            self._report(who, model, "OUTPUT", verdict)


def blocked_reply(req: ChatRequest, verdict: Verdict) -> ChatResponse:
    """The answer to a blocked request: the guardrail's message, no model called."""
    return ChatResponse(
        id="",
        model=req.model,
        created=0,
        message=Message("assistant", verdict.text),
        finish_reason="content_filter",
        usage=Usage(0, 0),
    )


async def guard_stream(
    events: AsyncIterator[StreamEvent], checker: ChainedStreamChecker
) -> AsyncGenerator[StreamEvent, None]:
    """`events` with their text checked as it goes: held back a little, anonymized, or cut
    off with the blocked-output message and `finish_reason: content_filter`."""
    async for event in events:
        if isinstance(event, TextDelta):
            step = checker.feed(event.text)
        elif isinstance(event, StreamEnd):
            step = checker.finish()
        else:
            yield event  # tool-call deltas pass as they are
            continue
        if step.blocked:
            if step.message:
                yield TextDelta(step.message)
            usage = event.usage if isinstance(event, StreamEnd) else None
            yield StreamEnd("content_filter", usage)
            return
        if step.text:
            yield TextDelta(step.text)
        if isinstance(event, StreamEnd):
            yield event
            return
