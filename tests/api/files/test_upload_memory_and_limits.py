"""Uploads on a dedicated `cumulo serve`: a 200 MB upload and its download keep the
server's memory flat (peak RSS measured from /proc), and a file over the byte limit is
refused with 413 before anything is kept, whether or not the client sent its length."""

from __future__ import annotations

import hashlib
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import openai
import pytest

from support import ApiKey, CumuloServer, wait_until

MiB = 1 << 20


def multipart(chunks: Iterator[bytes], purpose: str = "batch") -> tuple[str, Iterator[bytes]]:
    """A multipart body (content type, parts) streamed from `chunks`, without a length."""
    boundary = secrets.token_hex(16)

    def body() -> Iterator[bytes]:
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        ).encode()
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="big.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
        ).encode()
        yield from chunks
        yield f"\r\n--{boundary}--\r\n".encode()

    return f"multipart/form-data; boundary={boundary}", body()


def status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def blobs(server: CumuloServer) -> list[Path]:
    root = server.home / "files"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


@pytest.fixture(scope="module")
def small(cumulo_factory: Callable[..., CumuloServer]) -> CumuloServer:
    return cumulo_factory({"files": {"max_file_bytes": 10_000, "max_files_per_tenant": 3}})


def test_over_the_byte_limit_is_413_and_nothing_is_kept(small: CumuloServer) -> None:
    key = small.create_key("limit")
    client = openai.OpenAI(base_url=small.url + "/v1", api_key=key.token, max_retries=0)
    with pytest.raises(openai.APIStatusError) as err:
        client.files.create(file=("big.jsonl", b"x" * 10_001), purpose="batch")
    assert err.value.status_code == 413
    body = err.value.body
    assert isinstance(body, dict) and body["param"] == "file"
    # No Content-Length (chunked): refused as the bytes pass the limit.
    content_type, parts = multipart(iter([b"y" * 4096] * 100))
    with httpx.Client(base_url=small.url, timeout=30) as http:
        resp = http.post(
            "/v1/files",
            content=parts,
            headers={"content-type": content_type, "authorization": f"Bearer {key.token}"},
        )
    assert resp.status_code == 413, resp.text
    assert blobs(small) == [] and client.files.list().data == []
    assert client.files.create(file=("ok.jsonl", b"x" * 10_000), purpose="batch").bytes == 10_000
    assert len(blobs(small)) == 1


def test_files_per_tenant_limit_is_429(small: CumuloServer) -> None:
    key: ApiKey
    with small.admin() as admin:
        tenant = admin.post("/admin/tenants", json={"name": "files-limit"}).json()["id"]
        made = admin.post("/admin/keys", json={"name": "t", "tenant_id": tenant}).json()
    key = ApiKey(made["id"], made["key"])
    client = openai.OpenAI(base_url=small.url + "/v1", api_key=key.token, max_retries=0)
    for i in range(3):
        client.files.create(file=(f"f{i}", b"%d" % i), purpose="user_data")
    with pytest.raises(openai.RateLimitError):
        client.files.create(file=("f4", b"4"), purpose="user_data")
    client.files.delete(client.files.list().data[0].id)
    client.files.create(file=("f4", b"4"), purpose="user_data")


def test_a_200_mb_upload_and_download_keep_the_server_rss_flat(
    cumulo_factory: Callable[..., CumuloServer],
) -> None:
    server = cumulo_factory({})  # no models: the process holds little besides the request
    key = server.create_key("big")
    pid = server.process.pid
    size = 200 * MiB
    block = (b'{"custom_id": "x", "body": "' + b"z" * 990 + b'"}\n') * 1100
    block = block[:MiB]
    content_type, parts = multipart(iter([block] * (size // MiB)))
    headers = {"authorization": f"Bearer {key.token}"}

    with httpx.Client(base_url=server.url, timeout=300, headers=headers) as http:
        http.get("/v1/files")  # warm: first request's imports and connections
        before = status(pid)["VmRSS"]
        reset_peak(pid)
        resp = http.post("/v1/files", content=parts, headers={"content-type": content_type})
        assert resp.status_code == 200, resp.text
        upload_peak = status(pid)["VmHWM"]
        made = resp.json()
        assert made["bytes"] == size

        reset_peak(pid)
        digest = hashlib.sha256()
        got = 0
        with http.stream("GET", f"/v1/files/{made['id']}/content") as stream:
            for chunk in stream.iter_bytes():
                digest.update(chunk)
                got += len(chunk)
        download_peak = status(pid)["VmHWM"]

    assert got == size and digest.hexdigest() == hashlib.sha256(block * (size // MiB)).hexdigest()
    # The file is 200 MiB; the server grows by a small fraction of it, at most.
    assert upload_peak - before < 40 * MiB, (before, upload_peak)
    assert download_peak - before < 40 * MiB, (before, download_peak)


def test_a_client_gone_mid_upload_leaves_nothing(cumulo: CumuloServer) -> None:
    key = cumulo.create_key("gone")
    host, port = cumulo.url.removeprefix("http://").split(":")
    staging = cumulo.home / "files" / "tmp"
    boundary = "b0undary"
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key.token}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {8 * MiB}\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + b"z" * (3 * MiB))
        assert wait_until(lambda: staging.exists() and any(staging.iterdir()), timeout=10)
    # The server notices, removes what it staged and keeps no file.
    assert wait_until(lambda: not any(staging.iterdir()), timeout=10)
    with httpx.Client(base_url=cumulo.url, headers={"Authorization": f"Bearer {key.token}"}) as h:
        assert h.get("/v1/files").json()["data"] == []
    assert "unhandled error on POST /v1/files" not in cumulo.output()
