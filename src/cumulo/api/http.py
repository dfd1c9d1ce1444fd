"""HTTP helpers shared by every front door: bounded body reads, JSON responses."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cumulo.errors import CumuloError, InvalidRequest, PayloadTooLarge

log = logging.getLogger(__name__)


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


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequest("The request body is empty; a JSON object is required.")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    return data


Handler = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[CumuloError], Response]


def guarded(handler: Handler, render: ErrorRenderer) -> Handler:
    """Wrap an endpoint so every error leaves in the front door's wire format.

    Cumulo errors keep their status; anything unforeseen is logged with its
    traceback and answered as a 500 without one.
    """

    async def endpoint(request: Request) -> Response:
        try:
            return await handler(request)
        except CumuloError as exc:
            return render(exc)
        except Exception:  # the last line of defence: log it, never leak it
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            return render(CumuloError("The server had an error while processing the request."))

    endpoint.__name__ = getattr(handler, "__name__", "endpoint")
    endpoint.__doc__ = handler.__doc__
    return endpoint
