"""The batch job kind: a JSONL file of requests in, output and error files out.

- `validate`: reads the input file once, streamed, checking each line as the file store's
  validator does (line number and field in each error) and each `custom_id` unique; each
  request becomes an item holding its line's byte offset and length in the file.
- `worker`: reads the claimed lines back from the file (one pass in index order) and runs
  each through the gateway as the batch's owner (`lines.LineCaller`).
- `finalize`: writes the output file (the lines that succeeded) and the error file (those
  that failed; for an expired batch also its unfinished lines, as `batch_expired`) in
  input order, through the file store with the `batch_output` purpose, owned by the
  batch's tenant.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio

from cumulo.config import JobsConfig, ServerConfig
from cumulo.errors import NotFound
from cumulo.files import FileRecord, FileStore, LineError, LineInvalid, parse_batch_line
from cumulo.files.validate import MAX_ERRORS
from cumulo.governance.identity.auth import Authenticator
from cumulo.jobs.batch.lines import LineCaller, error_line
from cumulo.jobs.kinds import JobInvalid
from cumulo.origin import Origin
from cumulo.request.gateway import Gateway
from cumulo.store.jobs import COMPLETED, FAILED, PENDING, ItemResult, ItemRow, JobRow, JobTable

KIND = "batch"
OUTPUT_PURPOSE = "batch_output"
ADD_CHUNK = 1000
WRITE_CHUNK = 1000  # lines written to an output file at once
EXPIRED = "This request could not be executed before the completion window expired."
MAX_LINE_BYTES = 8 << 20


async def lines_with_offsets(
    chunks: AsyncIterator[bytes], max_line_bytes: int = MAX_LINE_BYTES
) -> AsyncIterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset, line without its end) of each line."""
    buf = bytearray()
    number = 0
    start_of_line = 0
    pos = 0  # bytes read before the current chunk
    async for chunk in chunks:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            number += 1
            if len(buf) + end - start > max_line_bytes:
                raise LineInvalid(
                    LineError(number, None, f"line {number} is longer than {max_line_bytes} bytes")
                )
            buf += chunk[start:end]
            yield number, start_of_line, bytes(buf)
            buf.clear()
            start = end + 1
            start_of_line = pos + start
        buf += chunk[start:]
        pos += len(chunk)
        if len(buf) > max_line_bytes:
            raise LineInvalid(
                LineError(
                    number + 1, None, f"line {number + 1} is longer than {max_line_bytes} bytes"
                )
            )
    if buf:
        yield number + 1, start_of_line, bytes(buf)


class RangeReader:
    """Byte ranges of a file read front to back; a range before the position restarts.

    `_buf[_start:]` holds the file from offset `_pos` on; what lies before a requested range
    is skipped by moving `_start` (the buffer is compacted once that passes half of it), so a
    line costs a copy of the line, not of the buffer."""

    def __init__(self, open_: Callable[[], AsyncIterator[bytes]]) -> None:
        self._open = open_
        self._chunks: AsyncIterator[bytes] | None = None
        self._buf = bytearray()
        self._start = 0
        self._pos = 0  # file offset of _buf[_start]

    async def read(self, offset: int, length: int) -> bytes:
        if self._chunks is None or offset < self._pos:
            await self.close()
            self._chunks, self._buf, self._start, self._pos = self._open(), bytearray(), 0, 0
        assert self._chunks is not None
        while True:
            held = len(self._buf) - self._start
            skip = min(offset - self._pos, held)
            self._start += skip
            self._pos += skip
            if self._pos + len(self._buf) - self._start >= offset + length:
                break
            if self._start > len(self._buf) // 2:
                del self._buf[: self._start]
                self._start = 0
            try:
                self._buf += await anext(self._chunks)
            except StopAsyncIteration:
                raise NotFound(
                    "the batch's input file is shorter than when it was checked"
                ) from None
        i = self._start + offset - self._pos
        return bytes(self._buf[i : i + length])

    async def close(self) -> None:
        aclose = getattr(self._chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        self._chunks = None


def _gone(job: JobRow) -> dict[str, Any]:
    return {
        "code": "file_not_found",
        "message": f"The input file {job.input_file_id} was deleted; the batch cannot go on.",
        "param": "input_file_id",
        "line": None,
    }


class BatchKind:
    name = KIND

    def __init__(
        self,
        files: FileStore,
        jobs: JobTable,
        gateway: Gateway,
        auth: Authenticator,
        config: JobsConfig,
        server: ServerConfig,
    ) -> None:
        self.files = files
        self.jobs = jobs
        self.auth = auth
        self.config = config
        self.caller = LineCaller(gateway, server)

    def origin(self, job: JobRow) -> Origin:
        return Origin(KIND, job.id, self.config.batch_price_multiplier)

    def audit_data(self, job: JobRow) -> dict[str, Any]:
        return {
            "input_file_id": job.input_file_id,
            "input_sha256": job.input_sha256,
            "endpoint": job.params.get("endpoint"),
            "output_file_id": job.output_file_id,
            "error_file_id": job.error_file_id,
        }

    async def _input(self, job: JobRow) -> FileRecord:
        assert job.input_file_id is not None
        record = await self.files.get(job.tenant_id, job.input_file_id)
        if record.sha256 != job.input_sha256:  # cannot happen: contents are by hash
            raise NotFound(f"the input file {job.input_file_id} changed")
        return record

    async def validate(
        self, job: JobRow, add_items: Callable[[list[tuple[int, int, int]]], Awaitable[None]]
    ) -> int:
        try:
            record = await self._input(job)
        except NotFound:
            raise JobInvalid([_gone(job)]) from None
        endpoint = job.params["endpoint"]
        errors: list[dict[str, Any]] = []
        seen: dict[str, int] = {}
        pending: list[tuple[int, int, int]] = []
        idx = 0
        limit = self.config.max_batch_lines
        try:
            async for number, offset, raw in lines_with_offsets(self.files.content(record)):
                if not raw.strip():
                    continue
                if idx >= limit:
                    errors.append(
                        LineError(
                            number, None, f"line {number}: a batch holds at most {limit} requests"
                        ).as_dict()
                    )
                    break
                try:
                    line = parse_batch_line(number, raw, endpoint)
                except LineInvalid as exc:
                    if len(errors) < MAX_ERRORS:
                        errors.append(exc.error.as_dict())
                    continue
                first = seen.setdefault(line.custom_id, number)
                if first != number:
                    if len(errors) < MAX_ERRORS:
                        errors.append(
                            LineError(
                                number,
                                "custom_id",
                                f"line {number}: custom_id {line.custom_id!r} repeats line {first}",
                                code="duplicate_custom_id",
                            ).as_dict()
                        )
                    continue
                pending.append((idx, offset, len(raw)))
                idx += 1
                if len(pending) >= ADD_CHUNK and not errors:
                    await add_items(pending)
                    pending = []
        except LineInvalid as exc:
            errors.append(exc.error.as_dict())
        if not errors and idx == 0:
            errors.append(
                LineError(1, None, "the file holds no requests", code="empty_file").as_dict()
            )
        if errors:
            raise JobInvalid(errors)
        await add_items(pending)
        return idx

    def worker(self, job: JobRow) -> _BatchWorker:
        return _BatchWorker(self, job)

    async def finalize(self, job: JobRow) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        out = await self._write(job, COMPLETED, "output")
        if out is not None:
            fields["output_file_id"] = out
        expired = job.ending == "expired"
        err = await self._write(job, FAILED, "error", unfinished=expired)
        if err is not None:
            fields["error_file_id"] = err
        return fields

    async def _write(
        self, job: JobRow, status: str, what: str, unfinished: bool = False
    ) -> str | None:
        """Store the results in `status` as a file; its id (None: there were none)."""
        path = self.files.staging_path()
        count = 0
        chunk: list[bytes] = []
        async with await anyio.open_file(path, "wb") as f:
            async for _, result in self.jobs.results(job.id, status):
                if result is not None:
                    chunk.append(result.encode() + b"\n")
                    if len(chunk) >= WRITE_CHUNK:
                        await f.write(b"".join(chunk))
                        count, chunk = count + len(chunk), []
            if unfinished:
                record = await self._input(job)
                reader = RangeReader(lambda: self.files.content(record))
                try:
                    async for item in self.jobs.unfinished(job.id):
                        raw = await reader.read(item.offset, item.length)
                        line = parse_batch_line(0, raw)
                        chunk.append(
                            error_line(self.caller.ids, line.custom_id, "batch_expired", EXPIRED)
                            + b"\n"
                        )
                        if len(chunk) >= WRITE_CHUNK:
                            await f.write(b"".join(chunk))
                            count, chunk = count + len(chunk), []
                finally:
                    await reader.close()
            await f.write(b"".join(chunk))
            count += len(chunk)
        if count == 0:
            path.unlink(missing_ok=True)
            return None
        record = await self.files.create_from_path(
            path,
            tenant_id=job.tenant_id,
            key_id=job.key_id,
            purpose=OUTPUT_PURPOSE,
            filename=f"{job.id}_{what}.jsonl",
            actor=job.key_id,
        )
        return record.id


class _BatchWorker:
    """Runs one batch's lines in this process."""

    def __init__(self, kind: BatchKind, job: JobRow) -> None:
        self.kind = kind
        self.job = job
        self.endpoint: str = job.params["endpoint"]
        self._reader: RangeReader | None = None
        self._lock = asyncio.Lock()

    async def load(self, items: Sequence[ItemRow]) -> list[bytes]:
        async with self._lock:
            try:
                if self._reader is None:
                    record = await self.kind._input(self.job)
                    self._reader = RangeReader(lambda: self.kind.files.content(record))
                return [await self._reader.read(it.offset, it.length) for it in items]
            except NotFound:
                raise JobInvalid([_gone(self.job)]) from None

    async def run(self, item: ItemRow, payload: bytes) -> ItemResult | None:
        line = parse_batch_line(item.idx + 1, payload, self.endpoint)  # checked at validation
        who = self.kind.auth.principal(self.job.key_id) if self.job.key_id else None
        ok, result = await self.kind.caller.run(who, self.endpoint, line.custom_id, line.body)
        return ItemResult(item.idx, COMPLETED if ok else FAILED, result.decode())

    async def close(self) -> None:
        if self._reader is not None:
            await self._reader.close()


__all__ = ["KIND", "PENDING", "BatchKind", "RangeReader", "lines_with_offsets"]
