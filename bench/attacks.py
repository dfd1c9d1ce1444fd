"""Attacks without a key on `cumulo serve`: memory and file descriptors before and after.

Starts the fast upstream (`upstream.py`) and `cumulo serve --workers 1` (defaults of
`server:`), then, one after another:

  headers-4m   200 connections, each sending one header block of 4 MiB that never ends
  headers-8m   300 connections x 8 MiB, the same
  idle         20,000 connections that send nothing (fewer if this process's open-files
               limit is lower: the figure printed says how many)
  slow         2,000 connections: a third idle, a third sending a header byte a second,
               a third sending a body byte a second; until the server has closed each

For each: the server's RSS and open files before, at the attack's peak and after, how
the server answered the attackers (431, 408, 503, closed without a word), and whether a
normal chat completion and `/health/live`, each on a new connection, were answered
during the attack. With `--baseline TREE` the same attacks run against that tree's
cumulo too (e.g. main's, which has no such protection: expect gigabytes and refusals).

    python bench/attacks.py [--only headers-4m idle ...] [--baseline TREE]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import resource
import selectors
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from gateway import BODY, HERE, HOST, PATH, Procs, free_port, http, start_cumulo, wait_until

MIB = 1024 * 1024
ATTACKS = ("headers-4m", "headers-8m", "idle", "slow")
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nhost: cumulo\r\n"


@dataclass
class Server:
    name: str
    url: str
    token: str
    pid: int

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def address(self) -> tuple[str, int]:
        return HOST, int(self.url.rsplit(":", 1)[1])


@dataclass
class Figures:
    rss: list[float] = field(default_factory=list)  # before, peak, after
    files: list[int] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)
    served: int = 0  # normal requests answered during the attack
    refused: int = 0  # normal requests not answered (503, reset, timeout)
    health_ok: int = 0
    health_failed: int = 0
    note: str = ""


def normal_client(server: Server, figures: Figures) -> None:
    """One chat completion and one /health/live, each on a new connection."""
    try:
        status, _ = http("POST", server.url + PATH, BODY.encode(), server.token, timeout=10)
    except OSError:
        status = 0
    if status == 200:
        figures.served += 1
    else:
        figures.refused += 1
    try:
        status, _ = http("GET", server.url + "/health/live", timeout=10)
    except OSError:
        status = 0
    if status == 200:
        figures.health_ok += 1
    else:
        figures.health_failed += 1


def answer_of(sock: socket.socket) -> str:
    """How the server answered: its status, `closed` (EOF without a word), `reset`, or
    `open` (still connected, nothing said)."""
    sock.setblocking(False)
    try:
        data = sock.recv(64)
    except BlockingIOError:
        return "open"
    except OSError:
        return "reset"
    if not data:
        return "closed"
    return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/1.1 ") else "other"


def measure(server: Server, figures: Figures) -> None:
    figures.rss.append(server.rss_mib())
    figures.files.append(server.files())


def headers_attack(server: Server, count: int, size: int) -> Figures:
    """`count` connections, each sending `size` bytes of one unfinished header."""
    figures = Figures()
    measure(server, figures)
    socks = []
    chunk = b"a" * (256 * 1024)
    peak_rss, peak_files = 0.0, 0
    for i in range(count):
        sock = socket.create_connection(server.address(), timeout=10)
        socks.append(sock)
        with contextlib.suppress(OSError):
            sock.sendall(HEAD + b"x-big: ")
            for _ in range(size // len(chunk)):
                sock.sendall(chunk)
        if i % 20 == 0:
            normal_client(server, figures)
            peak_rss, peak_files = max(peak_rss, server.rss_mib()), max(peak_files, server.files())
    peak_rss, peak_files = max(peak_rss, server.rss_mib()), max(peak_files, server.files())
    normal_client(server, figures)
    figures.answers.update(answer_of(s) for s in socks)
    for sock in socks:
        sock.close()
    time.sleep(3)
    figures.rss += [peak_rss, server.rss_mib()]
    figures.files += [peak_files, server.files()]
    return figures


def raise_own_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def open_many(server: Server, count: int, figures: Figures) -> list[socket.socket]:
    socks: list[socket.socket] = []
    for i in range(count):
        try:
            sock = socket.create_connection(server.address(), timeout=10)
        except OSError as exc:
            figures.note = f"connection {i + 1} failed: {os.strerror(exc.errno or 0)}; "
            break
        socks.append(sock)
        if i % 2000 == 1999:
            normal_client(server, figures)
    return socks


def idle_attack(server: Server, count: int) -> Figures:
    figures = Figures()
    limit = raise_own_limit(count + 256)
    if limit < count + 256:
        count = max(0, limit - 256)
        figures.note = f"this process may open {limit} files: {count} sockets; "
    measure(server, figures)
    socks = open_many(server, count, figures)
    normal_client(server, figures)
    figures.rss.append(server.rss_mib())
    figures.files.append(server.files())
    figures.note += f"{len(socks)} sockets opened; "
    time.sleep(12)  # past the default header_timeout_s
    normal_client(server, figures)
    figures.answers.update(answer_of(s) for s in socks)
    for sock in socks:
        sock.close()
    time.sleep(1)
    measure(server, figures)
    return figures


def slow_attack(server: Server, count: int, limit_s: float = 60) -> Figures:
    """Idle, slow-header and slow-body connections, a byte a second, until the server has
    closed each (or `limit_s`)."""
    figures = Figures()
    raise_own_limit(count + 256)
    measure(server, figures)
    socks = open_many(server, count, figures)
    third = len(socks) // 3  # the first third stays idle
    slow_head, slow_body = socks[third : 2 * third], socks[2 * third :]
    body_head = (
        HEAD
        + b"content-type: application/json\r\nauthorization: Bearer "
        + server.token.encode()
        + b"\r\ncontent-length: 10000\r\n\r\n{"
    )
    for group, first in ((slow_head, HEAD), (slow_body, body_head)):
        for sock in group:
            with contextlib.suppress(OSError):
                sock.sendall(first)
    sel = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ)
    open_ = set(socks)
    answers: dict[socket.socket, str] = {}
    started = time.monotonic()
    peak_rss, peak_files = 0.0, 0
    while open_ and time.monotonic() - started < limit_s:
        for key, _ in sel.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(64)
            except OSError:
                data = b""
                answers.setdefault(sock, "reset")
            if data.startswith(b"HTTP/1.1 "):
                answers.setdefault(sock, data.split(b" ", 2)[1].decode())
            elif not data:
                answers.setdefault(sock, "closed")
                sel.unregister(sock)
                open_.discard(sock)
        for group, byte in ((slow_head, b"x"), (slow_body, b" ")):
            for sock in group:
                if sock in open_:
                    with contextlib.suppress(OSError):
                        sock.send(byte)
        peak_rss, peak_files = max(peak_rss, server.rss_mib()), max(peak_files, server.files())
        normal_client(server, figures)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started) % 1.0))
    figures.note += (
        f"{len(socks)} connections; all closed by the server after "
        f"{time.monotonic() - started:.0f} s; "
        if not open_
        else f"{len(open_)} of {len(socks)} still open after {limit_s:.0f} s; "
    )
    figures.answers.update(answers.get(s, "open") for s in socks)
    for sock in socks:
        if sock in open_:
            sel.unregister(sock)
        sock.close()
    time.sleep(1)
    figures.rss += [peak_rss, server.rss_mib()]
    figures.files += [peak_files, server.files()]
    return figures


def run(server: Server, only: list[str]) -> dict[str, Figures]:
    out: dict[str, Figures] = {}
    for name in only:
        if name == "headers-4m":
            out[name] = headers_attack(server, 200, 4 * MIB)
        elif name == "headers-8m":
            out[name] = headers_attack(server, 300, 8 * MIB)
        elif name == "idle":
            out[name] = idle_attack(server, 20_000)
        else:
            out[name] = slow_attack(server, 2_000)
        print(f"  {server.name} {name}: {describe(out[name])}", flush=True)
    return out


def describe(f: Figures) -> str:
    rss = " -> ".join(f"{x:.0f}" for x in f.rss)
    files = " -> ".join(str(x) for x in f.files)
    answers = ", ".join(f"{k}: {v}" for k, v in f.answers.most_common())
    return (
        f"RSS MiB {rss} (before, peak, after); open files {files}; attackers got "
        f"{answers or '-'}; normal client {f.served} answered / {f.refused} not; "
        f"/health/live {f.health_ok} / {f.health_failed} not. {f.note}"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=ATTACKS, default=list(ATTACKS))
    parser.add_argument("--baseline", type=Path, help="another source tree, attacked the same way")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="cumulo-attacks-"))
    procs = Procs(tmp)
    try:
        up_port = free_port()
        upstream = f"http://{HOST}:{up_port}"
        procs.start("upstream", [sys.executable, str(HERE / "upstream.py"), "--port", str(up_port)])
        wait_until(procs, "upstream", lambda: http("POST", upstream + PATH, b"{}")[0] == 200)
        names = [("cumulo", None)] + ([("base", args.baseline)] if args.baseline else [])
        results: dict[str, dict[str, Figures]] = {}
        for name, tree in names:
            target, source = start_cumulo(procs, name, tmp, upstream, pin=False, tree=tree)
            server = Server(name, target.url.removesuffix(PATH), target.token, target.pid or 0)
            print(f"{name}: {source} (pid {server.pid})", flush=True)
            results[name] = run(server, args.only)
            for entry in [e for e in procs.procs if e[0] == name]:  # done with it: stop it
                procs.procs.remove(entry)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(entry[1].pid, signal.SIGTERM)
                entry[1].wait(60)
        print(
            json.dumps(
                {
                    n: {
                        a: {
                            "rss_mib": f.rss,
                            "open_files": f.files,
                            "answers": dict(f.answers),
                            "served": f.served,
                            "refused": f.refused,
                            "health_ok": f.health_ok,
                            "health_failed": f.health_failed,
                            "note": f.note,
                        }
                        for a, f in r.items()
                    }
                    for n, r in results.items()
                },
                indent=1,
            )
        )
    except KeyboardInterrupt:
        return 130
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
    sys.exit(errno.EPIPE)
