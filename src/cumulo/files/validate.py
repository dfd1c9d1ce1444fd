"""Checking a file for the purpose it is used for, line by line, never all in memory.

A `batch` file is JSONL: one request per line,

    {"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}

with `custom_id` a non-empty string unique in the file, `method` POST, `url` the batch's
endpoint (when one is given), `body` a JSON object. Blank lines are skipped. Each problem
is a `LineError` naming the 1-based line number and the field (`param`), in the shape of
OpenAI's batch `errors.data` items.

Bounds: a line is at most `max_line_bytes`, a file at most `max_lines` requests; past
either, checking stops with an error for that line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

MAX_LINE_BYTES = 8 << 20
MAX_LINES = 50_000
MAX_CUSTOM_ID = 512
MAX_ERRORS = 1000  # errors reported per file; the count goes on past it


@dataclass(slots=True, frozen=True)
class LineError:
    """One problem: OpenAI's batch error item `{code, message, param, line}`."""

    line: int
    param: str | None
    message: str
    code: str = "invalid_request"

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


class LineInvalid(ValueError):
    """A line that is not a valid request; `error` says which line and field."""

    def __init__(self, error: LineError) -> None:
        super().__init__(f"line {error.line}: {error.message}")
        self.error = error


@dataclass(slots=True, frozen=True)
class BatchLine:
    """One valid request of a batch file."""

    line: int
    custom_id: str
    method: str
    url: str
    body: dict[str, Any]


@dataclass(slots=True)
class BatchCheck:
    """The outcome of `check_batch`: the requests counted and the problems found."""

    total: int = 0
    errors: list[LineError] = field(default_factory=list)
    error_count: int = 0

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def add(self, error: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(error)


async def iter_lines(
    chunks: AsyncIterable[bytes], *, max_line_bytes: int = MAX_LINE_BYTES
) -> AsyncIterator[tuple[int, bytes]]:
    """(1-based line number, line without its end) for each line of `chunks`.

    Raises LineInvalid (param None) for a line longer than `max_line_bytes`, without
    holding more than that much of it in memory.
    """
    buf = bytearray()
    number = 0
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            number += 1
            if len(buf) + end - start > max_line_bytes:
                raise LineInvalid(_too_long(number, max_line_bytes))
            buf += chunk[start:end]
            yield number, bytes(buf).rstrip(b"\r")
            buf.clear()
            start = end + 1
        buf += chunk[start:]
        if len(buf) > max_line_bytes:
            raise LineInvalid(_too_long(number + 1, max_line_bytes))
    if buf:
        yield number + 1, bytes(buf).rstrip(b"\r")


def _too_long(line: int, limit: int) -> LineError:
    return LineError(line, None, f"line {line} is longer than {limit} bytes")


def parse_batch_line(line: int, raw: bytes, endpoint: str | None = None) -> BatchLine:
    """The request on line `line`, or LineInvalid naming the field that is wrong."""

    def bad(param: str | None, message: str) -> LineInvalid:
        return LineInvalid(LineError(line, param, f"line {line}: {message}"))

    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(None, f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise bad(None, "a request must be a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        raise bad("custom_id", "custom_id must be a non-empty string")
    if len(custom_id) > MAX_CUSTOM_ID:
        raise bad("custom_id", f"custom_id is longer than {MAX_CUSTOM_ID} characters")
    method = obj.get("method")
    if method != "POST":
        raise bad("method", f"method must be POST, not {method!r}")
    url = obj.get("url")
    if not isinstance(url, str) or not url:
        raise bad("url", "url must be a non-empty string")
    if endpoint is not None and url != endpoint:
        raise bad("url", f"url {url!r} is not the batch's endpoint {endpoint}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise bad("body", "body must be a JSON object")
    return BatchLine(line, custom_id, method, url, body)


async def batch_lines(
    chunks: AsyncIterable[bytes],
    *,
    endpoint: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> AsyncIterator[BatchLine]:
    """The requests of a batch file, in order; LineInvalid at the first bad line.

    Does not check uniqueness of `custom_id` (that is `check_batch`'s job, run once).
    """
    async for number, raw in iter_lines(chunks, max_line_bytes=max_line_bytes):
        if raw.strip():
            yield parse_batch_line(number, raw, endpoint)


async def check_batch(
    chunks: AsyncIterable[bytes],
    *,
    endpoint: str | None = None,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_lines: int = MAX_LINES,
) -> BatchCheck:
    """Check a whole batch file: every line, and each custom_id unique.

    Finds every bad line (the first `MAX_ERRORS` are kept), except that it stops at a
    line over `max_line_bytes` or at the request past `max_lines`.
    """
    check = BatchCheck()
    seen: dict[str, int] = {}
    try:
        async for number, raw in iter_lines(chunks, max_line_bytes=max_line_bytes):
            if not raw.strip():
                continue
            check.total += 1
            if check.total > max_lines:
                check.add(
                    LineError(
                        number, None, f"line {number}: a batch holds at most {max_lines} requests"
                    )
                )
                break
            try:
                request = parse_batch_line(number, raw, endpoint)
            except LineInvalid as exc:
                check.add(exc.error)
                continue
            first = seen.setdefault(request.custom_id, number)
            if first != number:
                check.add(
                    LineError(
                        number,
                        "custom_id",
                        f"line {number}: custom_id {request.custom_id!r} repeats line {first}",
                        code="duplicate_custom_id",
                    )
                )
    except LineInvalid as exc:
        check.add(exc.error)
    if check.total == 0 and check.ok:
        check.add(LineError(1, None, "the file holds no requests", code="empty_file"))
    return check
