"""HTTP helpers shared by every front door: bounded body reads, JSON responses,
cancelling work when the client goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cumulo.errors import BudgetExceeded, CumuloError, InvalidRequest, PayloadTooLarge
from cumulo.request.metering import CLIENT_CLOSED

log = logging.getLogger(__name__)


class ClientDisconnected(Exception):
    """The client closed the connection before its response was ready."""


class _Watched:
    """One request under watch: a context manager, so it adds no coroutine to the chain."""

    __slots__ = ("gone", "listener", "request", "started", "task", "watch")

    def __init__(
        self, watch: DisconnectWatch, task: asyncio.Task[object], request: Request
    ) -> None:
        self.watch = watch
        self.task = task
        self.request = request
        self.started = time.monotonic()
        self.gone = False
        self.listener: asyncio.Task[None] | None = None

    def __enter__(self) -> _Watched:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        self.watch._inflight.discard(self)
        if self.listener is not None:
            self.listener.cancel()
        if kind is asyncio.CancelledError and self.gone and self.task.uncancel() == 0:
            raise ClientDisconnected from None


class DisconnectWatch:
    """Cancels work whose client went away, without a timer per request.

    `with watch.request(request): await work` (once the request body has been read)
    cancels `work` with `ClientDisconnected` if the client disconnects first, so an
    upstream call nobody waits for is not run to its end. A request only registers
    itself; one sweeper task, awake while requests are in flight, starts listening
    for the ASGI `http.disconnect` of those that have run longer than `after_s`:
    fast calls pay for a set insertion, not for a timer (an event-loop timer per
    request was measurable at thousands of requests per second) or a task.
    """

    def __init__(self, after_s: float = 0.05) -> None:
        self.after_s = after_s
        self._inflight: set[_Watched] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def request(self, request: Request) -> _Watched:
        task = asyncio.current_task()
        assert task is not None
        watched = _Watched(self, task, request)
        self._inflight.add(watched)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return watched

    async def _sweep(self) -> None:
        try:
            while self._inflight:
                await asyncio.sleep(self.after_s)
                cutoff = time.monotonic() - self.after_s
                for w in self._inflight:
                    if w.listener is None and w.started <= cutoff:
                        w.listener = asyncio.get_running_loop().create_task(self._listen(w))
        finally:
            self._sweeper = None

    @staticmethod
    async def _listen(w: _Watched) -> None:
        while (await w.request.receive())["type"] != "http.disconnect":
            pass
        w.gone = True
        w.task.cancel()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper


def error_headers(exc: CumuloError) -> dict[str, str]:
    """Headers every front door sends with an error: Retry-After and the x-ratelimit-*
    of the limit that refused; a spent budget asks SDKs not to retry."""
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    if exc.headers:
        headers.update(exc.headers)
    if isinstance(exc, BudgetExceeded):
        headers["x-should-retry"] = "false"
    return headers


def header(request: Request, name: bytes) -> str | None:
    """The first value of header `name` (lower case), straight from the ASGI scope:
    cheaper on the hot path than building Starlette's `Headers` for one or two lookups."""
    key: bytes
    value: bytes
    for key, value in request.scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def client_host(request: Request) -> str | None:
    """The client's address (behind a proxy: as uvicorn's `--forwarded-allow-ips` trusts it)."""
    client = request.scope.get("client")
    return client[0] if client else None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes without reading them all."""
    declared = header(request, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as exc:
            raise InvalidRequest("Invalid Content-Length header.") from exc
        if size > limit:
            raise PayloadTooLarge(f"Request body is {size} bytes; the limit is {limit} bytes.")
    # Straight from the ASGI messages (read once, here): cheaper than Starlette's stream().
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        if not message.get("more_body", False):
            if not chunks:
                return bytes(chunk)
            chunks.append(chunk)
            return b"".join(chunks)
        chunks.append(chunk)


class After:
    """Work to run once the response is final: a request's accounting (usage, limits,
    metrics). `run()` runs each callback once, in order; `JSONResponse(after=...)` runs
    it just before sending, so the request's usage record is in the usage journal
    before its response leaves (`governance.telemetry.usage`). `with After() as after:` runs it at
    once if the block raises instead."""

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: list[Callable[[], None]] = []

    def __enter__(self) -> After:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if kind is not None:  # no response will run it
            self.run()

    def add(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    def run(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # the response has gone; the others still run
                log.exception("work after the response failed")


class JSONResponse(Response):
    """A JSON response serialised with orjson.

    `headers` as Starlette takes them; `raw_headers`, already encoded, are added as
    they are (the gateway's, built once per deployment). `after` runs just before the
    response is sent (`After`).
    """

    media_type = "application/json"

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        raw_headers: list[tuple[bytes, bytes]] | None = None,
        after: After | None = None,
    ) -> None:
        # Starlette's, minus its generality: our headers never set the length or the type.
        self.status_code = status_code
        self.background = None
        self.after = after
        self.body = body = orjson.dumps(content)
        raw = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
        if headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        if raw_headers:
            raw += raw_headers
        self.raw_headers = raw

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.after is not None:
            self.after.run()
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": self.body})


Handler = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[CumuloError], Response]


def guarded(handler: Handler, render: ErrorRenderer) -> Handler:
    """Wrap an endpoint so every error leaves in the front door's wire format.

    Cumulo errors keep their status; anything unforeseen is logged with its
    traceback and answered as a 500 without one. A client that went away
    (`DisconnectWatch`) gets an empty 499 that nobody reads.
    """

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except CumuloError as exc:
            return render(exc)
        except ClientDisconnected:
            return Response(status_code=CLIENT_CLOSED)  # nobody is listening
        except Exception:  # the last line of defence: log it, never leak it
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return render(CumuloError("The server had an error while processing the request."))

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    endpoint.__doc__ = handler.__doc__
    return endpoint
