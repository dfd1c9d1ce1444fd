"""The request context: one per request, created as it enters the gateway, settled once.

It carries who is calling, the endpoint, the model asked for, the start time, the
governance admission and the router's lease, and the guardrail interventions so far.
`settle()` does the request's accounting exactly once, however it ends: the
deployment's health (the lease), the usage record (journaled and queued), the
governance steps after it (limits, budget, anomaly baseline, invocation log) and the
metrics. None of it does I/O.

`Accounting` is what settling writes to; the gateway owns one and hands it to every
context it creates.
"""

from __future__ import annotations

import time
from collections.abc import Container
from dataclasses import dataclass, field
from typing import Any

from cumulo.governance.chain import Admission, Governance
from cumulo.governance.identity.auth import Principal
from cumulo.governance.telemetry.usage import UsageRecord, UsageRecorder
from cumulo.observability.metrics import UNKNOWN_MODEL, Metrics
from cumulo.routing.router import Lease
from cumulo.types import ChatRequest, Usage


@dataclass(slots=True)
class Accounting:
    """Where settled requests go: usage records, governance, metrics.

    `known` holds the catalog's model names: a name not in it is recorded as `_unknown`,
    as the metrics count it, so that callers cannot add rows to usage reports by making
    names up."""

    usage: UsageRecorder
    known: Container[str]
    metrics: Metrics | None = None
    governance: Governance | None = None


@dataclass(slots=True)
class RequestContext:
    """One request on its way through the gateway; see the module docstring."""

    books: Accounting
    who: Principal
    endpoint: str
    model: str  # as the caller asked for it (fallbacks are in the lease)
    stream: bool
    started: float = field(default_factory=time.perf_counter)
    client: str | None = None
    admitted: Admission | None = None
    lease: Lease[Any] | None = None
    interventions: int = 0  # guardrail interventions so far
    request: ChatRequest | None = None  # as sent on, for the invocation log
    settled: bool = False

    def settle(
        self,
        ok: bool | None = None,
        *,
        usage: Usage | None = None,
        status: int = 200,
        error: str | None = None,
        ttft: float | None = None,
        queue_ms: float | None = None,
        attempts: int = 0,
        response: str | None = None,
    ) -> None:
        """Account the finished request, once (later calls do nothing).

        `ok` is the deployment's verdict for its lease (True, False: a deployment failure,
        None: none); `attempts` counts the router's attempts when no lease was had."""
        if self.settled:
            return
        self.settled = True
        lease = self.lease
        if lease is not None:
            lease.finish(ok, ttft)
        books = self.books
        model = self.model if self.model in books.known else UNKNOWN_MODEL
        who = self.who
        started = self.started
        latency = time.perf_counter() - started
        deployment = lease.deployment.label if lease else None
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        cached = usage.cached_tokens if usage else 0
        price = lease.deployment.price if lease else None
        cost: float | None = None  # unknown: a remote deployment the price table does not know
        if price is not None:
            cost = price.cost(prompt, completion, cached)
        elif lease is not None and lease.deployment.provider.deployment.provider == "local":
            cost = 0.0  # local compute with no `pricing.local` rate set
        rec = UsageRecord(
            key_id=who.key_id,
            endpoint=self.endpoint,
            model=model,
            deployment=deployment,
            stream=self.stream,
            prompt_tokens=prompt,
            completion_tokens=completion,
            latency_ms=latency * 1000.0,
            ttft_ms=None if ttft is None else (ttft - started) * 1000.0,
            status=status,
            error_type=error,
            served_model=lease.model if lease else None,
            attempts=lease.attempts if lease else attempts,
            queue_ms=queue_ms,
            tenant_id=who.tenant_id,
            cost_usd=cost,
            guardrail_interventions=self.interventions,
            cached_tokens=cached,
        )
        books.usage.record(rec)
        if books.governance is not None:
            req = self.request
            logged = _logged(req) if req is not None and who.log_invocations else None
            books.governance.finished(self.admitted, rec, logged, response)
        if books.metrics is not None:
            books.metrics.observe(
                model,
                deployment,
                status,
                prompt,
                completion,
                latency,
                None if ttft is None else ttft - started,
            )


def _logged(req: ChatRequest) -> list[dict[str, Any]]:
    """What the invocation log keeps of a request: its messages."""
    return [{"role": m.role, "content": m.content} for m in req.messages]
