"""Reading a batch file's lines back by byte offset, as the batch kind does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from cumulo.jobs.batch.kind import RangeReader, lines_with_offsets


def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), size):
            yield data[i : i + size]

    return gen()


def test_lines_are_found_again_by_offset_whatever_the_chunking() -> None:
    lines = [json.dumps({"custom_id": f"c{i}", "pad": "x" * (i * 7 % 300)}) for i in range(200)]
    data = ("\n".join(lines[:100]) + "\n\n" + "\r\n".join(lines[100:])).encode()

    async def run(size: int) -> None:
        found = [(n, o, raw) async for n, o, raw in lines_with_offsets(chunks_of(data, size))]
        spans = [(o, len(raw)) for _, o, raw in found if raw.strip()]
        assert len(spans) == 200
        reader = RangeReader(lambda: chunks_of(data, size))
        got = [await reader.read(o, n) for o, n in spans]
        assert [g.rstrip(b"\r") for g in got] == [line.encode() for line in lines]
        # A line before the position starts the file again.
        assert (await reader.read(*spans[3])).rstrip(b"\r") == lines[3].encode()
        await reader.close()

    for size in (1, 7, 64, 4096, 1 << 20):
        asyncio.run(run(size))
