"""The gateway: what every front door calls with canonical requests.

It picks the deployment (routing), calls the provider, times the call and
queues exactly one usage record per request. Front doors only translate their
wire format to and from the canonical types and call these methods.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from cumulo.errors import CumuloError
from cumulo.governance.auth import Principal
from cumulo.governance.usage import UsageRecord, UsageRecorder
from cumulo.routing.catalog import Catalog
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
    """Facts about one call that front doors may surface (headers, metadata)."""

    deployment: str | None = None


class Gateway:
    def __init__(self, catalog: Catalog, usage: UsageRecorder) -> None:
        self.catalog = catalog
        self.usage = usage

    def _record(
        self,
        who: Principal,
        endpoint: str,
        model: str,
        deployment: str | None,
        *,
        stream: bool,
        started: float,
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
                deployment=deployment,
                stream=stream,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                latency_ms=(time.perf_counter() - started) * 1000.0,
                ttft_ms=None if ttft is None else (ttft - started) * 1000.0,
                status=status,
                error_type=error,
            )
        )

    async def chat(self, who: Principal, req: ChatRequest, endpoint: str) -> tuple[ChatResponse, CallInfo]:
        started = time.perf_counter()
        deployment = None
        try:
            _, provider = self.catalog.resolve(req.model, "chat")
            deployment = provider.deployment.label
            resp = await provider.chat(req)
        except Exception as exc:  # recorded, then re-raised for the front door to render
            self._record(who, endpoint, req.model, deployment, stream=False, started=started,
                         status=_status(exc), error=_error_type(exc))
            raise
        self._record(who, endpoint, req.model, deployment, stream=False, started=started,
                     usage=resp.usage)
        return resp, CallInfo(deployment)

    async def stream(self, who: Principal, req: ChatRequest, endpoint: str) -> MeteredStream:
        """A stream whose first event has already arrived.

        Errors before the first event are raised here, so the front door can
        still answer with a plain HTTP error; later ones come from iteration.
        """
        started = time.perf_counter()
        deployment = None
        try:
            _, provider = self.catalog.resolve(req.model, "chat")
            deployment = provider.deployment.label
            inner = provider.stream(req)
            first = await anext(inner)
        except StopAsyncIteration:
            first = StreamEnd("stop", None)
        except Exception as exc:  # recorded, then re-raised for the front door to render
            self._record(who, endpoint, req.model, deployment, stream=True, started=started,
                         status=_status(exc), error=_error_type(exc))
            raise
        return MeteredStream(self, who, endpoint, req.model, deployment, started, first, inner)

    async def embed(
        self, who: Principal, req: EmbeddingRequest, endpoint: str
    ) -> tuple[EmbeddingResponse, CallInfo]:
        started = time.perf_counter()
        deployment = None
        try:
            _, provider = self.catalog.resolve(req.model, "embedding")
            deployment = provider.deployment.label
            resp = await provider.embed(req)
        except Exception as exc:  # recorded, then re-raised for the front door to render
            self._record(who, endpoint, req.model, deployment, stream=False, started=started,
                         status=_status(exc), error=_error_type(exc))
            raise
        self._record(who, endpoint, req.model, deployment, stream=False, started=started,
                     usage=resp.usage)
        return resp, CallInfo(deployment)


def _status(exc: BaseException) -> int:
    return exc.status if isinstance(exc, CumuloError) else 500


def _error_type(exc: BaseException) -> str:
    return exc.type if isinstance(exc, CumuloError) else "internal_error"


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
        deployment: str | None,
        started: float,
        first: StreamEvent,
        inner: ChatStream,
    ) -> None:
        self.gateway = gateway
        self.who = who
        self.endpoint = endpoint
        self.model = model
        self.info = CallInfo(deployment)
        self.started = started
        self.ttft = time.perf_counter()
        self._first: StreamEvent | None = first
        self._inner = inner

    async def events(self) -> AsyncIterator[StreamEvent]:
        status: int = CLIENT_CLOSED
        error: str | None = "client_closed"
        usage: Usage | None = None
        try:
            if self._first is not None:
                event, self._first = self._first, None
                yield event
                if isinstance(event, StreamEnd):
                    status, error, usage = 200, None, event.usage
                    return
            async for event in self._inner:
                yield event
                if isinstance(event, StreamEnd):
                    status, error, usage = 200, None, event.usage
                    return
            status, error = 502, "upstream_error"
        except Exception as exc:  # recorded in `finally`, then re-raised
            status, error = _status(exc), _error_type(exc)
            raise
        finally:
            aclose = getattr(self._inner, "aclose", None)
            if aclose is not None:
                await aclose()
            self.gateway._record(
                self.who, self.endpoint, self.model, self.info.deployment, stream=True,
                started=self.started, usage=usage, ttft=self.ttft, status=status, error=error,
            )
