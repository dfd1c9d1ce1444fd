"""Usage records survive the hard ways a server stops, on SQLite and on PostgreSQL:
SIGKILL under load, and SIGTERM while the database is down. Each request a client saw
answered has its record after the next start, and no record is stored twice, however
often the server is killed again.

`cumulo serve` runs as a real subprocess; a restart reuses its CUMULO_HOME (the SQLite
file and the usage journal) and its database.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from fakes import FakeOpenAIUpstream
from support import UPSTREAM_KEY, CumuloServer, openai_deployment, start_cumulo
from support.pg import postgres_database
from support.proxy import TcpProxy

CLIENTS = 8
HELLO = [{"role": "user", "content": "hello there"}]


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None for the embedded SQLite file, else a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        yield None
    else:
        with postgres_database() as url:
            yield url


def config(upstream: FakeOpenAIUpstream, database_url: str | None, **usage: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "usage": usage,
        "models": [{"name": "chat-echo", "deployments": [openai_deployment(upstream, "echo")]}],
    }
    if database_url is not None:
        out["database_url"] = database_url
    return out


def start(cfg: dict[str, Any], workdir: Path) -> CumuloServer:
    return start_cumulo(cfg, workdir, FAKE_UPSTREAM_KEY=UPSTREAM_KEY)


def query(server: CumuloServer, database_url: str | None, sql: str) -> list[tuple[Any, ...]]:
    """Rows of `sql` (no parameters) from the server's database."""
    if database_url is None:
        return server.sql(sql)
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(fetch())


def usage_of(server: CumuloServer, database_url: str | None, key_id: str) -> tuple[int, int, int]:
    """(records, records with status 200, records stored more than once) of a key."""
    [(total, ok)] = query(
        server,
        database_url,
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN "
        f"status = 200 THEN 1 ELSE 0 END), 0) FROM usage WHERE key_id = '{key_id}'",
    )
    doubled = query(
        server,
        database_url,
        "SELECT ts, latency_ms FROM usage WHERE key_id = "
        f"'{key_id}' GROUP BY ts, latency_ms HAVING COUNT(*) > 1",
    )
    return int(total), int(ok), len(doubled)


def call(http: httpx.Client, stream: bool) -> bool:
    """One chat completion, streamed or not; True once the whole answer arrived with 200."""
    body = {"model": "chat-echo", "messages": HELLO, "stream": stream}
    if not stream:
        resp = http.post("/v1/chat/completions", json=body)
        return resp.status_code == 200 and resp.json()["object"] == "chat.completion"
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        return resp.status_code == 200 and any(line == "data: [DONE]" for line in resp.iter_lines())


class Load:
    """`CLIENTS` threads sending requests until the server goes away; counts full answers."""

    def __init__(self, server: CumuloServer, token: str) -> None:
        self.server = server
        self.token = token
        self.answered = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,)) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for t in self._threads:
            t.join(30)

    def _client(self, i: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.server.url, headers=headers, timeout=10) as http:
            n = 0
            while True:
                with self._lock:
                    self.sent += 1
                try:
                    done = call(http, stream=(n + i) % 3 == 0)
                except httpx.HTTPError:
                    return  # the server is gone
                n += 1
                with self._lock:
                    self.answered += done


def test_sigkill_under_load_loses_no_usage_record(
    upstream: FakeOpenAIUpstream, database: str | None, tmp_path: Path
) -> None:
    cfg = config(upstream, database, flush_interval_s=0.5)
    server = start(cfg, tmp_path)
    try:
        key = server.create_key("load")
        with Load(server, key.token) as load:
            time.sleep(2.5)  # several flushes, and records queued since the last one
            server.process.kill()
            server.process.wait(10)
        assert load.answered > 50
    finally:
        server.stop()

    again = start(cfg, tmp_path)  # stores what the killed server's journal holds
    try:
        total, ok, doubled = usage_of(again, database, key.id)
        assert ok >= load.answered  # every answer the clients saw is accounted for
        assert total <= load.answered + CLIENTS  # plus at most the requests in flight
        assert doubled == 0
        again.process.kill()  # killed again, right after it started
        again.process.wait(10)
    finally:
        again.stop()

    third = start(cfg, tmp_path)
    try:
        assert usage_of(third, database, key.id) == (total, ok, 0)  # nothing stored twice
    finally:
        third.stop()
    assert "Traceback" not in third.output()


def test_sigterm_with_the_database_down_keeps_every_usage_record(
    upstream: FakeOpenAIUpstream, database: str | None, tmp_path: Path
) -> None:
    requests = 200
    with contextlib.ExitStack() as stack:
        if database is None:
            url = None
            outage = _sqlite_outage
        else:  # cumulo reaches PostgreSQL through a proxy the test takes down
            proxy = stack.enter_context(TcpProxy(make_url(database).port or 5432))
            url = make_url(database).set(port=proxy.port).render_as_string(hide_password=False)
            outage = _proxy_outage(proxy)
        # Only the shutdown writes: every record is still queued when the database goes.
        cfg = config(upstream, url, flush_interval_s=3600, batch_size=100_000)
        server = start(cfg, tmp_path)
        try:
            key = server.create_key("load")
            headers = {"Authorization": f"Bearer {key.token}"}
            with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
                answered = sum(call(http, stream=i % 4 == 0) for i in range(requests))
            assert answered == requests
            with outage(server):
                server.stop(timeout=90)
        finally:
            server.stop()
        log = server.output()
        assert (
            f"{requests} usage records (and 0 journal files written from disk only) could "
            "not be written at shutdown" in log
        )
        assert "kept in the usage journal" in log

        again = start(cfg, tmp_path)  # the database is back
        try:
            assert usage_of(again, url, key.id) == (requests, requests, 0)
        finally:
            again.stop()
        third = start(cfg, tmp_path)
        try:
            assert usage_of(third, url, key.id) == (requests, requests, 0)
        finally:
            third.stop()


@contextlib.contextmanager
def _sqlite_outage(server: CumuloServer) -> Iterator[None]:
    """Another process holds the SQLite file's write lock: every write times out."""
    db = sqlite3.connect(server.db_path, timeout=10, isolation_level=None)
    try:
        db.execute("BEGIN EXCLUSIVE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


def _proxy_outage(proxy: TcpProxy) -> Any:
    @contextlib.contextmanager
    def outage(server: CumuloServer) -> Iterator[None]:
        proxy.stop()
        try:
            yield
        finally:
            proxy.start()

    return outage
