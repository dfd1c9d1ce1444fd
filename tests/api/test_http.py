"""The front-door flow and its HTTP pieces: a request's accounting, run with its response;
bodies read, parsed and refused in the wire format's words; errors after a stream started."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from pydantic import BaseModel
from starlette.requests import Request

from cumulo.api.http import OPENAI, After, FrontDoor, JSONResponse
from cumulo.errors import InvalidRequest, PayloadTooLarge, UpstreamError
from cumulo.governance.identity.auth import Principal
from cumulo.request.gateway import Defer
from cumulo.request.metering import CallInfo

SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}


def respond(after: After, send: Any) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    asyncio.run(
        JSONResponse({"ok": True}, raw_headers=[(b"x-a", b"1")], after=after)(SCOPE, receive, send)
    )


def test_accounting_runs_once_before_the_response_is_sent() -> None:
    events: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        events.append(message["type"])
        if message["type"] == "http.response.start":
            assert (b"x-a", b"1") in message["headers"]

    after = After()
    after.add(lambda: events.append("accounted"))
    respond(after, send)
    # Before: the usage record must be in the journal before the response leaves.
    assert events == ["accounted", "http.response.start", "http.response.body"]
    after.run()  # already run: nothing twice
    assert events.count("accounted") == 1


def test_accounting_runs_when_sending_fails() -> None:
    done: list[str] = []

    async def send(message: dict[str, Any]) -> None:
        raise OSError("connection reset")

    after = After()
    after.add(lambda: done.append("accounted"))
    with pytest.raises(OSError):
        respond(after, send)
    assert done == ["accounted"]


def test_a_failing_callback_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    done: list[str] = []

    def broken() -> None:
        raise ValueError("bug")

    after = After()
    after.add(broken)
    after.add(lambda: done.append("usage"))
    after.run()
    assert done == ["usage"]
    assert "work after the response failed" in caplog.text


# -- the front-door flow ------------------------------------------------------------------


def request(body: bytes = b"") -> Request:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {
        **SCOPE,
        "headers": [(b"content-length", str(len(body)).encode())],
        "client": ("203.0.113.7", 4242),
    }
    return Request(scope, receive)


async def nobody(_request: Request) -> Principal:
    raise AssertionError("not called")


def test_respond_defers_the_accounting_until_the_response_is_sent() -> None:
    events: list[str] = []
    door = FrontDoor(OPENAI, nobody, 1024)

    async def call(client: str | None, defer: Defer) -> tuple[str, CallInfo]:
        events.append(f"called from {client}")
        defer(lambda: events.append("accounted"))
        return "answer", CallInfo(attempts=1)

    async def send(message: dict[str, Any]) -> None:
        events.append(message["type"])

    async def main() -> None:
        req = request()
        response = await door.respond(req, call, lambda value, info: JSONResponse({"v": value}))
        events.append("returned")
        await response(req.scope, req.receive, send)

    asyncio.run(main())
    assert events == [
        "called from 203.0.113.7",
        "returned",
        "accounted",
        "http.response.start",
        "http.response.body",
    ]


def test_respond_accounts_at_once_when_rendering_fails() -> None:
    accounted: list[str] = []
    door = FrontDoor(OPENAI, nobody, 1024)

    async def call(client: str | None, defer: Defer) -> tuple[str, CallInfo]:
        defer(lambda: accounted.append("accounted"))
        return "answer", CallInfo()

    def render(value: str, info: CallInfo) -> JSONResponse:
        raise InvalidRequest("cannot render")

    with pytest.raises(InvalidRequest):
        asyncio.run(door.respond(request(), call, render))
    assert accounted == ["accounted"]


def test_accept_reads_and_parses_the_body_or_names_the_field() -> None:
    class Body(BaseModel):
        n: int

    who = Principal("k1", "test", "caller")

    async def authenticate(_request: Request) -> Principal:
        return who

    door = FrontDoor(OPENAI, authenticate, 64)
    assert asyncio.run(door.accept(request(b'{"n": 3}'), Body.model_validate_json)) == (
        who,
        Body(n=3),
    )
    with pytest.raises(InvalidRequest, match="The request body is empty"):
        asyncio.run(door.accept(request(b""), Body.model_validate_json))
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        asyncio.run(door.accept(request(b"{"), Body.model_validate_json))
    with pytest.raises(InvalidRequest) as info:
        asyncio.run(door.accept(request(b'{"n": "x"}'), Body.model_validate_json))
    assert info.value.param == "n"
    with pytest.raises(PayloadTooLarge):
        asyncio.run(door.accept(request(b'{"n": 3}' + b" " * 64), Body.model_validate_json))


def test_a_stream_failing_after_its_start_ends_with_the_formats_error_frame() -> None:
    door = FrontDoor(OPENAI, nobody, 1024)

    async def frames() -> AsyncGenerator[bytes, None]:
        yield b"data: first\n\n"
        raise UpstreamError("The upstream went away.")

    async def main() -> list[bytes]:
        return [frame async for frame in door._framed(frames())]

    out = asyncio.run(main())
    assert out[0] == b"data: first\n\n"
    assert b'"message":"The upstream went away."' in out[1]
    assert out[2:] == [b"data: [DONE]\n\n"]
