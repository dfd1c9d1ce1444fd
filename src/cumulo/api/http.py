"""The one front-door flow every door shares, and the HTTP pieces it is made of.

A door (`api/openai`, `api/anthropic`, `api/bedrock`, `api/admin` ...) only translates its
wire format to and from the canonical types. What every endpoint does around that is here:

    WireFormat    how a wire format reports errors: the error body, status and headers,
                  and how a body that does not validate is worded; `parse()` reads a JSON
                  body into a wire model, or a 400 naming the field
    FrontDoor     the sequence: authenticate the caller and read the body (bounded), parse
                  it, then call the gateway (`respond`) or stream from it (`stream`) under
                  the disconnect watch, with the request's accounting deferred until just
                  before the response is sent; an error after a stream has started
                  travels as the wire format's error frame
    guarded()     an endpoint whose errors leave in its door's wire format

`OPENAI` is the OpenAI error shape: the OpenAI door's, and the one the admin API and
the server's own answers (404, 405) use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from cumulo.errors import BudgetExceeded, CumuloError, InvalidRequest, PayloadTooLarge
from cumulo.governance.identity.auth import Principal
from cumulo.inflight import InFlight, shutdown_error
from cumulo.request.gateway import Defer
from cumulo.request.metering import CLIENT_CLOSED, BlockedStream, CallInfo, MeteredStream
from cumulo.types import JSON

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


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
        if self.watch.in_flight is not None:
            self.watch.in_flight.discard(self.task)
        if self.listener is not None:
            self.listener.cancel()
        if kind is asyncio.CancelledError:
            if self.gone and self.task.uncancel() == 0:
                raise ClientDisconnected from None
            if exc is not None and (ending := shutdown_error(exc)) is not None:
                raise ending from None  # a 503 in the door's wire format


class DisconnectWatch:
    """Cancels work whose client went away, without a timer per request.

    `with watch.request(request): await work` (once the request body has been read)
    cancels `work` with `ClientDisconnected` if the client disconnects first, so an
    upstream call nobody waits for is not run to its end. A request only registers
    itself; one sweeper task, awake while requests are in flight, starts listening
    for the ASGI `http.disconnect` of those that have run longer than `after_s`:
    fast calls pay for a set insertion, not for a timer (an event-loop timer per
    request was measurable at thousands of requests per second) or a task.

    With `in_flight`, the watched work is also registered there, so that a shutdown
    that runs out of time ends it with `ShuttingDown` (`cumulo.inflight`).
    """

    def __init__(self, after_s: float = 0.05, in_flight: InFlight | None = None) -> None:
        self.after_s = after_s
        self.in_flight = in_flight
        self._inflight: set[_Watched] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def request(self, request: Request) -> _Watched:
        task = asyncio.current_task()
        assert task is not None
        watched = _Watched(self, task, request)
        self._inflight.add(watched)
        if self.in_flight is not None:
            self.in_flight.add(task)
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


# -- wire formats: errors and body parsing -------------------------------------------


@dataclass(frozen=True, slots=True)
class WireFormat:
    """How one wire format reports errors.

    `error` gives an error's body, HTTP status and headers of the format's own (the
    headers every door sends, `error_headers`, are added); `invalid` words the first
    problem of a body that does not validate; `stream_error` frames an error once a
    stream's headers are sent (`internal`: the message of an unforeseen failure then), and
    `stream_end` closes every stream.
    """

    error: Callable[[CumuloError], tuple[JSON, int, dict[str, str]]]
    invalid: Callable[[ValidationError], InvalidRequest]
    stream_error: Callable[[CumuloError], bytes]
    internal: str = "The server had an error while streaming the response."
    stream_end: bytes = b""  # sent after a stream's last frame, after an error frame too

    def error_response(self, exc: CumuloError) -> Response:
        """The one place a cumulo error becomes an HTTP response in this wire format."""
        body, status, headers = self.error(exc)
        return JSONResponse(body, status_code=status, headers={**headers, **error_headers(exc)})

    def parse(self, validate: Callable[[bytes], T], body: bytes) -> T:
        """`validate(body)`: a JSON body as pydantic validates it, or a 400 naming the field."""
        if not body:
            raise InvalidRequest("The request body is empty; a JSON object is required.")
        try:
            return validate(body)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] in ("json_invalid", "json_type"):
                raise InvalidRequest(
                    f"The request body is not valid JSON: {first['msg']}."
                ) from exc
            raise self.invalid(exc) from exc


def openai_error_body(exc: CumuloError) -> JSON:
    """An error as the OpenAI API shows it (also in a stream's error event)."""
    return {
        "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    }


_ROLES = ("system", "developer", "user", "assistant", "tool")
# How pydantic labels union members in an error's path: `str`, `list[str]`,
# `literal['auto',...]`, `function-after[...]`, or a model's class name.
_UNION_MEMBER = re.compile(r"^(?:str|int|float|bool|[a-z]+(?:-[a-z]+)?\[.*|[A-Z]\w*)$")


def openai_validation_error(exc: ValidationError) -> InvalidRequest:
    """The first validation error as an InvalidRequest whose `param` names the field."""
    err = exc.errors()[0]
    loc: list[str] = []
    previous: object = None
    for part in err["loc"]:
        text = str(part)
        # Union members appear in the path by their type, and messages by their role tag
        # after the index; the caller never wrote those. Field names are snake_case.
        role_tag = text in _ROLES and isinstance(previous, int)
        previous = part
        if role_tag or (isinstance(part, str) and _UNION_MEMBER.match(text)):
            continue
        loc.append(text)
    msg = err["msg"]
    if err["type"] == "union_tag_invalid":
        loc.append("role")
        tag = (err.get("ctx") or {}).get("tag")
        msg = f"Invalid role {tag!r}; expected one of {', '.join(_ROLES)}"
    elif err["type"] == "union_tag_not_found":
        loc.append("role")
        msg = "Field required"
    param = ".".join(loc) or None
    return InvalidRequest(
        f"Invalid value for '{param}': {msg}." if param else f"{msg}.", param=param
    )


OPENAI = WireFormat(
    error=lambda exc: (openai_error_body(exc), exc.status, {}),
    invalid=openai_validation_error,
    stream_error=lambda exc: b"data: " + orjson.dumps(openai_error_body(exc)) + b"\n\n",
    stream_end=b"data: [DONE]\n\n",
)
"""The OpenAI error shape: the OpenAI door's, the admin API's and the server's own."""


def error_response(exc: CumuloError) -> Response:
    """A cumulo error as an OpenAI-shaped HTTP response (`OPENAI`)."""
    return OPENAI.error_response(exc)


def sse_headers(info: CallInfo) -> dict[str, str]:
    """The headers of a server-sent-events response: no caching, and the call's facts."""
    return {"cache-control": "no-cache", **info.headers()}


# -- the flow --------------------------------------------------------------------------

Authenticate = Callable[[Request], Awaitable[Principal]]
"""Who is calling, from the request's headers; raises `AuthenticationFailed`."""
Identify = Callable[[Request, int], Awaitable[tuple[Principal, bytes]]]
"""Who is calling and the request body (at most the given bytes), in the door's order."""


class FrontDoor:
    """The flow every endpoint of one door runs; the door supplies the translation.

    `authenticate` identifies a caller from its headers; `identify`, when given, replaces
    "authenticate, then read the body" for doors whose signatures cover the body (SigV4).
    """

    def __init__(
        self,
        wire: WireFormat,
        authenticate: Authenticate,
        max_body_bytes: int,
        disconnects: DisconnectWatch | None = None,
        identify: Identify | None = None,
    ) -> None:
        self.wire = wire
        self.authenticate = authenticate
        self.max_body_bytes = max_body_bytes
        self.disconnects = disconnects or DisconnectWatch()
        self._identify = identify

    async def accept(self, request: Request, validate: Callable[[bytes], T]) -> tuple[Principal, T]:
        """Authenticate the caller, read the body (bounded) and parse it (400s name the
        field, in the door's wording)."""
        if self._identify is None:  # the usual order, without a call more on the hot path
            who = await self.authenticate(request)
            body = await read_body(request, self.max_body_bytes)
        else:
            who, body = await self._identify(request, self.max_body_bytes)
        return who, self.wire.parse(validate, body)

    async def respond(
        self,
        request: Request,
        call: Callable[[str | None, Defer], Awaitable[tuple[R, CallInfo]]],
        render: Callable[[R, CallInfo], JSONResponse],
    ) -> JSONResponse:
        """`call(client address, defer)` the gateway (cancelled if the client leaves),
        `render` its answer; the request's accounting, handed to `defer`, runs just before
        the response is sent (or at once, if there will be no response)."""
        with After() as after:
            with self.disconnects.request(request):
                value, info = await call(client_host(request), after.add)
            response = render(value, info)
            response.after = after
            return response

    async def stream(
        self,
        request: Request,
        open_stream: Callable[[str | None], Awaitable[MeteredStream | BlockedStream]],
        frames: Callable[[MeteredStream | BlockedStream], AsyncGenerator[bytes, None]],
        media_type: str,
        headers: Callable[[CallInfo], dict[str, str]],
    ) -> StreamingResponse:
        """A streamed answer: the gateway's stream, opened by `open_stream(client address)`
        (cancelled if the client leaves; errors before its first event are plain HTTP
        errors), its events as the door's `frames`; a failure after that is the wire
        format's error frame."""
        with self.disconnects.request(request):
            stream = await open_stream(client_host(request))
        return StreamingResponse(
            self._framed(frames(stream)), media_type=media_type, headers=headers(stream.info)
        )

    async def _framed(self, frames: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        wire = self.wire
        render = wire.stream_error
        async with contextlib.aclosing(frames):
            try:
                async for frame in frames:
                    yield frame
            except CumuloError as exc:
                # Headers are sent: the error travels as a frame the SDKs raise on.
                yield render(exc)
            except Exception:  # logged; the client still gets a well-formed error frame
                log.exception("stream failed")
                yield render(CumuloError(wire.internal))
        if wire.stream_end:
            yield wire.stream_end


MAX_LIST = 100  # items per page of a list endpoint, as OpenAI's


def list_limit(request: Request, default: int = 20) -> int:
    """A list endpoint's `limit` query parameter (absent: `default`), 1 to MAX_LIST, else a
    400 naming it."""
    raw = request.query_params.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        raise InvalidRequest(f"limit must be an integer, not {raw!r}.", param="limit") from None
    if not 1 <= limit <= MAX_LIST:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIST}.", param="limit")
    return limit
