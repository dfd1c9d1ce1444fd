"""The event-stream codec against botocore's own parser (`botocore.eventstream`)."""

from __future__ import annotations

import datetime as dt
import json
import struct
import uuid
import zlib

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer, InvalidPayloadLength

from cumulo import eventstream as es

# AWS's event-stream test vectors, as used by the SDKs' own tests.
EMPTY = b"\x00\x00\x00\x10\x00\x00\x00\x00\x05\xc2H\xeb}\x98\xc8\xff"
INT8 = b"\x00\x00\x00\x17\x00\x00\x00\x07)\x86\x01X\x04byte\x02\xff\xc2\xf8i\xdc"
INT64 = (
    b"\x00\x00\x00\x1e\x00\x00\x00\x0e]J\xdb\x8d\x04long\x05"
    b"\xff\xff\xff\xff\xff\xff\xff\xffK\xc22\xda"
)
STRING_AND_PAYLOAD = (
    b"\x00\x00\x00=\x00\x00\x00 \x07\xfd\x83\x96\x0ccontent-type\x07\x00\x10"
    b"application/json{'foo':'bar'}\x8d\x9c\x08\xb1"
)
ALL_TYPES = (
    b"\x00\x00\x00\x62\x00\x00\x00\x52\x03\xb5\xcb\x9c"
    b"\x010\x00\x011\x01\x012\x02\x02\x013\x03\x00\x03"
    b"\x014\x04\x00\x00\x00\x04\x015\x05\x00\x00\x00\x00\x00\x00\x00\x05"
    b"\x016\x06\x00\x05bytes\x017\x07\x00\x04utf8"
    b"\x018\x08\x00\x00\x00\x00\x00\x00\x00\x08\x019\x090123456789abcdef"
    b"\x63\x35\x36\x71"
)
ERROR = (
    b"\x00\x00\x00\x52\x00\x00\x00\x42\xbf\x23\x63\x7e"
    b"\x0d:message-type\x07\x00\x05error\x0b:error-code\x07\x00\x04code"
    b"\x0e:error-message\x07\x00\x07message\x6b\x6c\xea\x3d"
)
DUPLICATE = (
    b"\x00\x00\x00\x24\x00\x00\x00\x14\x4b\xb9\x82\xd0"
    b"\x04test\x04asdf\x04test\x04asdf\xf3\xf4\x75\x63"
)
CORRUPT_PAYLOAD = b"\x00\x00\x00\x1d\x00\x00\x00\x00\xfdR\x8cZ{'foo':'bar'\x8d\xc3e96"
CORRUPT_LENGTH = b"\x01\x00\x00\x1d\x00\x00\x00\x00\xfdR\x8cZ{'foo':'bar'}\xc3e96"
_HUGE = struct.pack(">II", 30 * 2**20, 0)
HUGE_PAYLOAD = _HUGE + struct.pack(">I", zlib.crc32(_HUGE)) + b"x" * 64  # valid prelude, 30 MB


def botocore_parse(data: bytes, chunk: int | None = None) -> list[tuple[dict[str, object], bytes]]:
    buf = EventStreamBuffer()
    out = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        buf.add_data(data[i : i + step])
        out += [(m.headers, m.payload) for m in buf]
    return out


def test_encoded_events_parse_in_botocore() -> None:
    frames = es.event("contentBlockDelta", {"delta": {"text": "héllo"}, "contentBlockIndex": 0})
    frames += es.exception("throttlingException", "slow down")
    [(h1, p1), (h2, p2)] = botocore_parse(frames)
    assert h1 == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert json.loads(p1) == {"delta": {"text": "héllo"}, "contentBlockIndex": 0}
    assert h2[":message-type"] == "exception" and h2[":exception-type"] == "throttlingException"
    assert json.loads(p2) == {"message": "slow down"}


def test_every_header_type_round_trips_through_botocore() -> None:
    when = dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    headers: dict[str, es.HeaderValue] = {
        "t": True,
        "f": False,
        "small": -7,
        "big": 2**40,
        "s": "text",
        "b": b"\x00\xff",
        "ts": when,
        "id": ident,
    }
    frame = es.encode(headers, b"payload")
    [(parsed, payload)] = botocore_parse(frame)
    assert payload == b"payload"
    assert parsed == {
        "t": True,
        "f": False,
        "small": -7,
        "big": 2**40,
        "s": "text",
        "b": b"\x00\xff",
        "ts": 1714564800250,
        "id": ident.bytes,
    }
    [ours] = es.Decoder().feed(frame)
    assert ours.headers == headers and ours.payload == b"payload"


def test_many_messages_fed_one_byte_at_a_time() -> None:
    data = b"".join(es.event("e", {"n": n, "pad": "x" * n}) for n in range(20))
    decoder = es.Decoder()
    got = [m for i in range(len(data)) for m in decoder.feed(data[i : i + 1])]
    assert [json.loads(m.payload)["n"] for m in got] == list(range(20))
    assert decoder.pending == 0
    assert len(botocore_parse(data, chunk=7)) == 20


@pytest.mark.parametrize("frame", [EMPTY, INT8, INT64, STRING_AND_PAYLOAD, ALL_TYPES, ERROR])
def test_decodes_what_botocore_decodes(frame: bytes) -> None:
    [(expected_headers, expected_payload)] = botocore_parse(frame)
    [message] = es.Decoder().feed(frame)
    assert message.payload == expected_payload
    # botocore leaves timestamps as milliseconds and UUIDs as bytes; we type them.
    ours = {
        k: int(v.timestamp() * 1000)
        if isinstance(v, dt.datetime)
        else v.bytes
        if isinstance(v, uuid.UUID)
        else v
        for k, v in message.headers.items()
    }
    assert ours == expected_headers
    # Re-encoding gives the same bytes where Python types pick the same wire types.
    if frame not in (INT8, INT64, ALL_TYPES):
        assert es.encode(message.headers, message.payload) == frame


def test_the_vectors_concatenated_split_anywhere() -> None:
    data = EMPTY + INT8 + STRING_AND_PAYLOAD + ALL_TYPES + ERROR
    for cut in (1, 5, 13, 50):
        decoder = es.Decoder()
        got = [m for i in range(0, len(data), cut) for m in decoder.feed(data[i : i + cut])]
        assert len(got) == 5
    assert got[4].message_type == "error" and got[4].header(":error-code") == "code"


def test_a_partial_message_waits_for_the_rest() -> None:
    decoder = es.Decoder()
    assert list(decoder.feed(STRING_AND_PAYLOAD[:20])) == []
    assert decoder.pending == 20
    [message] = decoder.feed(STRING_AND_PAYLOAD[20:])
    assert message.headers == {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("frame", "botocore_error"),
    [
        (CORRUPT_PAYLOAD, ChecksumMismatch),
        (CORRUPT_LENGTH, ChecksumMismatch),
        (HUGE_PAYLOAD, InvalidPayloadLength),
        (EMPTY[:8] + b"\x00\x00\x00\x00" + EMPTY[12:], ChecksumMismatch),  # prelude CRC
        (STRING_AND_PAYLOAD.replace(b"content-type", b"content+type"), ChecksumMismatch),
    ],
)
def test_corruption_is_refused_like_botocore(frame: bytes, botocore_error: type[Exception]) -> None:
    with pytest.raises(botocore_error):
        botocore_parse(frame)
    with pytest.raises(es.FramingError):
        list(es.Decoder().feed(frame))


def test_duplicate_headers_are_refused() -> None:
    with pytest.raises(es.FramingError, match="duplicate"):
        list(es.Decoder().feed(DUPLICATE))


def test_good_messages_before_a_corrupt_one_are_delivered_first() -> None:
    messages = es.Decoder().feed(EMPTY + INT8 + CORRUPT_PAYLOAD + EMPTY)
    assert next(messages).headers == {}
    assert next(messages).headers == {"byte": -1}
    with pytest.raises(es.FramingError, match="message CRC"):
        next(messages)


def test_encoding_refuses_what_the_format_cannot_carry() -> None:
    with pytest.raises(ValueError, match="header name"):
        es.encode({"x" * 256: "v"})
    with pytest.raises(ValueError, match="longer than 65535"):
        es.encode({"h": "v" * 70_000})
