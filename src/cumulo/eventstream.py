"""The AWS binary event-stream framing (`application/vnd.amazon.eventstream`).

What Bedrock's ConverseStream (and every other AWS streaming API) sends. Each
message is, with big-endian integers:

    prelude   total length (u32) | headers length (u32) | CRC32 of those 8 bytes (u32)
    headers   repeated: name length (u8) | name (UTF-8) | type (u8) | value
    payload   total - headers - 16 bytes
    trailer   CRC32 of every byte before it (u32)

Header value types: 0 true, 1 false (no value), 2 int8, 3 int16, 4 int32,
5 int64, 6 bytes and 7 string (u16 length + bytes), 8 timestamp (int64
milliseconds), 9 UUID (16 bytes). `encode` writes what a value's Python type
calls for; `Decoder` reads them all and checks both CRCs.

Used by the Bedrock front door (to send) and the `bedrock` provider (to read);
it depends on nothing else in cumulo.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias

import orjson

HeaderValue: TypeAlias = bool | int | str | bytes | dt.datetime | uuid.UUID

CONTENT_TYPE = "application/vnd.amazon.eventstream"
PRELUDE_LENGTH = 12
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024
_MIN_MESSAGE = PRELUDE_LENGTH + 4
_PRELUDE = struct.Struct(">III")
_U32 = struct.Struct(">I")
_INTS = {
    2: struct.Struct(">b"),
    3: struct.Struct(">h"),
    4: struct.Struct(">i"),
    5: struct.Struct(">q"),
}
_I32_RANGE = range(-(2**31), 2**31)


class FramingError(ValueError):
    """The bytes are not a well-formed event stream (bad CRC, length or header)."""


@dataclass(slots=True, frozen=True)
class Message:
    headers: dict[str, HeaderValue]
    payload: bytes

    @property
    def message_type(self) -> str | None:
        value = self.headers.get(":message-type")
        return value if isinstance(value, str) else None

    def header(self, name: str) -> str | None:
        """A string header, or None when absent or of another type."""
        value = self.headers.get(name)
        return value if isinstance(value, str) else None


# -- encoding ----------------------------------------------------------------------


def _header(name: str, value: HeaderValue) -> bytes:
    raw_name = name.encode()
    if not 0 < len(raw_name) < 256:
        raise ValueError(f"header name must be 1-255 bytes: {name!r}")
    head = bytes([len(raw_name)]) + raw_name
    if isinstance(value, bool):
        return head + bytes([0 if value else 1])
    if isinstance(value, int):
        kind = 4 if value in _I32_RANGE else 5
        return head + bytes([kind]) + _INTS[kind].pack(value)
    if isinstance(value, str | bytes):
        raw = value.encode() if isinstance(value, str) else value
        if len(raw) > 0xFFFF:
            raise ValueError(f"header {name!r} is longer than 65535 bytes")
        kind = 7 if isinstance(value, str) else 6
        return head + bytes([kind]) + struct.pack(">H", len(raw)) + raw
    if isinstance(value, dt.datetime):
        return head + bytes([8]) + _INTS[5].pack(round(value.timestamp() * 1000))
    return head + bytes([9]) + value.bytes


def encode(headers: Mapping[str, HeaderValue], payload: bytes = b"") -> bytes:
    """One framed message: prelude, headers, payload and both CRCs."""
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    if len(raw_headers) > MAX_HEADERS_LENGTH or len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError("event stream headers or payload too long")
    total = _MIN_MESSAGE + len(raw_headers) + len(payload)
    prelude = struct.pack(">II", total, len(raw_headers))
    prelude += _U32.pack(zlib.crc32(prelude))
    body = prelude + raw_headers + payload
    return body + _U32.pack(zlib.crc32(body))


def event(event_type: str, body: object) -> bytes:
    """An `event` message whose payload is `body` as JSON."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode(headers, orjson.dumps(body))


def exception(exception_type: str, message: str) -> bytes:
    """An `exception` message, as AWS sends a modelled error inside a stream."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode(headers, orjson.dumps({"message": message}))


# -- decoding ----------------------------------------------------------------------


def _headers(raw: bytes) -> dict[str, HeaderValue]:
    out: dict[str, HeaderValue] = {}
    i, end = 0, len(raw)
    try:
        while i < end:
            n = raw[i]
            name = raw[i + 1 : i + 1 + n].decode()
            i += 1 + n
            kind = raw[i]
            i += 1
            value: HeaderValue
            if kind in (0, 1):
                value = kind == 0
            elif kind in _INTS:
                fmt = _INTS[kind]
                (value,) = fmt.unpack_from(raw, i)
                i += fmt.size
            elif kind in (6, 7):
                (length,) = struct.unpack_from(">H", raw, i)
                data = raw[i + 2 : i + 2 + length]
                if len(data) != length:
                    raise FramingError("truncated header value")
                value = data.decode() if kind == 7 else data
                i += 2 + length
            elif kind == 8:
                (ms,) = _INTS[5].unpack_from(raw, i)
                value = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
                i += 8
            elif kind == 9:
                if i + 16 > end:
                    raise FramingError("truncated header value")
                value = uuid.UUID(bytes=raw[i : i + 16])
                i += 16
            else:
                raise FramingError(f"unknown header value type {kind}")
            if name in out:
                raise FramingError(f"duplicate header {name!r}")
            out[name] = value
    except (IndexError, struct.error, UnicodeDecodeError) as exc:
        raise FramingError(f"malformed headers: {exc}") from exc
    if i != end:
        raise FramingError("headers overrun their declared length")
    return out


class Decoder:
    """Incremental decoder: `feed` bytes as they arrive, iterate the complete messages.

    Messages are checked one by one as iteration reaches them, so the good
    messages before a corrupt one are delivered before FramingError is raised.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a complete message."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[Message]:
        self._buf += data
        return self._messages()

    def _messages(self) -> Iterator[Message]:
        while len(self._buf) >= PRELUDE_LENGTH:
            total, headers_len, prelude_crc = _PRELUDE.unpack_from(self._buf)
            if zlib.crc32(self._buf[:8]) != prelude_crc:
                raise FramingError("prelude CRC mismatch")
            if headers_len > MAX_HEADERS_LENGTH or total < _MIN_MESSAGE + headers_len:
                raise FramingError(f"invalid lengths: total {total}, headers {headers_len}")
            if total - _MIN_MESSAGE - headers_len > MAX_PAYLOAD_LENGTH:
                raise FramingError(f"payload of a {total}-byte message is too long")
            if len(self._buf) < total:
                return
            frame = bytes(self._buf[:total])
            del self._buf[:total]
            (message_crc,) = _U32.unpack_from(frame, total - 4)
            if zlib.crc32(frame[: total - 4]) != message_crc:
                raise FramingError("message CRC mismatch")
            headers_end = PRELUDE_LENGTH + headers_len
            headers = _headers(frame[PRELUDE_LENGTH:headers_end])
            yield Message(headers, frame[headers_end : total - 4])
