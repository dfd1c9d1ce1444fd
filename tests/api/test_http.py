"""HTTP helpers shared by the front doors: a request's accounting, run with its response."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cumulo.api.http import After, JSONResponse

SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions"}


def respond(after: After, send: Any) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    asyncio.run(JSONResponse({"ok": True}, raw_headers=[(b"x-a", b"1")], after=after)(
        SCOPE, receive, send))


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
