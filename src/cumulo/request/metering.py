"""What the gateway tells front doors about a call, and streams metered as they go.

`CallInfo` is what a front door surfaces of a call (deployment, attempts, model,
rate-limit headers). `MeteredStream` iterates a provider stream and settles the
request (its `RequestContext`) exactly once, however it ends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from cumulo.errors import CumuloError, ShuttingDown
from cumulo.governance.chain import Admission
from cumulo.governance.guardrails import GuardrailSet
from cumulo.governance.guardrails.chain import ChainedStreamChecker
from cumulo.inflight import InFlight, by_shutdown, shutdown_error
from cumulo.request.context import RequestContext
from cumulo.request.guarding import Guarding, guard_stream
from cumulo.routing.router import Lease
from cumulo.types import (
    ChatResponse,
    ChatStream,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Usage,
)

CLIENT_CLOSED = 499  # the client went away before the response finished


@dataclass(slots=True)
class CallInfo:
    """Facts about one call that front doors surface (headers, metadata)."""

    deployment: str | None = None
    attempts: int = 0
    model: str | None = None  # the model that served it, after any fallback
    limits: dict[str, str] | None = None  # OpenAI's x-ratelimit-* of the tightest limit
    # `deployment` and `model` as header lines, encoded once per deployment (`raw_headers`).
    encoded: list[tuple[bytes, bytes]] | None = None

    def headers(self) -> dict[str, str]:
        """`x-cumulo-deployment`, `x-cumulo-attempts`, `x-cumulo-model`, `x-ratelimit-*`."""
        out = {"x-cumulo-attempts": str(self.attempts)}
        if self.limits:
            out.update(self.limits)
        if self.deployment:
            out["x-cumulo-deployment"] = self.deployment
        if self.model:
            out["x-cumulo-model"] = self.model
        return out

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """`headers()` as ASGI header lines."""
        if self.encoded is None:
            return [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.headers().items()]
        out = [(b"x-cumulo-attempts", str(self.attempts).encode())]
        if self.limits:
            out += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self.limits.items()]
        return out + self.encoded


def call_info(lease: Lease[Any], adm: Admission | None = None) -> CallInfo:
    """What front doors surface of a call that got a lease."""
    limits = adm.permits[0].headers() if adm is not None and adm.permits else None
    d = lease.deployment
    return CallInfo(d.label, lease.attempts, lease.model, limits, d.header_lines(lease.model))


def status_of(exc: BaseException) -> int:
    if isinstance(exc, asyncio.CancelledError):
        return ShuttingDown.status if by_shutdown(exc) else CLIENT_CLOSED
    return exc.status if isinstance(exc, CumuloError) else 500


def error_type_of(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return ShuttingDown.type if by_shutdown(exc) else "client_closed"
    return exc.type if isinstance(exc, CumuloError) else "internal_error"


async def aclose_stream(stream: ChatStream) -> None:
    """Close a provider stream (an async generator) if it can be closed."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class MeteredStream:
    """Iterates a provider stream and settles its request once, however it ends.

    Ends normally (200, settled as the last event arrives, before the front door
    sends it: the usage record is in the usage journal before the stream's end
    reaches the client), with an upstream error (its status, re-raised to the
    front door to render as an error event), or because the client went away
    (499; the upstream stream is closed so its connection or slot is freed), or
    because the server is shutting down and `server.shutdown_timeout_s` ran out (503:
    `ShuttingDown` is raised to the front door, which sends it as an error event).
    A stream the front door never iterates (the client left before the
    response started) is settled as 499 once it is garbage-collected.
    """

    def __init__(
        self,
        ctx: RequestContext,
        lease: Lease[tuple[StreamEvent, ChatStream]],
        guarding: Guarding,
        guards: GuardrailSet | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self.info = call_info(lease, ctx.admitted)
        self.lease = lease
        self.in_flight = in_flight  # registered while streaming (`cumulo.inflight`)
        self._meter = _StreamMeter(ctx, guarding)
        if guards is not None:  # the output, checked as it streams
            self._meter.checker = guards.stream_checker()
        self._loop = asyncio.get_running_loop()

    async def _upstream(
        self, first: StreamEvent, inner: ChatStream
    ) -> AsyncGenerator[StreamEvent, None]:
        meter = self._meter
        event = first
        while True:
            if isinstance(event, TextDelta):
                meter.produced(event.text)
            yield event
            if isinstance(event, StreamEnd):
                return
            try:
                event = await anext(inner)
            except StopAsyncIteration:
                return

    async def events(self) -> AsyncIterator[StreamEvent]:
        first, inner = self.lease.value
        status: int = CLIENT_CLOSED
        error: str | None = "client_closed"
        usage: Usage | None = None
        ok: bool | None = None
        meter = self._meter
        source = self._upstream(first, inner)
        if meter.checker is not None:
            source = guard_stream(source, meter.checker)
        in_flight = self.in_flight
        task = asyncio.current_task()
        if in_flight is not None and task is not None:
            in_flight.add(task)  # a shutdown out of time ends the stream (`cumulo.inflight`)
        try:
            async for event in source:
                if isinstance(event, TextDelta) and meter.text is not None:
                    meter.text.append(event.text)
                if isinstance(event, StreamEnd):
                    status, error, usage, ok = 200, None, event.usage, True
                    meter.queue_ms = event.queue_ms
                    meter.settle(ok, status, error, usage)
                    yield event
                    return
                yield event
            status, error, ok = 502, "upstream_error", False
        except Exception as exc:  # settled in `finally`, then re-raised
            status, error = status_of(exc), error_type_of(exc)
            ok = False
            raise
        except asyncio.CancelledError as exc:
            if (ending := shutdown_error(exc)) is None:
                raise  # the client went away: 499
            status, error = ending.status, ending.type
            raise ending from None  # the front door sends it as an error event
        finally:
            if in_flight is not None and task is not None:
                in_flight.discard(task)
            try:
                await source.aclose()
                await aclose_stream(inner)
            finally:
                meter.settle(ok, status, error, usage)

    def __del__(self) -> None:
        # Never iterated: free the deployment's in-flight slot (and its breaker probe, if this
        # was one) and record the request, soon, on the loop (not inside whatever code the
        # collector interrupted). The provider stream, already started, is closed by the
        # event loop's async-generator finalizer.
        meter = getattr(self, "_meter", None)
        if meter is not None and not meter.ctx.settled and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(
                meter.settle, None, CLIENT_CLOSED, "client_closed", None
            )


@dataclass(slots=True)
class _StreamMeter:
    """A stream's running figures (time to first token, text for the invocation log, the
    output check) until its request context is settled."""

    ctx: RequestContext
    guarding: Guarding
    ttft: float = dataclasses.field(default_factory=time.perf_counter)
    queue_ms: float | None = None  # from the provider's StreamEnd, when it tells
    text: list[str] | None = None  # the reply so far, kept only for the invocation log
    checker: ChainedStreamChecker | None = None  # the output guardrails, if any

    def __post_init__(self) -> None:
        if self.ctx.who.log_invocations:
            self.text = []

    def produced(self, text: str) -> None:
        """The upstream sent a text delta: about one token, charged to the limits now."""
        adm = self.ctx.admitted
        if adm is not None:
            adm.produced(1)

    def settle(self, ok: bool | None, status: int, error: str | None, usage: Usage | None) -> None:
        ctx = self.ctx
        if ctx.settled:
            return
        if self.checker is not None and self.checker.intervened:
            ctx.interventions += 1
            self.guarding.stream_verdict(ctx.who, ctx.model, self.checker)
        ctx.settle(
            ok,
            usage=usage,
            status=status,
            error=error,
            ttft=self.ttft,
            queue_ms=self.queue_ms,
            response="".join(self.text) if self.text is not None else None,
        )


class BlockedStream:
    """The stream of a request an input guardrail blocked: its message, then the end."""

    def __init__(self, reply: ChatResponse) -> None:
        self.info = CallInfo()
        self.reply = reply

    async def events(self) -> AsyncIterator[StreamEvent]:
        yield TextDelta(self.reply.message.content or "")
        yield StreamEnd("content_filter", self.reply.usage)
