"""The gateway: what every front door calls with canonical requests.

It hands the request to the router (deployment choice, retries, failover,
fallbacks), times the call and, for each request, queues exactly one usage
record and counts it in the metrics. Front doors only translate their wire
format to and from the canonical types and call these methods. What a call
tells them, and how a stream is metered as it goes, is in `cumulo.metering`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cumulo.errors import NotFound, UpstreamTimeout
from cumulo.governance.auth import Principal
from cumulo.governance.chain import Admission, Governance
from cumulo.governance.guarding import Guarding, blocked_reply
from cumulo.governance.guardrails import GuardrailSet, Verdict
from cumulo.governance.limits import Limits
from cumulo.governance.usage import UsageRecord, UsageRecorder
from cumulo.inflight import InFlight
from cumulo.metering import (
    BlockedStream,
    CallInfo,
    MeteredStream,
    aclose_stream,
    call_info,
    error_type_of,
    status_of,
)
from cumulo.observability.metrics import UNKNOWN_MODEL, Metrics
from cumulo.providers.base import Provider
from cumulo.routing.router import Lease, Router
from cumulo.types import (
    ChatRequest,
    ChatResponse,
    ChatStream,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelKind,
    StreamEnd,
    StreamEvent,
    Usage,
)

T = TypeVar("T")
# Takes a request's accounting to run with its response, just before it is sent (`Gateway.chat`).
Defer = Callable[[Callable[[], None]], None]


def estimate_prompt_tokens(req: ChatRequest) -> int:
    """A cheap estimate (about 4 characters a token) for context-window routing."""
    chars = sum(len(m.content or "") for m in req.messages)
    return chars // 4


class Gateway:
    def __init__(
        self,
        router: Router,
        usage: UsageRecorder,
        metrics: Metrics | None = None,
        governance: Governance | None = None,
        guarding: Guarding | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self.router = router
        self.in_flight = in_flight  # streams register here while they stream
        self.usage = usage
        self.metrics = metrics
        self.governance = governance
        self.guarding = guarding or Guarding({}, {})  # none configured: checks nothing
        # Whether any deployment has limits of its own (else attempts need no wrapper).
        self._deployment_limits = any(
            d.provider.deployment.limits is not None
            for route in router.routes.values()
            for d in route.deployments
        )
        # Each model's `default_max_tokens`, for the chat requests that give none.
        self._default_max_tokens = {
            name: route.config.default_max_tokens
            for name, route in router.routes.items()
            if route.config.default_max_tokens is not None
        }

    def _guard_input(
        self, who: Principal, req: ChatRequest
    ) -> tuple[GuardrailSet | None, ChatRequest, Verdict | None]:
        """The guardrails of this request, the request as it may go on, and the input
        verdict if a guardrail intervened."""
        if not who.may_use(req.model):
            return None, req, None  # refused by `_route`, unguarded
        guards = self.guarding.for_request(who, req.model)
        if guards is None:
            return None, req, None
        req, verdict = self.guarding.check_input(guards, who, req)
        return guards, req, verdict

    def _blocked(
        self, who: Principal, endpoint: str, req: ChatRequest, started: float, verdict: Verdict,
        stream: bool,
    ) -> ChatResponse:  # fmt: skip
        """A request an input guardrail blocked: recorded, answered without any model."""
        self._record(who, endpoint, req.model, stream=stream, started=started, interventions=1)
        return blocked_reply(req, verdict)

    def _record(
        self,
        who: Principal,
        endpoint: str,
        model: str,
        *,
        stream: bool,
        started: float,
        lease: Lease[Any] | None = None,
        attempts: int = 0,
        usage: Usage | None = None,
        ttft: float | None = None,
        status: int = 200,
        error: str | None = None,
        queue_ms: float | None = None,
        adm: Admission | None = None,
        interventions: int = 0,
        request: ChatRequest | None = None,
        response: str | None = None,
    ) -> None:
        """Queue the request's usage record, count it in the metrics and settle its
        governance (limits, budget, anomaly baseline, invocation log): no I/O.

        A model name not in the catalog is recorded as `_unknown`, as the metrics count it,
        so that callers cannot add rows to usage reports by making names up."""
        if model not in self.router.routes:
            model = UNKNOWN_MODEL
        latency = time.perf_counter() - started
        deployment = lease.deployment.label if lease else None
        prompt = usage.prompt_tokens if usage else 0
        completion = usage.completion_tokens if usage else 0
        price = lease.deployment.price if lease else None
        cost: float | None = None  # unknown: a remote deployment the price table does not know
        if price is not None:
            cost = price.cost(prompt, completion)
        elif lease is not None and lease.deployment.provider.deployment.provider == "local":
            cost = 0.0  # local compute with no `pricing.local` rate set
        rec = UsageRecord(
            key_id=who.key_id,
            endpoint=endpoint,
            model=model,
            deployment=deployment,
            stream=stream,
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
            guardrail_interventions=interventions,
        )
        self.usage.record(rec)
        if self.governance is not None:
            logged = _logged(request) if request is not None and who.log_invocations else None
            self.governance.finished(adm, rec, logged, response)
        if self.metrics is not None:
            self.metrics.observe(
                model,
                deployment,
                status,
                prompt,
                completion,
                latency,
                None if ttft is None else ttft - started,
            )

    async def _route(
        self,
        who: Principal,
        endpoint: str,
        model: str,
        kind: ModelKind,
        attempt: Callable[[str, Provider], Awaitable[T]],
        *,
        stream: bool,
        started: float,
        prompt_tokens: int = 0,
        client: str | None = None,
    ) -> tuple[Lease[T], Admission | None]:
        """Governance admission, then `router.run`; the request is recorded if either fails
        (or the client leaves) before a lease."""
        adm: Admission | None = None
        try:
            if not who.may_use(model):
                raise NotFound(  # OpenAI's answer: no hint whether the model exists
                    f"The model '{model}' does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",
                )
            if self.governance is not None:
                adm = await self.governance.admit(who, prompt_tokens, client)
                if self._deployment_limits:
                    attempt = self._limited(attempt, adm)
            lease = await self.router.run(
                model, kind, attempt, prompt_tokens, None if who.models is None else who.may_use
            )
            return lease, adm
        except (Exception, asyncio.CancelledError) as exc:  # recorded, then re-raised
            self._record(
                who,
                endpoint,
                model,
                stream=stream,
                started=started,
                attempts=getattr(exc, "attempts", 0),
                status=status_of(exc),
                error=error_type_of(exc),
                adm=adm,
            )
            raise

    def _limited(
        self, attempt: Callable[[str, Provider], Awaitable[T]], adm: Admission
    ) -> Callable[[str, Provider], Awaitable[T]]:
        """`attempt`, admitted first on the deployment's own limits when it has any."""
        governance = self.governance
        assert governance is not None

        async def limited(model: str, provider: Provider) -> T:
            dep = provider.deployment
            if dep.limits is None:
                return await attempt(model, provider)
            limits = Limits(dep.limits.rpm, dep.limits.tpm, dep.limits.concurrency)
            permit = await governance.hold_deployment(adm, provider.label, limits)
            try:
                return await attempt(model, provider)
            except BaseException:
                adm.permits.remove(permit)
                permit.release()
                raise

        return limited

    def _for_model(self, req: ChatRequest, model: str) -> ChatRequest:
        """`req` as sent to `model` (the one asked for, or a fallback), with that model's
        `default_max_tokens` when the request gives none."""
        if req.params.max_tokens is None and model in self._default_max_tokens:
            params = dataclasses.replace(req.params, max_tokens=self._default_max_tokens[model])
            return dataclasses.replace(req, model=model, params=params)
        return req if model == req.model else dataclasses.replace(req, model=model)

    async def chat(
        self,
        who: Principal,
        req: ChatRequest,
        endpoint: str,
        client: str | None = None,
        defer: Defer | None = None,
    ) -> tuple[ChatResponse, CallInfo]:
        """The response; its accounting (deployment health, usage, limits, metrics) is
        done before returning, or handed to `defer` to run just before the response is sent."""
        started = time.perf_counter()
        guards, req, verdict = self._guard_input(who, req)
        if verdict is not None and verdict.blocked:
            return self._blocked(who, endpoint, req, started, verdict, False), CallInfo()
        interventions = int(verdict is not None)

        def attempt(model: str, provider: Provider) -> Awaitable[ChatResponse]:
            # Awaited by the router: no frame here.
            return provider.chat(self._for_model(req, model))

        lease, adm = await self._route(
            who,
            endpoint,
            req.model,
            "chat",
            attempt,
            stream=False,
            started=started,
            prompt_tokens=estimate_prompt_tokens(req),
            client=client,
        )
        resp = lease.value
        if guards is not None:
            resp, verdict = self.guarding.check_output(guards, who, req.model, resp)
            interventions += verdict is not None

        def settle() -> None:
            lease.finish(True)
            self._record(
                who,
                endpoint,
                req.model,
                stream=False,
                started=started,
                lease=lease,
                usage=resp.usage,
                queue_ms=resp.queue_ms,
                adm=adm,
                interventions=interventions,
                request=req,
                response=resp.message.content,
            )

        info = call_info(lease, adm)
        _settle(settle, defer)
        return resp, info

    async def stream(
        self, who: Principal, req: ChatRequest, endpoint: str, client: str | None = None
    ) -> MeteredStream | BlockedStream:
        """A stream whose first event has already arrived.

        Failover happens until that first event (each attempt bounded by its
        model's `routing.ttft_timeout_s`); errors before it are raised here, so
        the front door can still answer with a plain HTTP error. Later ones
        come from iteration.
        """
        started = time.perf_counter()
        guards, req, verdict = self._guard_input(who, req)
        if verdict is not None and verdict.blocked:
            return BlockedStream(self._blocked(who, endpoint, req, started, verdict, True))
        interventions = int(verdict is not None)

        async def attempt(model: str, provider: Provider) -> tuple[StreamEvent, ChatStream]:
            ttft_timeout = self.router.routes[model].config.routing.ttft_timeout_s
            inner = provider.stream(self._for_model(req, model))
            timeout = asyncio.timeout(ttft_timeout)
            try:
                async with timeout:
                    first = await anext(inner)
            except StopAsyncIteration:
                first = StreamEnd("stop", None)
            except BaseException as exc:
                await aclose_stream(inner)
                if isinstance(exc, TimeoutError) and timeout.expired():
                    raise UpstreamTimeout(
                        f"No first token from '{model}' within {ttft_timeout:g} s "
                        "(routing.ttft_timeout_s)."
                    ) from exc
                raise
            return first, inner

        lease, adm = await self._route(
            who,
            endpoint,
            req.model,
            "chat",
            attempt,
            stream=True,
            started=started,
            prompt_tokens=estimate_prompt_tokens(req),
            client=client,
        )
        stream = MeteredStream(self, who, endpoint, req, started, lease, adm)
        stream.guard(guards, interventions)
        return stream

    async def embed(
        self,
        who: Principal,
        req: EmbeddingRequest,
        endpoint: str,
        client: str | None = None,
        defer: Defer | None = None,
    ) -> tuple[EmbeddingResponse, CallInfo]:
        """As `chat`."""
        started = time.perf_counter()

        def attempt(model: str, provider: Provider) -> Awaitable[EmbeddingResponse]:
            return provider.embed(
                req if model == req.model else dataclasses.replace(req, model=model)
            )

        lease, adm = await self._route(
            who,
            endpoint,
            req.model,
            "embedding",
            attempt,
            stream=False,
            started=started,
            prompt_tokens=sum(len(t) for t in req.inputs) // 4,
            client=client,
        )

        def settle() -> None:
            lease.finish(True)
            self._record(
                who,
                endpoint,
                req.model,
                stream=False,
                started=started,
                lease=lease,
                usage=lease.value.usage,
                adm=adm,
            )

        info = call_info(lease, adm)
        _settle(settle, defer)
        return lease.value, info


def _settle(settle: Callable[[], None], defer: Defer | None) -> None:
    """Run a request's accounting now, or hand it to `defer`."""
    if defer is None:
        settle()
    else:
        defer(settle)


def _logged(req: ChatRequest) -> list[dict[str, Any]]:
    """What the invocation log keeps of a request: its messages."""
    return [{"role": m.role, "content": m.content} for m in req.messages]
