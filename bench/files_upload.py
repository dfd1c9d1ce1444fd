"""Uploading and downloading a large file through `POST /v1/files` / `GET .../content`,
against copying the same file on the same disk, in the same run; and the server's memory.

It starts `cumulo serve` (no models, a temporary CUMULO_HOME whose files directory is on the
same file system as the baseline's copies), writes a file of --mb MiB of random bytes, then
interleaves --rounds rounds of:

  copy         shutil.copyfile of the file (the disk's floor for writing it once)
  copy+sha256  read, hash with SHA-256 and write, in 1 MiB chunks (the floor for a
               content-addressed store, which must hash what it keeps)
  http drain   the same multipart upload with httpx to a raw ASGI app on uvicorn (this
               script with --drain PORT) that reads the body and drops it: the floor of
               an HTTP upload from this client to a Python server
  upload       the openai-compatible multipart upload with httpx from the file
               (streamed, chunked), answered once the file is stored; then deleted
  download     GET /v1/files/{id}/content streamed to /dev/null (before the delete)

and prints the median MB/s of each, the ratios of upload to each baseline, and the
server's RSS before the first upload and its peak (VmHWM, reset before each upload and
download through /proc/PID/clear_refs) during them.

    python bench/files_upload.py [--mb 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

MiB = 1 << 20
ADMIN_KEY = "admin-bench-files-upload"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def copy_sha256(src: Path, dst: Path) -> None:
    sha = hashlib.sha256()
    with src.open("rb") as f, dst.open("wb") as out:
        while chunk := f.read(MiB):
            sha.update(chunk)
            out.write(chunk)
        out.flush()


def timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


async def drain(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    """The `http drain` baseline: read the whole body, answer its length."""
    if scope["type"] != "http":
        return
    n = 0
    while True:
        message = await receive()  # type: ignore[operator]
        n += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": str(n).encode()})  # type: ignore[operator]


def start_drain(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = (tmp / "drain.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--drain", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(base, content=b"x", timeout=2)
            return proc, base
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the drain server did not start")


def start_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp / "cumulo.yaml"
    config.write_text("{}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env.update(CUMULO_HOME=str(tmp / "home"), CUMULO_ADMIN_KEY=ADMIN_KEY)
    py = sys.executable
    cumulo = shutil.which("cumulo", path=str(Path(py).parent)) or shutil.which("cumulo")
    argv = [cumulo] if cumulo else [py, "-c", "from cumulo.cli import main; main()"]
    port = free_port()
    log = (tmp / "cumulo.log").open("wb")
    proc = subprocess.Popen(
        [*argv, "serve", "--config", str(config), "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"cumulo exited:\n{(tmp / 'cumulo.log').read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/health/ready", timeout=2).status_code == 200:
                return proc, base
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("cumulo was not ready in 120 s")


def main(mb: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-files-") as name:
        tmp = Path(name)
        src, dst = tmp / "source.bin", tmp / "copy.bin"
        with src.open("wb") as f:
            for _ in range(mb):
                f.write(os.urandom(MiB))
        proc, base = start_server(tmp)
        drainer, drain_url = start_drain(tmp)
        try:
            with httpx.Client(
                base_url=base, timeout=600, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ) as admin:
                made = admin.post("/admin/keys", json={"name": "bench", "role": "caller"})
                made.raise_for_status()
            auth = {"Authorization": f"Bearer {made.json()['key']}"}
            times: dict[str, list[float]] = {
                k: [] for k in ("copy", "copy+sha256", "http drain", "upload", "download")
            }
            peaks: dict[str, list[int]] = {"upload": [], "download": []}
            with httpx.Client(base_url=base, timeout=600, headers=auth) as http:
                http.get("/v1/files").raise_for_status()  # warm
                rss_before = proc_status(proc.pid)["VmRSS"]
                for i in range(rounds):
                    times["copy"].append(timed(lambda: shutil.copyfile(src, dst)))
                    dst.unlink()
                    times["copy+sha256"].append(timed(lambda: copy_sha256(src, dst)))
                    dst.unlink()
                    with src.open("rb") as f:
                        start = time.perf_counter()
                        httpx.post(
                            drain_url,
                            files={"file": (f"r{i}.bin", f)},
                            data={"purpose": "batch"},
                            timeout=600,
                        ).raise_for_status()
                        times["http drain"].append(time.perf_counter() - start)
                    reset_peak(proc.pid)
                    with src.open("rb") as f:
                        start = time.perf_counter()
                        resp = http.post(
                            "/v1/files", files={"file": (f"r{i}.bin", f)}, data={"purpose": "batch"}
                        )
                        times["upload"].append(time.perf_counter() - start)
                    resp.raise_for_status()
                    peaks["upload"].append(proc_status(proc.pid)["VmHWM"])
                    file_id = resp.json()["id"]
                    reset_peak(proc.pid)
                    start = time.perf_counter()
                    got = 0
                    with http.stream("GET", f"/v1/files/{file_id}/content") as stream:
                        for chunk in stream.iter_bytes(MiB):
                            got += len(chunk)
                    times["download"].append(time.perf_counter() - start)
                    peaks["download"].append(proc_status(proc.pid)["VmHWM"])
                    assert got == mb * MiB, got
                    http.delete(f"/v1/files/{file_id}").raise_for_status()
        finally:
            for p in (proc, drainer):
                p.terminate()
                p.wait(30)

    rate = {k: mb / statistics.median(v) for k, v in times.items()}
    print(f"file: {mb} MiB, {rounds} rounds (medians), same disk for every write")
    print(f"{'':14}{'MiB/s':>10}")
    for k, v in rate.items():
        print(f"{k:14}{v:10.1f}")
    for k in ("copy", "copy+sha256", "http drain"):
        print(f"{'upload/' + k:20} {rate['upload'] / rate[k]:.2f}x")
    print(f"download/copy        {rate['download'] / rate['copy']:.2f}x")
    print(f"server RSS before    {rss_before / MiB:.0f} MiB")
    for k, v in peaks.items():
        print(
            f"server peak during {k:9} {max(v) / MiB:.0f} MiB  "
            f"(+{(max(v) - rss_before) / MiB:.0f} MiB for a {mb} MiB file)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--drain", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain:
        import uvicorn

        uvicorn.run(drain, host="127.0.0.1", port=args.drain, log_level="warning")
    else:
        main(args.mb, args.rounds)
