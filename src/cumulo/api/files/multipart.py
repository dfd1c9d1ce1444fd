"""Reading a `multipart/form-data` upload as it arrives: the file part goes straight to
the file store's staging file (hashed on the way), never whole into memory.

python-multipart's push parser does the parsing; this module only routes its parts: the
part named `file` (one, and it must carry a filename) is streamed out, every other part
is a small text field kept in memory. Bounds: `max_parts` parts, `max_field_bytes` per
text field, `max_header_bytes` of headers per part. Text fields may come before or after
the file (clients differ), so the fields are complete only once the body is read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from cumulo.api.http import ClientDisconnected
from cumulo.errors import InvalidRequest

FILE_FIELD = "file"


@dataclass(slots=True)
class MultipartLimits:
    max_parts: int = 16
    max_field_bytes: int = 4096
    max_header_bytes: int = 16384


@dataclass(slots=True)
class _Part:
    name: str = ""
    filename: str | None = None
    is_file: bool = False
    value: bytearray = field(default_factory=bytearray)


class MultipartUpload:
    """One upload: `file_bytes()` streams the file part's bytes while reading the body;
    afterwards `fields` holds the text fields, `filename` the file's name (None if the
    body had no `file` part)."""

    def __init__(self, request: Request, limits: MultipartLimits | None = None) -> None:
        content_type, params = parse_options_header(request.headers.get("content-type"))
        if content_type != b"multipart/form-data" or b"boundary" not in params:
            raise InvalidRequest(
                "The body must be multipart/form-data with a `file` and a `purpose`.",
                param="file",
            )
        self.request = request
        self.limits = limits or MultipartLimits()
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self._parts = 0
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._out: list[bytes] = []  # file bytes parsed from the last chunk
        self._error: InvalidRequest | None = None
        self._parser = MultipartParser(
            params[b"boundary"],
            {
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
            },
        )

    async def file_bytes(self) -> AsyncIterator[bytes]:
        """The file part's bytes, reading the whole body (InvalidRequest if malformed)."""
        try:
            async for chunk in self.request.stream():
                self._parser.write(chunk)
                if self._error is not None:
                    raise self._error
                out, self._out = self._out, []
                for piece in out:
                    yield piece
            self._parser.finalize()
        except MultipartParseError as exc:
            raise InvalidRequest(f"The multipart body is malformed: {exc}", param="file") from exc
        except ClientDisconnect as exc:  # the client went away mid-body
            raise ClientDisconnected from exc
        if self._error is not None:
            raise self._error

    # -- parser callbacks (synchronous; errors are raised after `write` returns) ---------

    def _fail(self, message: str, param: str | None) -> None:
        if self._error is None:
            self._error = InvalidRequest(message, param=param)

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.limits.max_parts:
            self._fail(f"The body has more than {self.limits.max_parts} parts.", None)
        self._part = _Part()
        self._headers = []
        self._header_bytes = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_bytes += end - start
        self._header_field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_bytes += end - start
        if self._header_bytes > self.limits.max_header_bytes:
            self._fail("A part's headers are too long.", None)
            return
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers.append((bytes(self._header_field).lower(), bytes(self._header_value)))
        self._header_field.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        disposition = dict(self._headers).get(b"content-disposition")
        _, options = parse_options_header(disposition)
        part = self._part
        part.name = options.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        if part.name == FILE_FIELD:
            if self.filename is not None:
                self._fail("The body has more than one `file` part.", "file")
            elif raw_filename is None:
                self._fail("`file` must be a file upload (a part with a filename).", "file")
            else:
                part.is_file = True
                self.filename = raw_filename.decode("utf-8", "replace") or "upload"

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part.is_file:
            self._out.append(data[start:end])
            return
        part.value += data[start:end]
        if len(part.value) > self.limits.max_field_bytes:
            self._fail(
                f"The field `{part.name}` is longer than {self.limits.max_field_bytes} bytes.",
                part.name or None,
            )
            part.value.clear()

    def _on_part_end(self) -> None:
        part = self._part
        if part.is_file or part.name == FILE_FIELD:
            return
        try:
            self.fields[part.name] = part.value.decode()
        except UnicodeDecodeError:
            self._fail(f"The field `{part.name}` is not UTF-8 text.", part.name or None)
