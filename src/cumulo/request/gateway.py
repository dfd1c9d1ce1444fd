"""The gateway: what every front door calls with canonical requests.

Each request gets a `RequestContext` as it enters (`request.context`): guarded on the
way in (`request.guarding`), admitted by governance, handed to the router (deployment
choice, retries, failover, fallbacks), guarded on the way out; its context then settles
it once (usage record, limits, metrics, deployment health). Front doors only translate
their wire format to and from the canonical types and call these methods. What a call
tells them, and how a stream is metered as it goes, is in `request.metering`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from cumulo.errors import InvalidRequest, NotFound, UpstreamTimeout
from cumulo.governance.chain import Admission, Governance
from cumulo.governance.guardrails import GuardrailSet, Verdict
from cumulo.governance.identity.auth import Principal
from cumulo.governance.quotas.limits import Limits
from cumulo.governance.telemetry.usage import UsageRecorder
from cumulo.inflight import InFlight
from cumulo.observability.metrics import Metrics
from cumulo.providers.base import Provider
from cumulo.request.context import Accounting, RequestContext
from cumulo.request.guarding import Guarding, blocked_reply
from cumulo.request.metering import (
    BlockedStream,
    CallInfo,
    MeteredStream,
    aclose_stream,
    call_info,
    error_type_of,
    status_of,
)
from cumulo.routing.router import Lease, Router
from cumulo.types import (
    ChatRequest,
    ChatResponse,
    ChatStream,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    ModelKind,
    StreamEnd,
    StreamEvent,
)

T = TypeVar("T")
# Takes a request's accounting to run with its response, just before it is sent (`Gateway.chat`).
Defer = Callable[[Callable[[], None]], None]


def estimate_prompt_tokens(req: ChatRequest) -> int:
    """A cheap estimate (about 4 characters a token) for context-window routing."""
    chars = sum(len(m.content or "") for m in req.messages)
    return chars // 4


def estimate_completion_prompt_tokens(req: CompletionRequest) -> int:
    """As `estimate_prompt_tokens`; token-id prompts count exactly."""
    return sum(len(p) // 4 if isinstance(p, str) else len(p) for p in req.prompts)


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
        # Streams register here while they stream; the app's handlers too (DisconnectWatch).
        self.in_flight = in_flight if in_flight is not None else InFlight()
        self.usage = usage
        self.metrics = metrics
        self.governance = governance
        self.guarding = guarding or Guarding({}, {})  # none configured: checks nothing
        self.books = Accounting(usage, router.routes, metrics, governance)
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

    def _context(
        self, who: Principal, endpoint: str, model: str, stream: bool, client: str | None
    ) -> RequestContext:
        """A request entering the gateway."""
        return RequestContext(self.books, who, endpoint, model, stream, client=client)

    def _guard_input(
        self, ctx: RequestContext, req: ChatRequest
    ) -> tuple[GuardrailSet | None, ChatRequest, Verdict | None]:
        """The guardrails of this request, the request as it may go on, and the input
        verdict if a guardrail intervened (counted in `ctx`)."""
        who = ctx.who
        if not who.may_use(req.model):
            return None, req, None  # refused by `_route`, unguarded
        guards = self.guarding.for_request(who, req.model)
        if guards is None:
            return None, req, None
        req, verdict = self.guarding.check_input(guards, who, req)
        ctx.interventions += verdict is not None
        return guards, req, verdict

    @staticmethod
    def _blocked(ctx: RequestContext, req: ChatRequest, verdict: Verdict) -> ChatResponse:
        """A request an input guardrail blocked: recorded, answered without any model."""
        ctx.settle()
        return blocked_reply(req, verdict)

    async def _route(
        self,
        ctx: RequestContext,
        kind: ModelKind,
        attempt: Callable[[str, Provider], Awaitable[T]],
        prompt_tokens: int = 0,
    ) -> Lease[T]:
        """Governance admission, then `router.run`; the request is settled if either fails
        (or the client leaves) before a lease."""
        who = ctx.who
        model = ctx.model
        try:
            if not who.may_use(model):
                raise NotFound(  # OpenAI's answer: no hint whether the model exists
                    f"The model '{model}' does not exist or you do not have access to it.",
                    param="model",
                    code="model_not_found",
                )
            if self.governance is not None:
                adm = ctx.admitted = await self.governance.admit(who, prompt_tokens, ctx.client)
                if self._deployment_limits:
                    attempt = self._limited(attempt, adm)
            lease = await self.router.run(
                model, kind, attempt, prompt_tokens, None if who.models is None else who.may_use
            )
        except (Exception, asyncio.CancelledError) as exc:  # settled, then re-raised
            ctx.settle(
                attempts=getattr(exc, "attempts", 0),
                status=status_of(exc),
                error=error_type_of(exc),
            )
            raise
        ctx.lease = lease
        return lease

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
        ctx = self._context(who, endpoint, req.model, False, client)
        guards, req, verdict = self._guard_input(ctx, req)
        if verdict is not None and verdict.blocked:
            return self._blocked(ctx, req, verdict), CallInfo()

        def attempt(model: str, provider: Provider) -> Awaitable[ChatResponse]:
            # Awaited by the router: no frame here.
            return provider.chat(self._for_model(req, model))

        lease = await self._route(ctx, "chat", attempt, estimate_prompt_tokens(req))
        resp = lease.value
        if guards is not None:
            resp, verdict = self.guarding.check_output(guards, who, req.model, resp)
            ctx.interventions += verdict is not None
        ctx.request = req

        def settle() -> None:
            ctx.settle(
                True, usage=resp.usage, queue_ms=resp.queue_ms, response=resp.message.content
            )

        info = call_info(lease, ctx.admitted)
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
        ctx = self._context(who, endpoint, req.model, True, client)
        guards, req, verdict = self._guard_input(ctx, req)
        if verdict is not None and verdict.blocked:
            return BlockedStream(self._blocked(ctx, req, verdict))

        return await self._open_stream(
            ctx,
            req,
            guards,
            lambda p, m: p.stream(self._for_model(req, m)),
            estimate_prompt_tokens(req),
        )

    async def _open_stream(
        self,
        ctx: RequestContext,
        req: ChatRequest,
        guards: GuardrailSet | None,
        open_inner: Callable[[Provider, str], ChatStream],
        prompt_tokens: int,
    ) -> MeteredStream:
        """Route a stream: failover until its first event (each attempt bounded by its
        model's `routing.ttft_timeout_s`), then metered as it goes."""

        async def attempt(model: str, provider: Provider) -> tuple[StreamEvent, ChatStream]:
            ttft_timeout = self.router.routes[model].config.routing.ttft_timeout_s
            inner = open_inner(provider, model)
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

        lease = await self._route(ctx, "chat", attempt, prompt_tokens)
        ctx.request = req
        return MeteredStream(ctx, lease, self.guarding, guards, self.in_flight)

    def _guard_prompts(
        self, ctx: RequestContext, req: CompletionRequest
    ) -> tuple[GuardrailSet | None, CompletionRequest, ChatRequest, Verdict | None]:
        """A completion's prompts through the input guardrails, as the user messages of a
        chat request (also what the invocation log keeps). Token-id prompts cannot be
        read by guardrails: where any apply, they are refused."""
        texts = [p for p in req.prompts if isinstance(p, str)]
        view = ChatRequest(req.model, [Message("user", t) for t in texts], req.params)
        guards, checked, verdict = self._guard_input(ctx, view)
        if guards is None:
            return None, req, view, None
        if len(texts) != len(req.prompts):
            ctx.settle(status=400, error="invalid_request_error")
            raise InvalidRequest(
                f"Guardrails apply to the model '{req.model}', and they read text: send the "
                "prompt as text, not token ids.",
                param="prompt",
            )
        if checked is not view and verdict is not None and not verdict.blocked:
            prompts: list[str | list[int]] = [m.content or "" for m in checked.messages]
            req = dataclasses.replace(req, prompts=prompts)
        return guards, req, checked, verdict

    async def complete(
        self,
        who: Principal,
        req: CompletionRequest,
        endpoint: str,
        client: str | None = None,
        defer: Defer | None = None,
    ) -> tuple[CompletionResponse, CallInfo]:
        """Text completions, as `chat`; input guardrails read the prompts, output
        guardrails each choice's text."""
        ctx = self._context(who, endpoint, req.model, False, client)
        guards, req, view, verdict = self._guard_prompts(ctx, req)
        if verdict is not None and verdict.blocked:
            reply = self._blocked(ctx, view, verdict)
            choices = [
                CompletionChoice(reply.message.content or "", "content_filter") for _ in req.prompts
            ]
            return CompletionResponse("", req.model, 0, choices, reply.usage), CallInfo()

        def attempt(model: str, provider: Provider) -> Awaitable[CompletionResponse]:
            return provider.complete(self._completion_for(req, model))

        lease = await self._route(ctx, "chat", attempt, estimate_completion_prompt_tokens(req))
        resp = lease.value
        if guards is not None:
            choices = []
            for choice in resp.choices:
                reply = ChatResponse("", req.model, 0, Message("assistant", choice.text),
                                     choice.finish_reason, resp.usage)  # fmt: skip
                checked, out = self.guarding.check_output(guards, who, req.model, reply)
                ctx.interventions += out is not None
                if out is None:
                    choices.append(choice)
                else:
                    text = checked.message.content or ""
                    choices.append(CompletionChoice(text, checked.finish_reason, None))
            resp = dataclasses.replace(resp, choices=choices)
        ctx.request = view

        def settle() -> None:
            ctx.settle(
                True,
                usage=resp.usage,
                queue_ms=resp.queue_ms,
                response="".join(c.text for c in resp.choices),
            )

        info = call_info(lease, ctx.admitted)
        _settle(settle, defer)
        return resp, info

    async def stream_complete(
        self, who: Principal, req: CompletionRequest, endpoint: str, client: str | None = None
    ) -> MeteredStream | BlockedStream:
        """A streamed completion of one prompt, as `stream`."""
        ctx = self._context(who, endpoint, req.model, True, client)
        guards, req, view, verdict = self._guard_prompts(ctx, req)
        if verdict is not None and verdict.blocked:
            return BlockedStream(self._blocked(ctx, view, verdict))
        return await self._open_stream(
            ctx,
            view,
            guards,
            lambda p, m: p.stream_complete(self._completion_for(req, m)),
            estimate_completion_prompt_tokens(req),
        )

    def _completion_for(self, req: CompletionRequest, model: str) -> CompletionRequest:
        """`req` as sent to `model`, with that model's `default_max_tokens` when the
        request gives none."""
        if req.params.max_tokens is None and model in self._default_max_tokens:
            params = dataclasses.replace(req.params, max_tokens=self._default_max_tokens[model])
            return dataclasses.replace(req, model=model, params=params)
        return req if model == req.model else dataclasses.replace(req, model=model)

    def tokenizer(self, who: Principal, model: str) -> Any:
        """The tokenizer of `model`, served in this process, for `who` (the tokenizer
        endpoints). A model `who` may not use is not found; one with no local deployment
        serving, a 400 naming it."""
        if not who.may_use(model) or model not in self.router.routes:
            raise NotFound(
                f"The model '{model}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        for d in self.router.routes[model].deployments:
            tokenizer = d.provider.tokenizer()
            if tokenizer is not None:
                return tokenizer
        raise InvalidRequest(
            f"The model '{model}' has no tokenizer here: only local models that are loaded "
            "serve the tokenizer endpoints.",
            param="model",
        )

    async def embed(
        self,
        who: Principal,
        req: EmbeddingRequest,
        endpoint: str,
        client: str | None = None,
        defer: Defer | None = None,
    ) -> tuple[EmbeddingResponse, CallInfo]:
        """As `chat`."""
        ctx = self._context(who, endpoint, req.model, False, client)

        def attempt(model: str, provider: Provider) -> Awaitable[EmbeddingResponse]:
            return provider.embed(
                req if model == req.model else dataclasses.replace(req, model=model)
            )

        lease = await self._route(ctx, "embedding", attempt, sum(len(t) for t in req.inputs) // 4)

        def settle() -> None:
            ctx.settle(True, usage=lease.value.usage)

        info = call_info(lease, ctx.admitted)
        _settle(settle, defer)
        return lease.value, info


def _settle(settle: Callable[[], None], defer: Defer | None) -> None:
    """Run a request's accounting now, or hand it to `defer`."""
    if defer is None:
        settle()
    else:
        defer(settle)
