"""The gateway: what every front door calls with canonical requests.

It hands the request to the router (deployment choice, retries, failover,
fallbacks), times the call and queues exactly one usage record per request.
Front doors only translate their wire format to and from the canonical types
and call these methods.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from cumulo.errors import CumuloError, UpstreamTimeout
from cumulo.governance.auth import Principal
from cumulo.governance.usage import UsageRecord, UsageRecorder
from cumulo.providers.base import Provider
from cumulo.routing.router import Lease, Router
from cumulo.types import (
    ChatRequest,
    ChatResponse,
    ChatStream,
    EmbeddingRequest,
    EmbeddingResponse,
    StreamEnd,
    StreamEvent,
    Usage,
)

CLIENT_CLOSED = 499  # the client went away before the response finished


@dataclass(slots=True)
class CallInfo:
    """Facts about one call that front doors surface (headers, metadata)."""

    deployment: str | None = None
    attempts: int = 0
    model: str | None = None  # the model that served it, after any fallback

    def headers(self) -> dict[str, str]:
        out = {"x-cumulo-attempts": str(self.attempts)}
        if self.deployment:
            out["x-cumulo-deployment"] = self.deployment
        if self.model:
            out["x-cumulo-model"] = self.model
        return out


def estimate_prompt_tokens(req: ChatRequest) -> int:
    """A cheap estimate (about 4 characters a token) for context-window routing."""
    chars = sum(len(m.content or "") for m in req.messages)
    return chars // 4


def _status(exc: BaseException) -> int:
    return exc.status if isinstance(exc, CumuloError) else 500


def _error_type(exc: BaseException) -> str:
    return exc.type if isinstance(exc, CumuloError) else "internal_error"


class Gateway:
    def __init__(self, router: Router, usage: UsageRecorder) -> None:
        self.router = router
        self.usage = usage

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
    ) -> None:
        self.usage.record(
            UsageRecord(
                key_id=who.key_id,
                endpoint=endpoint,
                model=model,
                deployment=lease.deployment.label if lease else None,
                stream=stream,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                ttft_ms=None if ttft is None else (ttft - started) * 1000.0,
                status=status,
                error_type=error,
                served_model=lease.model if lease else None,
                attempts=lease.attempts if lease else attempts,
            )
        )

    async def chat(
        self, who: Principal, req: ChatRequest, endpoint: str
    ) -> tuple[ChatResponse, CallInfo]:
        started = time.perf_counter()

        async def attempt(model: str, provider: Provider) -> ChatResponse:
            return await provider.chat(_for_model(req, model))

        try:
            lease = await self.router.run(req.model, "chat", attempt, estimate_prompt_tokens(req))
        except Exception as exc:  # recorded, then re-raised for the front door to render
            self._record(who, endpoint, req.model, stream=False, started=started,
                         attempts=getattr(exc, "attempts", 0), status=_status(exc),
                         error=_error_type(exc))
            raise
        lease.finish(True)
        resp = lease.value
        self._record(who, endpoint, req.model, stream=False, started=started, lease=lease,
                     usage=resp.usage)
        return resp, _info(lease)

    async def stream(self, who: Principal, req: ChatRequest, endpoint: str) -> MeteredStream:
        """A stream whose first event has already arrived.

        Failover happens until that first event; errors before it are raised
        here, so the front door can still answer with a plain HTTP error.
        Later ones come from iteration.
        """
        started = time.perf_counter()
        route = self.router.route(req.model, "chat")
        ttft_timeout = route.config.routing.ttft_timeout_s

        async def attempt(model: str, provider: Provider) -> tuple[StreamEvent, ChatStream]:
            inner = provider.stream(_for_model(req, model))
            try:
                async with asyncio.timeout(ttft_timeout):
                    first = await anext(inner)
            except StopAsyncIteration:
                first = StreamEnd("stop", None)
            except TimeoutError as exc:
                await _aclose(inner)
                raise UpstreamTimeout(
                    f"No first token within {ttft_timeout:g} s (routing.ttft_timeout_s)."
                ) from exc
            except BaseException:
                await _aclose(inner)
                raise
            return first, inner

        try:
            lease = await self.router.run(req.model, "chat", attempt, estimate_prompt_tokens(req))
        except Exception as exc:  # recorded, then re-raised for the front door to render
            self._record(who, endpoint, req.model, stream=True, started=started,
                         attempts=getattr(exc, "attempts", 0), status=_status(exc),
                         error=_error_type(exc))
            raise
        return MeteredStream(self, who, endpoint, req.model, started, lease)

    async def embed(
        self, who: Principal, req: EmbeddingRequest, endpoint: str
    ) -> tuple[EmbeddingResponse, CallInfo]:
        started = time.perf_counter()

        async def attempt(model: str, provider: Provider) -> EmbeddingResponse:
            return await provider.embed(
                req if model == req.model else dataclasses.replace(req, model=model)
            )

        try:
            lease = await self.router.run(req.model, "embedding", attempt)
        except Exception as exc:  # recorded, then re-raised for the front door to render
            self._record(who, endpoint, req.model, stream=False, started=started,
                         attempts=getattr(exc, "attempts", 0), status=_status(exc),
                         error=_error_type(exc))
            raise
        lease.finish(True)
        self._record(who, endpoint, req.model, stream=False, started=started, lease=lease,
                     usage=lease.value.usage)
        return lease.value, _info(lease)


def _for_model(req: ChatRequest, model: str) -> ChatRequest:
    return req if model == req.model else dataclasses.replace(req, model=model)


def _info(lease: Lease[Any]) -> CallInfo:
    return CallInfo(lease.deployment.label, lease.attempts, lease.model)


async def _aclose(stream: ChatStream) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class MeteredStream:
    """Iterates a provider stream and records its usage once, however it ends.

    Ends normally (200), with an upstream error (its status, re-raised to the
    front door to render as an error event), or because the client went away
    (499; the upstream stream is closed so its connection or slot is freed).
    """

    def __init__(
        self,
        gateway: Gateway,
        who: Principal,
        endpoint: str,
        model: str,
        started: float,
        lease: Lease[tuple[StreamEvent, ChatStream]],
    ) -> None:
        self.gateway = gateway
        self.who = who
        self.endpoint = endpoint
        self.model = model
        self.started = started
        self.ttft = time.perf_counter()
        self.lease = lease
        self.info = _info(lease)

    async def events(self) -> AsyncIterator[StreamEvent]:
        first, inner = self.lease.value
        status: int = CLIENT_CLOSED
        error: str | None = "client_closed"
        usage: Usage | None = None
        ok: bool | None = None
        try:
            yield first
            if isinstance(first, StreamEnd):
                status, error, usage, ok = 200, None, first.usage, True
                return
            async for event in inner:
                yield event
                if isinstance(event, StreamEnd):
                    status, error, usage, ok = 200, None, event.usage, True
                    return
            status, error, ok = 502, "upstream_error", False
        except Exception as exc:  # recorded in `finally`, then re-raised
            status, error = _status(exc), _error_type(exc)
            ok = False
            raise
        finally:
            await _aclose(inner)
            self.lease.finish(ok, self.ttft)
            self.gateway._record(
                self.who, self.endpoint, self.model, stream=True, started=self.started,
                lease=self.lease, usage=usage, ttft=self.ttft, status=status, error=error,
            )
