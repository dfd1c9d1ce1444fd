"""The file store on SQLite and PostgreSQL with a directory of blobs: records per tenant,
content-addressed blobs shared and removed at their last reference, limits, audit."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import insert, select

from cumulo.errors import InvalidRequest, NotFound, PayloadTooLarge, RateLimited, Unavailable
from cumulo.files import FileLimits, FileStore, LocalBlobs
from cumulo.store.db import Store
from cumulo.store.schema import file_blobs, files

T = TypeVar("T")


class Audit:
    def __init__(self) -> None:
        self.entries: list[tuple[Any, ...]] = []

    async def append(
        self, actor: Any, action: str, target: Any = None, tenant_id: Any = None, data: Any = None
    ) -> None:
        self.entries.append((actor, action, target, tenant_id, data))


async def chunks(data: bytes, size: int = 7) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def run(
    url: str,
    tmp_path: Path,
    body: Callable[[FileStore], Awaitable[T]],
    limits: FileLimits | None = None,
) -> T:
    async def main() -> T:
        store = Store(url)
        await store.migrate()
        try:
            return await body(FileStore(store, LocalBlobs(tmp_path / "blobs"), limits, Audit()))
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"
    return str(request.getfixturevalue("postgres_url"))


def blob_files(tmp_path: Path) -> list[Path]:
    return [p for p in (tmp_path / "blobs").rglob("*") if p.is_file() and p.parent.name != "tmp"]


def test_create_get_content_delete(url: str, tmp_path: Path) -> None:
    data = b'{"a": 1}\n' * 1000

    async def body(fs: FileStore) -> None:
        rec = await fs.create(
            tenant_id="t1",
            key_id="k1",
            purpose="batch",
            filename="in.jsonl",
            chunks=chunks(data, 4096),
        )
        assert rec.id.startswith("file-") and rec.bytes == len(data)
        assert rec.sha256 == hashlib.sha256(data).hexdigest() and rec.status == "processed"
        assert await fs.get("t1", rec.id) == rec
        got = b"".join([c async for c in fs.content(rec)])
        assert got == data
        blob = tmp_path / "blobs" / rec.sha256[:2] / rec.sha256[2:]
        assert blob.read_bytes() == data
        with pytest.raises(NotFound):
            await fs.get("t2", rec.id)
        with pytest.raises(NotFound):
            await fs.get(None, rec.id)
        with pytest.raises(NotFound):
            await fs.delete("t2", rec.id)
        assert (await fs.delete("t1", rec.id)).id == rec.id
        with pytest.raises(NotFound):
            await fs.get("t1", rec.id)
        assert not blob.exists()
        assert isinstance(fs.audit, Audit)
        actions = [(e[1], e[2], e[3], e[4]["sha256"]) for e in fs.audit.entries]
        assert actions == [
            ("file.upload", rec.id, "t1", rec.sha256),
            ("file.delete", rec.id, "t1", rec.sha256),
        ]

    run(url, tmp_path, body)


def test_same_contents_share_one_blob_until_the_last_file_goes(url: str, tmp_path: Path) -> None:
    async def body(fs: FileStore) -> None:
        a = await fs.create(
            tenant_id="t1", key_id=None, purpose="batch", filename="a", chunks=chunks(b"same")
        )
        b = await fs.create(
            tenant_id="t2", key_id=None, purpose="evals", filename="b", chunks=chunks(b"same")
        )
        assert a.sha256 == b.sha256 and len(blob_files(tmp_path)) == 1
        await fs.delete("t1", a.id)
        assert b"".join([c async for c in fs.content(b)]) == b"same"
        await fs.delete("t2", b.id)
        assert blob_files(tmp_path) == []

    run(url, tmp_path, body)


def test_over_the_byte_limit_nothing_is_kept(url: str, tmp_path: Path) -> None:
    async def body(fs: FileStore) -> None:
        with pytest.raises(PayloadTooLarge) as err:
            await fs.create(
                tenant_id="t1",
                key_id=None,
                purpose="batch",
                filename="big",
                chunks=chunks(b"x" * 101),
            )
        assert err.value.status == 413 and err.value.param == "file"
        assert (await fs.list("t1")).data == []
        ok = await fs.create(
            tenant_id="t1", key_id=None, purpose="batch", filename="ok", chunks=chunks(b"x" * 100)
        )
        assert ok.bytes == 100

    run(url, tmp_path, body, FileLimits(max_bytes=100))
    assert len(blob_files(tmp_path)) == 1
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []


def test_files_per_tenant_limit(url: str, tmp_path: Path) -> None:
    async def body(fs: FileStore) -> None:
        for i in range(2):
            await fs.create(
                tenant_id="t1",
                key_id=None,
                purpose="batch",
                filename=f"f{i}",
                chunks=chunks(b"%d" % i),
            )
        with pytest.raises(RateLimited):
            await fs.create(
                tenant_id="t1", key_id=None, purpose="batch", filename="f3", chunks=chunks(b"3")
            )
        await fs.create(
            tenant_id="t2", key_id=None, purpose="batch", filename="other", chunks=chunks(b"3")
        )

    run(url, tmp_path, body, FileLimits(max_files=2))


def test_list_pages_by_purpose_and_order(url: str, tmp_path: Path) -> None:
    async def body(fs: FileStore) -> None:
        made = [
            await fs.create(
                tenant_id="t1",
                key_id=None,
                purpose="batch" if i % 2 else "evals",
                filename=f"f{i}",
                chunks=chunks(b"%d" % i),
            )
            for i in range(5)
        ]
        await fs.create(
            tenant_id="t2", key_id=None, purpose="batch", filename="x", chunks=chunks(b"x")
        )
        newest_first = [r.id for r in reversed(made)]
        page = await fs.list("t1", limit=2)
        assert [r.id for r in page.data] == newest_first[:2] and page.has_more
        page = await fs.list("t1", limit=2, after=page.data[-1].id)
        assert [r.id for r in page.data] == newest_first[2:4] and page.has_more
        page = await fs.list("t1", limit=2, after=page.data[-1].id)
        assert [r.id for r in page.data] == newest_first[4:] and not page.has_more
        asc = await fs.list("t1", order="asc")
        assert [r.id for r in asc.data] == [r.id for r in made]
        batch = await fs.list("t1", purpose="batch")
        assert {r.filename for r in batch.data} == {"f1", "f3"}
        with pytest.raises(InvalidRequest) as err:
            await fs.list("t2", after=made[0].id)  # another tenant's file is no cursor
        assert err.value.param == "after"

    run(url, tmp_path, body)


def test_bad_purpose_and_filename(url: str, tmp_path: Path) -> None:
    async def body(fs: FileStore) -> None:
        with pytest.raises(InvalidRequest) as err:
            await fs.create(
                tenant_id="t1", key_id=None, purpose="nope", filename="a", chunks=chunks(b"a")
            )
        assert err.value.param == "purpose"
        with pytest.raises(InvalidRequest) as err:
            await fs.create(
                tenant_id="t1", key_id=None, purpose="batch", filename="a\nb", chunks=chunks(b"a")
            )
        assert err.value.param == "file"

    run(url, tmp_path, body)


def test_service_written_file_from_a_path(url: str, tmp_path: Path) -> None:
    async def body(fs: FileStore) -> None:
        path = fs.staging_path()
        path.write_bytes(b"out\n")
        rec = await fs.create_from_path(
            path, tenant_id="t1", key_id="k", purpose="batch_output", filename="batch_out.jsonl"
        )
        assert not path.exists() and rec.bytes == 4
        assert b"".join([c async for c in fs.content(rec)]) == b"out\n"

    run(url, tmp_path, body)


def test_upload_and_delete_of_the_same_contents_at_once_keep_every_file_readable(
    url: str, tmp_path: Path
) -> None:
    async def body(fs: FileStore) -> None:
        for _round in range(10):
            old = await fs.create(
                tenant_id="t1", key_id=None, purpose="batch", filename="a", chunks=chunks(b"shared")
            )
            _, new = await asyncio.gather(
                fs.delete("t1", old.id),
                fs.create(
                    tenant_id="t1",
                    key_id=None,
                    purpose="batch",
                    filename="b",
                    chunks=chunks(b"shared"),
                ),
            )
            assert b"".join([c async for c in fs.content(new)]) == b"shared"
            await fs.delete("t1", new.id)
        assert blob_files(tmp_path) == []

    run(url, tmp_path, body)


def test_sweep_removes_what_a_crashed_upload_left(url: str, tmp_path: Path) -> None:
    async def body(fs: FileStore) -> None:
        kept = await fs.create(
            tenant_id="t1", key_id=None, purpose="batch", filename="kept", chunks=chunks(b"kept")
        )
        # A crash between the row and the blob: a pending row, its reference, a staging file.
        crashed = dataclasses.replace(
            kept,
            id="file-crashed",
            status="pending",
            sha256=hashlib.sha256(b"lost").hexdigest(),
            created_at=time.time() - 7 * 3600,
        )
        async with fs.store.engine.begin() as conn:
            await conn.execute(insert(files).values(**dataclasses.asdict(crashed)))
            await conn.execute(
                insert(file_blobs).values(
                    sha256=crashed.sha256, bytes=4, refs=1, created_at=crashed.created_at
                )
            )
        leftover = fs.staging_path()
        leftover.write_bytes(b"half")
        os.utime(leftover, (time.time() - 7 * 3600,) * 2)
        fresh = fs.staging_path()
        fresh.write_bytes(b"in flight")

        assert await fs.sweep() == 1
        async with fs.store.engine.connect() as conn:
            ids = (await conn.execute(select(files.c.id))).scalars().all()
            shas = (await conn.execute(select(file_blobs.c.sha256))).scalars().all()
        assert ids == [kept.id] and shas == [kept.sha256]
        assert not leftover.exists() and fresh.exists()
        assert await fs.sweep() == 0

    run(url, tmp_path, body)


def test_an_upload_the_ledger_cannot_record_is_not_kept(url: str, tmp_path: Path) -> None:
    class Down(Audit):
        async def append(self, *args: Any, **kwargs: Any) -> None:
            raise Unavailable("the ledger is down")

    async def body(fs: FileStore) -> None:
        fs.audit = Down()
        with pytest.raises(Unavailable):
            await fs.create(
                tenant_id="t1",
                key_id=None,
                purpose="batch",
                filename="a",
                chunks=chunks(b"unaudited"),
            )
        assert (await fs.list("t1")).data == []
        async with fs.store.engine.connect() as conn:
            assert (await conn.execute(select(files.c.id))).all() == []
            assert (await conn.execute(select(file_blobs.c.sha256))).all() == []

    run(url, tmp_path, body)
    assert blob_files(tmp_path) == []
