"""The S3 backend against a real S3-compatible server on loopback (moto in server mode):
the same file store behaviour, large blobs as multipart uploads, and two `cumulo serve`
replicas on one PostgreSQL database sharing files."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import openai
import pytest

from cumulo.errors import NotFound
from cumulo.files import FileStore, S3Blobs
from cumulo.store.db import Store
from support import CumuloServer
from support.s3 import S3Server, s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


def test_file_store_on_s3(s3: S3Server, tmp_path: Path) -> None:
    big = os.urandom(20 << 20)  # past boto3's multipart threshold (8 MiB)

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(data), 1 << 20):
            yield data[i : i + (1 << 20)]

    async def main() -> None:
        store = Store(f"sqlite+aiosqlite:///{tmp_path / 'c.db'}")
        await store.migrate()
        blobs = S3Blobs(f"s3://{s3.bucket}/tenant-files", tmp_path / "staging", s3.client())
        fs = FileStore(store, blobs)
        try:
            a = await fs.create(
                tenant_id="t", key_id=None, purpose="batch", filename="big", chunks=chunks(big)
            )
            b = await fs.create(
                tenant_id="u", key_id=None, purpose="batch", filename="same", chunks=chunks(big)
            )
            digest = hashlib.sha256(big).hexdigest()
            assert a.sha256 == b.sha256 == digest
            assert s3.keys() == [f"tenant-files/{digest}"]
            head = s3.client().head_object(Bucket=s3.bucket, Key=f"tenant-files/{digest}")
            assert head["ContentLength"] == len(big)
            assert "-" in head["ETag"]  # a multipart upload's ETag: <md5 of md5s>-<parts>
            assert b"".join([c async for c in fs.content(a)]) == big
            await fs.delete("t", a.id)
            assert s3.keys() == [f"tenant-files/{digest}"]
            await fs.delete("u", b.id)
            assert s3.keys() == []
            with pytest.raises(NotFound):
                _ = [c async for c in fs.content(b)]
            assert list((tmp_path / "staging").iterdir()) == []
        finally:
            await store.close()

    asyncio.run(main())


def test_two_replicas_share_files_through_s3(
    s3: S3Server, postgres_url: str, cumulo_factory: Callable[..., CumuloServer]
) -> None:
    config = {"database_url": postgres_url, "files_url": f"s3://{s3.bucket}/shared"}
    one = cumulo_factory(config, **s3.env)
    two = cumulo_factory(config, **s3.env)
    key = one.create_key("s3-replicas")
    first = openai.OpenAI(base_url=one.url + "/v1", api_key=key.token, max_retries=0)
    second = openai.OpenAI(base_url=two.url + "/v1", api_key=key.token, max_retries=0)
    data = b'{"prompt": "shared"}\n' * 1000
    made = first.files.create(file=("shared.jsonl", data), purpose="fine-tune")
    assert second.files.retrieve(made.id).bytes == len(data)
    assert second.files.content(made.id).read() == data
    assert s3.keys() == [f"shared/{hashlib.sha256(data).hexdigest()}"]
    second.files.delete(made.id)
    with pytest.raises(openai.NotFoundError):
        first.files.retrieve(made.id)
    assert s3.keys() == []
    for server in (one, two):  # nothing kept on the replicas' disks
        assert [p for p in (server.home / "files").rglob("*") if p.is_file()] == []
