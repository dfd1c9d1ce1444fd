"""Bedrock ApplyGuardrail: check content against one of cumulo's guardrails.

Implements `API_runtime_ApplyGuardrail` of the Amazon Bedrock Runtime API reference:
`POST /guardrail/{guardrailIdentifier}/version/{guardrailVersion}/apply`, plus the
short form `POST /guardrail/{id}/apply`. The identifier is a cumulo guardrail id
(or a Bedrock guardrail ARN ending in one). Guardrails are not versioned: any valid
version (`DRAFT` or a number) names the current configuration. Callers
authenticate as for Converse: SigV4 with a cumulo key, or `Authorization: Bearer`.
A key may apply the guardrails that guard its own traffic (its tenant's, and those of
the models it may use) and the built-in ones; a platform admin key, any. Any other is
answered 404, as if it did not exist.

Response: `action` (`NONE` or `GUARDRAIL_INTERVENED`); `outputs`, empty when
nothing was done, else the blocked message or one anonymized text per content
block; one `assessments` entry with the policies that found something
(`topicPolicy`, `wordPolicy`, `sensitiveInformationPolicy`, `contentPolicy` with
the `PROMPT_ATTACK` filter) and `invocationMetrics`; `usage` in Bedrock's text
units (1,000 characters) for each policy the guardrail has. With
`outputScope: FULL`, configured topics and the prompt-attack filter are listed
even when not detected. Sensitive-information types with no Bedrock equivalent
keep cumulo's names (`ES_NATIONAL_ID`, `IN_AADHAAR`, `API_KEY`, `PRIVATE_KEY`,
`SECRET`). Image content is refused (ValidationException).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cumulo.api.bedrock.service import BEDROCK, sigv4_or_bearer
from cumulo.api.http import JSONResponse, guarded
from cumulo.errors import InvalidRequest, NotFound
from cumulo.governance.guardrails import attacks
from cumulo.governance.guardrails.config import Source
from cumulo.governance.guardrails.findings import Finding
from cumulo.governance.guardrails.policy import Guardrail, Verdict
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.types import JSON

Authenticate = Callable[[Request], Awaitable[tuple[Principal, bytes]]]
"""Authenticates a request and returns its principal and body (SigV4 signs the body)."""
OnApply = Callable[[Principal, Guardrail, Source, Verdict], None]
"""Called after each check (usage, ledger); must not block, nor log matched text."""
MayApply = Callable[[Principal, str], bool]
"""Whether a caller may apply the guardrail with this id (`Guarding.may_apply`)."""

_VERSION = re.compile(r"^(?:[1-9][0-9]{0,7}|DRAFT)$")
_ARN = re.compile(r"^arn:aws(?:-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:guardrail/(.+)$")
TEXT_UNIT = 1000  # characters per Bedrock guardrail text unit


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GuardrailTextBlock(_Wire):
    text: str
    qualifiers: list[Literal["grounding_source", "query", "guard_content"]] | None = None


class GuardrailContentBlock(_Wire):
    model_config = ConfigDict(extra="allow")

    text: GuardrailTextBlock | str | None = Field(
        None, description="Bedrock's `{text: {text}}`; a plain string is accepted too."
    )


class ApplyGuardrailRequest(_Wire):
    source: Source
    content: list[GuardrailContentBlock] = Field(min_length=1)
    outputScope: Literal["INTERVENTIONS", "FULL"] | None = None


def bedrock_authenticator(auth: Authenticator, max_body_bytes: int) -> Authenticate:
    """SigV4 (service `bedrock`) or bearer authentication, as the Converse endpoints do."""

    identify = sigv4_or_bearer(auth)

    async def authenticate(request: Request) -> tuple[Principal, bytes]:
        return await identify(request, max_body_bytes)

    return authenticate


def _texts(req: ApplyGuardrailRequest) -> list[str]:
    texts = []
    for i, block in enumerate(req.content):
        if block.text is None:
            kind = next(iter(block.model_extra or {}), "empty")
            raise InvalidRequest(
                f"Content block type '{kind}' at 'content.{i}' is not supported; send text.",
                param=f"content.{i}.{kind}",
            )
        texts.append(block.text if isinstance(block.text, str) else block.text.text)
    return texts


def guardrail_id(identifier: str) -> str:
    """The guardrail id in a path identifier: the id itself or a guardrail ARN's last part."""
    m = _ARN.match(identifier)
    return m.group(1) if m else identifier


# -- rendering ----------------------------------------------------------------------


def _dedupe(items: list[JSON]) -> list[JSON]:
    seen: set[tuple[object, ...]] = set()
    out = []
    for item in items:
        key = tuple(item.values())
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _usage(guard: Guardrail, source: Source, chars: int) -> JSON:
    c = guard.config
    units = math.ceil(chars / TEXT_UNIT) if guard.applies(source) else 0
    pii = c.pii
    attack = c.prompt_attack is not None and c.prompt_attack.enabled and source == "INPUT"
    return {
        "topicPolicyUnits": units if c.denied_topics else 0,
        "contentPolicyUnits": units if attack else 0,
        "wordPolicyUnits": units if c.denied_words else 0,
        "sensitiveInformationPolicyUnits": units if pii and pii.entities else 0,
        "sensitiveInformationPolicyFreeUnits": units if pii and pii.regexes else 0,
        "contextualGroundingPolicyUnits": 0,
    }


def _by(findings: Sequence[Finding], policy: str) -> list[Finding]:
    return [f for f in findings if f.policy == policy]


def render_assessment(
    guard: Guardrail,
    verdict: Verdict,
    texts: Sequence[str],
    source: Source,
    full: bool,
    latency_ms: int,
) -> JSON:
    """One GuardrailAssessment: the policies that found something, and invocation metrics."""
    f = verdict.findings
    c = guard.config
    checked = guard.applies(source)
    out: JSON = {}
    topics = [
        {"name": t.type, "type": "DENY", "action": "BLOCKED", "detected": True}
        for t in _by(f, "topic")
    ]
    if full and checked:
        found = {t.type for t in _by(f, "topic")}
        topics += [
            {"name": t.name, "type": "DENY", "action": "NONE", "detected": False}
            for t in c.denied_topics
            if t.name not in found
        ]
    if topics:
        out["topicPolicy"] = {"topics": _dedupe(topics)}
    attack = c.prompt_attack
    found_attacks = sorted(_by(f, "prompt_attack"), key=lambda a: a.score or 0.0, reverse=True)
    filters = [
        {"type": "PROMPT_ATTACK", "confidence": a.confidence, "action": "BLOCKED", "detected": True}
        for a in found_attacks[:1]
    ]
    if full and checked and not filters and attack and attack.enabled and source == "INPUT":
        best = max(attacks.score(t).score for t in texts)
        filters = [
            {"type": "PROMPT_ATTACK", "confidence": attacks.confidence(best), "action": "NONE",
             "detected": False}
        ]  # fmt: skip
    if filters and attack is not None:
        for item in filters:
            item["filterStrength"] = attack.strength.upper()
        out["contentPolicy"] = {"filters": filters}
    words = [{"match": w.type, "action": "BLOCKED", "detected": True} for w in _by(f, "word")]
    if words:
        out["wordPolicy"] = {"customWords": _dedupe(words), "managedWordLists": []}
    pii = [
        {"match": p.match, "type": p.type, "action": p.action, "detected": True}
        for p in _by(f, "sensitive_information")
    ]
    regexes = [
        {"name": r.type, "match": r.match, "regex": guard.regex_pattern(r.type),
         "action": r.action, "detected": True}
        for r in _by(f, "regex")
    ]  # fmt: skip
    if pii or regexes:
        out["sensitiveInformationPolicy"] = {"piiEntities": pii, "regexes": regexes}
    chars = sum(len(t) for t in texts)
    out["invocationMetrics"] = {
        "guardrailProcessingLatency": latency_ms,
        "usage": _usage(guard, source, chars),
        "guardrailCoverage": {
            "textCharacters": {"guarded": chars if checked else 0, "total": chars}
        },
    }
    return out


def render_apply(
    guard: Guardrail, verdict: Verdict, texts: Sequence[str], source: Source, full: bool,
    latency_ms: int,
) -> JSON:  # fmt: skip
    """The ApplyGuardrail response body."""
    assessment = render_assessment(guard, verdict, texts, source, full, latency_ms)
    chars = sum(len(t) for t in texts)
    return {
        "usage": assessment["invocationMetrics"]["usage"],
        "action": verdict.action,
        "outputs": [{"text": t} for t in verdict.outputs] if verdict.intervened else [],
        "assessments": [assessment],
        "guardrailCoverage": {
            "textCharacters": {"guarded": chars if guard.applies(source) else 0, "total": chars}
        },
    }


# -- routes -------------------------------------------------------------------------


def guardrail_routes(
    guardrails: Mapping[str, Guardrail],
    authenticate: Authenticate,
    on_apply: OnApply | None = None,
    *,
    may_apply: MayApply,
) -> list[Route]:
    """The ApplyGuardrail routes over `guardrails` (by id; the mapping may change later).

    A guardrail the caller may not apply (`may_apply`) is answered as one that does not
    exist (404), so that ids cannot be probed either.
    """

    async def apply(request: Request) -> Response:
        """POST /guardrail/{guardrailIdentifier}/version/{guardrailVersion}/apply."""
        started = time.perf_counter()
        who, body = await authenticate(request)
        version = request.path_params.get("version")
        if version is not None and not _VERSION.match(version):
            raise InvalidRequest(
                f"Value '{version}' at 'guardrailVersion' failed to satisfy constraint: "
                "must be DRAFT or a version number.",
                param="guardrailVersion",
            )
        gid = guardrail_id(request.path_params["guardrail_id"])
        guard = guardrails.get(gid)
        if guard is None or not may_apply(who, gid):
            raise NotFound(f"The guardrail '{gid}' was not found.", code="guardrail_not_found")
        req = BEDROCK.parse(ApplyGuardrailRequest.model_validate_json, body)
        texts = _texts(req)
        verdict = guard.check_blocks(texts, req.source)
        if on_apply is not None:
            on_apply(who, guard, req.source, verdict)
        latency = round((time.perf_counter() - started) * 1000)
        full = req.outputScope == "FULL"
        return JSONResponse(
            render_apply(guard, verdict, texts, req.source, full, latency),
            headers={"x-amzn-requestid": str(uuid.uuid4())},
        )

    endpoint = guarded(apply, BEDROCK.error_response)
    return [
        Route("/guardrail/{guardrail_id:path}/version/{version}/apply", endpoint, methods=["POST"]),
        Route("/guardrail/{guardrail_id:path}/apply", endpoint, methods=["POST"]),
    ]
