"""The HTTP server protects itself from callers without a key (`cumulo.server`).

Each attack of the tester, scaled down, against a real `cumulo serve` with small
limits: unfinished huge header blocks, idle sockets beyond the connection cap, slow
headers and slow bodies, and every connection busy. Throughout, the server's memory
stays flat (RSS within +50 MiB), its open files within the cap, a normal client and
`/health/live` are answered, and the attackers get 431 or 408 and are disconnected.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from fakes import FakeOpenAIUpstream
from support import UPSTREAM_KEY, ApiKey, CumuloServer, openai_deployment, start_cumulo, wait_until

MAX_CONNECTIONS = 40
HEALTH_CONNECTIONS = 4
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(
    upstream: FakeOpenAIUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CumuloServer]:
    config = {
        "server": {
            "header_timeout_s": 1.0,
            "body_timeout_s": 1.5,
            "keep_alive_timeout_s": 1.0,
            "max_connections": MAX_CONNECTIONS,
            "health_connections": HEALTH_CONNECTIONS,
        },
        "models": [
            {"name": "chat-echo", "deployments": [openai_deployment(upstream, "echo")]},
            {"name": "chat-slow", "deployments": [openai_deployment(upstream, "slow:3")]},
        ],
    }
    server = start_cumulo(
        config, tmp_path_factory.mktemp("protect"), FAKE_UPSTREAM_KEY=UPSTREAM_KEY
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def key(server: CumuloServer) -> ApiKey:
    return server.create_key("protect")


def rss_mib(server: CumuloServer) -> float:
    with open(f"/proc/{server.process.pid}/status") as status:
        lines = status.read().splitlines()
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_files(server: CumuloServer) -> int:
    return len(os.listdir(f"/proc/{server.process.pid}/fd"))


def address(server: CumuloServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def connect(server: CumuloServer) -> socket.socket:
    sock = socket.create_connection(address(server), timeout=10)
    return sock


def served(server: CumuloServer, key: ApiKey) -> None:
    """A normal client and a health probe are answered, each on a new connection."""
    with httpx.Client(base_url=server.url, timeout=10) as http:
        resp = http.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key.token}"},
            json={"model": "chat-echo", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"] == "echo: hi"
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/health/live").status_code == 200


def answer(sock: socket.socket) -> bytes:
    """What the server sent before closing (b"" if it closed without a word)."""
    sock.settimeout(10)
    data = b""
    with contextlib.suppress(ConnectionError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_unfinished_huge_header_blocks_get_431(server: CumuloServer, key: ApiKey) -> None:
    served(server, key)
    before = rss_mib(server)
    socks = []
    for i in range(30):  # 30 x 4 MiB of one header that never ends
        sock = connect(server)
        socks.append(sock)
        with contextlib.suppress(OSError):
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-big: ")
            for _ in range(64):
                sock.sendall(b"a" * (64 * 1024))
        if i % 10 == 0:
            served(server, key)
    peak = rss_mib(server)
    answers = [answer(s) for s in socks]
    for s in socks:
        s.close()
    assert peak - before < 50, (before, peak)
    assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), {a[:40] for a in answers}
    served(server, key)


def test_a_whole_header_block_over_the_limit_gets_431(server: CumuloServer) -> None:
    sock = connect(server)
    sock.sendall(
        b"GET /health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (100 * 1024) + b"\r\n\r\n"
    )
    reply = answer(sock)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:80]
    assert b"connection: close" in reply


def test_idle_sockets_past_the_cap_neither_exhaust_files_nor_lock_clients_out(
    server: CumuloServer, key: ApiKey
) -> None:
    served(server, key)
    files, before = open_files(server), rss_mib(server)
    socks = []
    for i in range(400):  # ten times the cap, sending nothing
        socks.append(connect(server))
        if i % 100 == 99:
            served(server, key)
            assert open_files(server) <= files + MAX_CONNECTIONS + HEALTH_CONNECTIONS + 8
    assert rss_mib(server) - before < 50
    # Each was closed by the server: pushed out by newer ones, or at header_timeout_s.
    for sock in socks:
        assert answer(sock) == b""
        sock.close()
    served(server, key)


def test_slow_headers_and_slow_bodies_get_408(server: CumuloServer, key: ApiKey) -> None:
    served(server, key)
    before = rss_mib(server)
    # Within the cap: each is closed at its own deadline, not to make room for another.
    slow_header = [connect(server) for _ in range(MAX_CONNECTIONS // 2 - 2)]
    slow_body = [connect(server) for _ in range(MAX_CONNECTIONS // 2 - 2)]
    for sock in slow_header:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
    for sock in slow_body:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: "
            b"application/json\r\nauthorization: Bearer "
            + key.token.encode()
            + b"\r\ncontent-length: 1000\r\n\r\n{"
        )
    live = slow_header + slow_body
    # Keep trickling a byte each until the server has closed every one of them.
    deadline = time.monotonic() + 30
    while live and time.monotonic() < deadline:
        still = []
        for sock, byte in ((s, b"x" if s in slow_header else b" ") for s in live):
            try:
                sock.sendall(byte)
                still.append(sock)
            except OSError:
                pass
        live = still
        served(server, key)
        time.sleep(0.2)
    assert not live, f"{len(live)} slow connections still open"
    assert rss_mib(server) - before < 50
    answers = [answer(s) for s in slow_header + slow_body]
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
    for sock in slow_header + slow_body:
        sock.close()
    served(server, key)


def test_kept_alive_connections_are_closed_when_idle(server: CumuloServer, key: ApiKey) -> None:
    sock = connect(server)
    sock.sendall(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
    reply = answer(sock)  # the answer, then the server closes the idle connection
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b'{"status":"ok"}')


def test_a_connection_answered_before_its_body_arrived_is_closed_when_idle(
    server: CumuloServer,
) -> None:
    sock = connect(server)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer nope"
        b"\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
    )
    sock.settimeout(10)
    first = sock.recv(65536)  # refused before the body is read
    while b"\r\n\r\n" not in first or not first.endswith(b"}"):
        first += sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 401 "), first[:80]
    sock.sendall(b"{}")
    assert answer(sock) == b""  # then closed once idle for keep_alive_timeout_s
    sock.close()


def test_health_is_answered_while_every_connection_is_busy(
    server: CumuloServer, key: ApiKey
) -> None:
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json"
        b"\r\nauthorization: Bearer " + key.token.encode() + b"\r\ncontent-length: %d\r\n\r\n"
    )
    body = b'{"model":"chat-slow","messages":[{"role":"user","content":"wait"}]}'
    busy = []
    for _ in range(MAX_CONNECTIONS):  # each waits 3 s for the upstream
        sock = connect(server)
        sock.sendall(request % len(body) + body)
        busy.append(sock)
    time.sleep(0.3)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        refused = http.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {key.token}"},
            json={"model": "chat-echo", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/health/live").status_code == 200
        assert http.get("/health/ready").status_code == 200
    answers = [answer(s) for s in busy]
    for sock in busy:
        sock.close()
    assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers), {a[:40] for a in answers}
    wait_until(lambda: open_files(server) < 40, timeout=10)
    served(server, key)
