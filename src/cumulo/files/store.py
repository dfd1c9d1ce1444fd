"""The file store: file records in the database, their contents in a `BlobStore`.

A file belongs to a tenant (the uploader's; None for keys without a tenant) and is only
ever found through that tenant: every method takes `tenant_id` and answers NotFound for
another tenant's file, exactly as for a file that does not exist.

Contents are content-addressed: a file row names its blob by SHA-256, two uploads of the
same bytes share one blob, and a blob is removed only when no file row names it. The
`file_blobs` row of a hash counts the file rows naming it and is the lock that orders
storing a blob against removing it:

    create: contents -> staging file (hashed while written, bounded by `max_bytes`)
            txn { blob row refs += 1; file row status "pending" }
            blob store put (skipped if present) ; ledger entry ; file row -> "processed"
    delete: txn { file row deleted; blob row refs -= 1;
                  at 0: blob row deleted and the blob removed before the commit }

so an upload racing a delete of the same contents either waits for the removal and then
stores the blob again, or keeps the blob alive. Pending rows are invisible to readers.

Every upload and delete is a ledger entry with the file's hash (`audit`); an upload the
ledger cannot record is undone, so no file exists without its entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import string
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import anyio
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from cumulo.errors import InvalidRequest, NotFound, PayloadTooLarge, RateLimited
from cumulo.files.blobs import BlobStore, discard
from cumulo.files.spool import Spool
from cumulo.store.db import Store
from cumulo.store.schema import file_blobs, files

# Purposes a caller may upload with, and those only cumulo writes (results of its jobs).
UPLOAD_PURPOSES = ("batch", "fine-tune", "evals", "user_data")
SERVICE_PURPOSES = ("batch_output", "fine-tune-results")
PURPOSES = UPLOAD_PURPOSES + SERVICE_PURPOSES

DEFAULT_MAX_BYTES = 512 << 20
DEFAULT_MAX_FILES = 10_000
MAX_FILENAME = 256
LIST_LIMIT_MAX = 10_000
STALE_S = 6 * 3600  # a pending row or staging file this old is left from a crash
_ID_ALPHABET = string.ascii_letters + string.digits

Order = Literal["asc", "desc"]


class AuditLog(Protocol):
    """The audit ledger, as the file store uses it (`governance.audit.ledger.Ledger` is one)."""

    async def append(
        self,
        actor: str | None,
        action: str,
        target: str | None = None,
        tenant_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Any: ...


@dataclass(slots=True, frozen=True)
class FileLimits:
    """`max_bytes` per file, `max_files` per tenant (the files it holds at once)."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_files: int = DEFAULT_MAX_FILES


@dataclass(slots=True, frozen=True)
class FileRecord:
    """One file: its row in `files`."""

    id: str
    tenant_id: str | None
    key_id: str | None
    purpose: str
    filename: str
    bytes: int
    sha256: str
    created_at: float
    status: str


@dataclass(slots=True, frozen=True)
class Staged:
    """Bytes written to the staging directory and hashed, not yet a file (`stage`)."""

    path: Path
    sha256: str
    size: int


@dataclass(slots=True, frozen=True)
class FilePage:
    """One page of a listing, and whether more follow it."""

    data: list[FileRecord]
    has_more: bool


def new_file_id() -> str:
    return "file-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def _record(row: Any) -> FileRecord:
    m = row._mapping
    return FileRecord(**{k: m[k] for k in FileRecord.__slots__})


def _owned(tenant_id: str | None) -> Any:
    return files.c.tenant_id.is_(None) if tenant_id is None else files.c.tenant_id == tenant_id


class FileStore:
    """Files of every tenant: records in `store`, contents in `blobs` (module docstring)."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        limits: FileLimits | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.limits = limits or FileLimits()
        self.audit = audit

    # -- writing -------------------------------------------------------------------

    def staging_path(self) -> Path:
        """A fresh path in the blob store's staging directory (for `create_from_path`)."""
        return self.blobs.staging / f"upload-{uuid.uuid4().hex}"

    async def create(
        self,
        *,
        tenant_id: str | None,
        key_id: str | None,
        purpose: str,
        filename: str,
        chunks: AsyncIterable[bytes],
        actor: str | None = None,
    ) -> FileRecord:
        """Store the bytes of `chunks` as a new file and return its record.

        The bytes go to a staging file while they are hashed, never all in memory.
        Raises PayloadTooLarge (413) as soon as they pass `limits.max_bytes` (nothing is
        kept), RateLimited (429) if the tenant holds `limits.max_files` files already,
        InvalidRequest for a purpose or filename cumulo does not accept.
        """
        check_fields(purpose, filename)
        await self.check_room(tenant_id)
        staged = await self.stage(chunks)
        return await self.add(
            staged,
            tenant_id=tenant_id,
            key_id=key_id,
            purpose=purpose,
            filename=filename,
            actor=actor,
        )

    async def stage(self, chunks: AsyncIterable[bytes]) -> Staged:
        """Write `chunks` to a staging file, hashing them; PayloadTooLarge (param `file`)
        as soon as they pass `limits.max_bytes` (the staging file is removed).

        For a front door that learns the file's purpose and name after its bytes (a
        multipart body): `add` it then, or `discard` it.
        """
        spool = Spool(self.staging_path())
        limit = self.limits.max_bytes
        try:
            async for chunk in chunks:
                if spool.size + len(chunk) > limit:
                    raise PayloadTooLarge(f"file is over the limit of {limit} bytes", param="file")
                await spool.write(chunk)
            digest = await spool.finish()
        except BaseException:
            await spool.abort()
            raise
        return Staged(spool.path, digest, spool.size)

    async def add(
        self,
        staged: Staged,
        *,
        tenant_id: str | None,
        key_id: str | None,
        purpose: str,
        filename: str,
        actor: str | None = None,
    ) -> FileRecord:
        """Make a staged file one of the tenant's files (`staged` is consumed either way).

        InvalidRequest for a purpose or filename cumulo does not accept, RateLimited if
        the tenant holds `limits.max_files` files already.
        """
        try:
            check_fields(purpose, filename)
            await self.check_room(tenant_id)
            return await self._commit(staged, tenant_id, key_id, purpose, filename, actor)
        finally:
            await self.discard(staged)

    async def discard(self, staged: Staged) -> None:
        """Remove a staged file that will not be added."""
        await anyio.to_thread.run_sync(discard, staged.path)

    async def create_from_path(
        self,
        path: Path,
        *,
        tenant_id: str | None,
        key_id: str | None,
        purpose: str,
        filename: str,
        actor: str | None = None,
    ) -> FileRecord:
        """Store the file at `path` (consumed: it is moved or removed) as a new file.

        For files cumulo writes itself (a batch's output, written to `staging_path()`, so
        that storing it locally is a rename). The same errors as `add`; the size limit
        applies to upload purposes only.
        """
        try:
            digest, size = await anyio.to_thread.run_sync(_hash_file, path)
        except BaseException:
            await anyio.to_thread.run_sync(discard, path)
            raise
        staged = Staged(path, digest, size)
        if size > self.limits.max_bytes and purpose not in SERVICE_PURPOSES:
            await self.discard(staged)
            raise PayloadTooLarge(
                f"file is over the limit of {self.limits.max_bytes} bytes", param="file"
            )
        return await self.add(
            staged,
            tenant_id=tenant_id,
            key_id=key_id,
            purpose=purpose,
            filename=filename,
            actor=actor,
        )

    async def check_room(self, tenant_id: str | None) -> None:
        """RateLimited (429, code `files_limit`) if the tenant holds `limits.max_files`."""
        async with self.store.engine.connect() as conn:
            count = select(func.count()).select_from(files).where(_owned(tenant_id))
            n = (await conn.execute(count)).scalar_one()
        if n >= self.limits.max_files:
            raise RateLimited(
                f"this tenant holds {n} files, the limit is {self.limits.max_files}; "
                "delete files to upload more",
                code="files_limit",
            )

    async def _commit(
        self,
        staged: Staged,
        tenant_id: str | None,
        key_id: str | None,
        purpose: str,
        filename: str,
        actor: str | None,
    ) -> FileRecord:
        path, digest, size = staged.path, staged.sha256, staged.size
        now = time.time()
        record = FileRecord(
            new_file_id(), tenant_id, key_id, purpose, filename, size, digest, now, "pending"
        )
        async with self.store.engine.begin() as conn:
            await self._ref(conn, digest, size, now)
            await conn.execute(insert(files).values(**_values(record)))
        try:
            if not await self.blobs.exists(digest):
                await self.blobs.put(digest, path)
            # Audited before it becomes visible: no file exists without its ledger entry.
            if self.audit is not None:
                await self.audit.append(
                    actor or key_id,
                    "file.upload",
                    record.id,
                    tenant_id,
                    {"purpose": purpose, "filename": filename, "bytes": size, "sha256": digest},
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._forget(record)
            raise
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(files).where(files.c.id == record.id).values(status="processed")
            )
        done = FileRecord(**{**_values(record), "status": "processed"})
        return done

    async def _ref(self, conn: AsyncConnection, digest: str, size: int, now: float) -> None:
        """Count one more row naming blob `digest`, waiting for a removal of it to finish."""
        upsert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        row = upsert(file_blobs).values(sha256=digest, bytes=size, refs=1, created_at=now)
        await conn.execute(
            row.on_conflict_do_update(
                index_elements=[file_blobs.c.sha256], set_={"refs": file_blobs.c.refs + 1}
            )
        )

    # -- reading -------------------------------------------------------------------

    async def get(self, tenant_id: str | None, file_id: str) -> FileRecord:
        """The file `file_id` of this tenant; NotFound (param `file_id`) otherwise."""
        query = select(files).where(
            files.c.id == file_id, _owned(tenant_id), files.c.status != "pending"
        )
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        return _record(row)

    async def list(
        self,
        tenant_id: str | None,
        *,
        purpose: str | None = None,
        limit: int = LIST_LIMIT_MAX,
        after: str | None = None,
        order: Order = "desc",
    ) -> FilePage:
        """This tenant's files by creation time, `limit` at most, after the file `after`.

        InvalidRequest (param `after`) if `after` is not one of this tenant's files.
        """
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise InvalidRequest(f"limit must be between 1 and {LIST_LIMIT_MAX}", param="limit")
        query = select(files).where(_owned(tenant_id), files.c.status != "pending")
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        if after is not None:
            try:
                cursor = await self.get(tenant_id, after)
            except NotFound as exc:
                raise InvalidRequest(f"after: no such file {after}", param="after") from exc
            at, fid = files.c.created_at, files.c.id
            if order == "desc":
                query = query.where(
                    or_(at < cursor.created_at, and_(at == cursor.created_at, fid < cursor.id))
                )
            else:
                query = query.where(
                    or_(at > cursor.created_at, and_(at == cursor.created_at, fid > cursor.id))
                )
        keys = (files.c.created_at, files.c.id)
        query = query.order_by(*(k.desc() if order == "desc" else k.asc() for k in keys))
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit + 1))).all()
        return FilePage([_record(r) for r in rows[:limit]], has_more=len(rows) > limit)

    def content(self, record: FileRecord) -> AsyncIterator[bytes]:
        """The bytes of a file got from `get` (streamed; NotFound if its blob is missing)."""
        return self.blobs.read(record.sha256)

    # -- deleting ------------------------------------------------------------------

    async def delete(
        self, tenant_id: str | None, file_id: str, *, actor: str | None = None
    ) -> FileRecord:
        """Delete this tenant's file `file_id` (NotFound otherwise), and its blob if no other
        file names it."""
        record = await self.get(tenant_id, file_id)
        if not await self._forget(record):
            raise NotFound(f"No such File object: {file_id}", param="file_id")
        if self.audit is not None:
            await self.audit.append(
                actor,
                "file.delete",
                record.id,
                tenant_id,
                {"purpose": record.purpose, "bytes": record.bytes, "sha256": record.sha256},
            )
        return record

    async def sweep(self, older_than_s: float = STALE_S) -> int:
        """Remove what uploads cut short by a crash left behind: file rows still pending
        (and their blob references) and staging files, older than `older_than_s`.
        The number of rows removed. Run at start; no upload takes that long to store."""
        cutoff = time.time() - older_than_s
        query = select(files).where(files.c.status == "pending", files.c.created_at < cutoff)
        async with self.store.engine.connect() as conn:
            stale = [_record(r) for r in (await conn.execute(query)).all()]
        for record in stale:
            await self._forget(record)
        await anyio.to_thread.run_sync(_remove_older, self.blobs.staging, cutoff)
        return len(stale)

    async def _forget(self, record: FileRecord) -> bool:
        """Delete the row of `record` and, at its blob's last reference, the blob."""
        async with self.store.engine.begin() as conn:
            gone = await conn.execute(delete(files).where(files.c.id == record.id))
            if gone.rowcount == 0:
                return False
            lock = select(file_blobs.c.refs).where(file_blobs.c.sha256 == record.sha256)
            if conn.dialect.name == "postgresql":
                lock = lock.with_for_update()
            await conn.execute(
                update(file_blobs)
                .where(file_blobs.c.sha256 == record.sha256)
                .values(refs=file_blobs.c.refs - 1)
            )
            refs = (await conn.execute(lock)).scalar_one_or_none()
            if refs is not None and refs <= 0:
                await conn.execute(delete(file_blobs).where(file_blobs.c.sha256 == record.sha256))
                await self.blobs.delete(record.sha256)
        return True


def _values(record: FileRecord) -> dict[str, Any]:
    return {k: getattr(record, k) for k in FileRecord.__slots__}


def check_fields(purpose: str, filename: str) -> None:
    if purpose not in PURPOSES:
        raise InvalidRequest(
            f"purpose: {purpose!r} is not one of {', '.join(UPLOAD_PURPOSES)}", param="purpose"
        )
    if not filename or len(filename) > MAX_FILENAME or any(c in filename for c in "\0\r\n"):
        raise InvalidRequest(
            f"file: the filename must be 1 to {MAX_FILENAME} characters without line breaks",
            param="file",
        )


def _hash_file(path: Path) -> tuple[str, int]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _remove_older(directory: Path, cutoff: float) -> None:
    for path in directory.glob("upload-*"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
