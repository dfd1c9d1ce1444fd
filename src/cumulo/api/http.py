"""HTTP helpers shared by every front door: bounded body reads, JSON responses,
cancelling work when the client goes away."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cumulo.errors import BudgetExceeded, CumuloError, InvalidRequest, PayloadTooLarge
from cumulo.gateway import CLIENT_CLOSED

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientDisconnected(Exception):
    """The client closed the connection before its response was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T], after_s: float = 0.05) -> T:
    """Await `work`, cancelling it if the client disconnects first (`ClientDisconnected`).

    Call it once the request body has been read: it then listens for the
    ASGI `http.disconnect` message, so that an upstream call whose client is
    gone is cancelled instead of running to its end. Listening starts only
    once `work` has taken `after_s`: fast calls pay for a timer, not a task.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    def start() -> None:
        nonlocal watcher
        watcher = asyncio.create_task(watch())

    timer = asyncio.get_running_loop().call_later(after_s, start)
    try:
        return await work
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            raise ClientDisconnected from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


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


def client_host(request: Request) -> str | None:
    """The client's address (behind a proxy: as uvicorn's `--forwarded-allow-ips` trusts it)."""
    client = request.scope.get("client")
    return client[0] if client else None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than `limit` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError as exc:
            raise InvalidRequest("Invalid Content-Length header.") from exc
        if size > limit:
            raise PayloadTooLarge(f"Request body is {size} bytes; the limit is {limit} bytes.")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


class JSONResponse(Response):
    """A JSON response serialised with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


Handler = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[CumuloError], Response]


def guarded(handler: Handler, render: ErrorRenderer) -> Handler:
    """Wrap an endpoint so every error leaves in the front door's wire format.

    Cumulo errors keep their status; anything unforeseen is logged with its
    traceback and answered as a 500 without one. A client that went away
    (`unless_disconnected`) gets an empty 499 that nobody reads.
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
