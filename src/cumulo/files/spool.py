"""Writing an incoming stream to a file while hashing it, without holding it in memory
and without stalling the event loop: bytes are gathered into 1 MiB pieces, and each piece
is hashed and written in a worker thread while the next one is being received (hashlib
and file writes release the GIL). At most one piece is in flight and one is being
gathered, so a spool holds about 2 MiB whatever the size of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path
from typing import BinaryIO

import anyio
import anyio.to_thread

from cumulo.files.blobs import discard

PIECE = 1 << 20


class Spool:
    """`await spool.write(chunk)` any number of times, then `await spool.finish()` for the
    SHA-256 hex digest, or `await spool.abort()` to remove the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self._sha = hashlib.sha256()
        self._buffer = bytearray()
        self._file: BinaryIO | None = None
        self._pending: asyncio.Future[None] | None = None

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        self.size += len(chunk)
        if len(self._buffer) >= PIECE:
            await self._send()

    async def _send(self) -> None:
        piece, self._buffer = self._buffer, bytearray()
        if self._pending is not None:
            await self._pending
        if self._file is None:
            self._file = await anyio.to_thread.run_sync(self.path.open, "wb")
        self._pending = asyncio.ensure_future(anyio.to_thread.run_sync(self._put, piece))

    def _put(self, piece: bytearray) -> None:
        assert self._file is not None
        self._sha.update(piece)
        self._file.write(piece)

    async def finish(self) -> str:
        """Write what is left and close the file; the digest of everything written."""
        await self._send()
        assert self._pending is not None and self._file is not None
        await self._pending
        self._pending = None
        await anyio.to_thread.run_sync(self._file.close)
        return self._sha.hexdigest()

    async def abort(self) -> None:
        """Stop, close and remove the file (safe to call at any point, even cancelled)."""
        with anyio.CancelScope(shield=True):
            if self._pending is not None:
                with contextlib.suppress(Exception):
                    await self._pending
            if self._file is not None:
                await anyio.to_thread.run_sync(self._file.close)
            await anyio.to_thread.run_sync(discard, self.path)
