"""Where file contents live: blobs named by their SHA-256 (hex), never by file id.

Two backends implement `BlobStore`:

- `LocalBlobs`: a directory (by default `CUMULO_HOME/files`), one file per blob at
  `<root>/<first two hex digits>/<the other 62>`. Blobs arrive in `<root>/tmp` and are
  renamed into place, so a reader never sees half a blob.
- `S3Blobs`: an S3-compatible bucket (`files_url: s3://bucket/prefix`) through boto3, so
  several replicas share files. The endpoint and credentials come from boto3's own
  environment (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
  `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`...), never from cumulo's config. Large blobs go up
  as multipart uploads (boto3's managed transfer), and come down as a stream.

Neither backend reads a whole blob into memory. boto3 is blocking, so its calls run in
worker threads.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from cumulo.errors import ConfigError, NotFound, Unavailable

CHUNK = 1 << 20  # bytes per read when streaming a blob out
PART = 8 << 20  # bytes per part of an S3 multipart upload
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def discard(path: Path) -> None:
    """Remove the file at `path` if it exists (a staging file after a failed upload)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _check(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
    return sha256


class BlobStore(Protocol):
    """Contents by SHA-256. Every method may raise Unavailable if the storage fails.

    - `staging`: a directory where callers write a blob before `put` (on the same file
      system as the blobs when the backend is a directory, so `put` is a rename).
    - `put(sha256, path)`: store the file at `path` as the blob `sha256`, consuming the file
      (it no longer exists afterwards). Storing a blob that exists already is harmless.
    - `exists(sha256)`.
    - `read(sha256)`: the blob's bytes in chunks; NotFound if there is no such blob.
    - `delete(sha256)`: remove the blob; no error if it is absent.
    """

    staging: Path

    async def put(self, sha256: str, path: Path) -> None: ...

    async def exists(self, sha256: str) -> bool: ...

    def read(self, sha256: str) -> AsyncIterator[bytes]: ...

    async def delete(self, sha256: str) -> None: ...


class LocalBlobs:
    """Blobs as files under `root` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / "tmp"
        self.staging.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"LocalBlobs({self.root})"

    def path(self, sha256: str) -> Path:
        _check(sha256)
        return self.root / sha256[:2] / sha256[2:]

    async def put(self, sha256: str, path: Path) -> None:
        target = self.path(sha256)

        def move() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)

        try:
            await anyio.to_thread.run_sync(move)
        except OSError as exc:
            raise Unavailable(f"cannot store a file in {self.root}: {exc.strerror}") from exc

    async def exists(self, sha256: str) -> bool:
        return await anyio.to_thread.run_sync(self.path(sha256).is_file)

    async def read(self, sha256: str) -> AsyncIterator[bytes]:
        try:
            handle = await anyio.open_file(self.path(sha256), "rb")
        except FileNotFoundError as exc:
            raise NotFound(f"the contents of file {sha256[:12]}... are missing") from exc
        async with handle:
            while chunk := await handle.read(CHUNK):
                yield chunk

    async def delete(self, sha256: str) -> None:
        path = self.path(sha256)

        await anyio.to_thread.run_sync(discard, path)


class S3Blobs:
    """Blobs as objects `<prefix>/<sha256>` in an S3 bucket (see the module docstring)."""

    def __init__(self, url: str, staging: Path, client: Any | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ConfigError(f"files_url: {url!r} is not s3://bucket[/prefix]")
        self.bucket = parts.netloc
        self.prefix = parts.path.strip("/")
        self.staging = staging
        self.staging.mkdir(parents=True, exist_ok=True)
        if client is None:
            import boto3  # imported here: a platform with local files never loads it

            client = boto3.client("s3")
        self.client = client
        from boto3.s3.transfer import TransferConfig

        # Parts of 8 MiB, 4 at once: a large upload holds about 32 MiB, not boto3's default 80.
        self.transfer = TransferConfig(
            multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=4
        )

    def __repr__(self) -> str:
        return f"S3Blobs(s3://{self.bucket}/{self.prefix})"

    def key(self, sha256: str) -> str:
        _check(sha256)
        return f"{self.prefix}/{sha256}" if self.prefix else sha256

    async def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NotFound(f"{what}: no such object") from exc
            raise Unavailable(f"{what} in s3://{self.bucket} failed: {code or exc}") from exc
        except BotoCoreError as exc:
            raise Unavailable(f"{what} in s3://{self.bucket} failed: {exc}") from exc

    async def put(self, sha256: str, path: Path) -> None:
        try:
            await self._call(
                "storing a file",
                self.client.upload_file,
                str(path),
                self.bucket,
                self.key(sha256),
                Config=self.transfer,
            )
        finally:
            discard(path)

    async def exists(self, sha256: str) -> bool:
        try:
            await self._call(
                "looking up a file",
                self.client.head_object,
                Bucket=self.bucket,
                Key=self.key(sha256),
            )
        except NotFound:
            return False
        return True

    async def read(self, sha256: str) -> AsyncIterator[bytes]:
        reply = await self._call(
            "reading a file", self.client.get_object, Bucket=self.bucket, Key=self.key(sha256)
        )
        body = reply["Body"]
        try:
            while chunk := await self._call("reading a file", body.read, CHUNK):
                yield chunk
        finally:
            body.close()

    async def delete(self, sha256: str) -> None:
        await self._call(
            "deleting a file", self.client.delete_object, Bucket=self.bucket, Key=self.key(sha256)
        )


def blob_store(files_url: str | None, home: Path) -> BlobStore:
    """The backend for `files_url` (None: the directory `home/files`)."""
    if not files_url:
        return LocalBlobs(home / "files")
    if files_url.startswith("s3://"):
        return S3Blobs(files_url, home / "files" / "tmp")
    raise ConfigError(
        f"files_url: {files_url!r} is not s3://bucket[/prefix]; leave it unset "
        "to keep files under CUMULO_HOME"
    )
