"""Checking a batch file: errors name the line and the field; lines are read as a stream
with bounded length and count."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cumulo.files import LineInvalid, batch_lines, check_batch, iter_lines
from cumulo.files.validate import BatchCheck


def line(custom_id: Any = "a", **over: Any) -> bytes:
    obj = {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": []},
    }
    obj.update(over)
    return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()


async def chunks(data: bytes, size: int = 5) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def check(data: bytes, **kw: Any) -> BatchCheck:
    return asyncio.run(check_batch(chunks(data), **kw))


def test_a_good_file() -> None:
    data = b"\n".join(line(f"r{i}") for i in range(20)) + b"\n\n"
    result = check(data, endpoint="/v1/chat/completions")
    assert result.ok and result.total == 20

    async def collect() -> list[str]:
        return [r.custom_id async for r in batch_lines(chunks(data))]

    assert asyncio.run(collect()) == [f"r{i}" for i in range(20)]


@pytest.mark.parametrize(
    ("bad", "param", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "JSON object"),
        (line(custom_id=...), "custom_id", "custom_id"),
        (line(custom_id=""), "custom_id", "custom_id"),
        (line(custom_id=7), "custom_id", "custom_id"),
        (line(method="GET"), "method", "POST"),
        (line(url=...), "url", "url"),
        (line(url="/v1/embeddings"), "url", "endpoint"),
        (line(body="text"), "body", "JSON object"),
        (line(body=...), "body", "body"),
    ],
)
def test_each_error_names_the_line_and_the_field(bad: bytes, param: str | None, words: str) -> None:
    data = line("first") + b"\n\n" + bad + b"\n" + line("last") + b"\n"
    result = check(data, endpoint="/v1/chat/completions")
    assert not result.ok and result.total == 3
    [err] = result.errors
    assert err.line == 3 and err.param == param and words in err.message
    assert err.message.startswith("line 3:")
    assert err.as_dict() == {
        "code": "invalid_request",
        "message": err.message,
        "param": param,
        "line": 3,
    }


def test_duplicate_custom_id_names_both_lines() -> None:
    result = check(b"\n".join([line("x"), line("y"), line("x")]))
    [err] = result.errors
    assert (err.line, err.param, err.code) == (3, "custom_id", "duplicate_custom_id")
    assert "line 1" in err.message


def test_every_bad_line_is_reported() -> None:
    result = check(b"\n".join([line(method="GET"), line("b"), line(body=1), line("d")]))
    assert [(e.line, e.param) for e in result.errors] == [(1, "method"), (3, "body")]


def test_bounds() -> None:
    long = line("a", body={"x": "y" * 500})
    result = check(long + b"\n" + line("b"), max_line_bytes=100)
    assert [(e.line, e.param) for e in result.errors] == [(1, None)]
    assert "longer than 100 bytes" in result.errors[0].message
    result = check(b"\n".join(line(f"r{i}") for i in range(5)), max_lines=3)
    assert [e.line for e in result.errors] == [4]
    assert check(b"\n \n").errors[0].code == "empty_file"


def test_a_long_line_is_refused_without_reading_it_whole() -> None:
    seen = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal seen
        while True:
            seen += 1
            yield b"x" * 1000

    async def run() -> None:
        async for _ in iter_lines(endless(), max_line_bytes=10_000):
            pass

    with pytest.raises(LineInvalid) as err:
        asyncio.run(run())
    assert err.value.error.line == 1 and seen <= 11


def test_crlf_and_no_final_newline() -> None:
    async def lines() -> list[tuple[int, bytes]]:
        return [x async for x in iter_lines(chunks(b"a\r\nbb\r\n\r\nccc", 2))]

    assert asyncio.run(lines()) == [(1, b"a"), (2, b"bb"), (3, b""), (4, b"ccc")]
