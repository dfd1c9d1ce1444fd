"""The invocation log: queued on the request path, written in batches, purged past each
tenant's retention; and `GET /admin/invocations` with its tenant scoping."""

from __future__ import annotations

import time
from pathlib import Path

from cumulo.governance.audit.invocations import InvocationLog, InvocationLogConfig
from cumulo.store import records
from cumulo.store.db import Store
from support import eventually
from support.admin_feeds import feeds_client, get
from support.pg import postgres_database
from support.stores import run_with_store as run
from support.stores import sqlite_url as sqlite

DAY = 86400.0
NOW = 1_700_000_000.0
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Où est la gare ? 🚉"},
]


def test_record_only_queues_and_entries_read_it_back(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        log = InvocationLog(store, clock=lambda: NOW)
        log.record(
            "t1",
            "k1",
            "gpt-4o-mini",
            MESSAGES,
            "Rue de la Gare.",
            endpoint="chat.completions",
            prompt_tokens=12,
            completion_tokens=4,
        )
        log.record(
            "t1",
            "k2",
            "llama",
            "a bare prompt",
            None,
            endpoint="completions",
            status=502,
            ts=NOW + 1,
        )
        log.record("t2", "k3", "gpt-4o-mini", MESSAGES, "Ici.", ts=NOW + 2)
        assert log.queued == 3
        assert await records.invocation_entries(store) == []  # nothing written yet

        got = await log.entries("t1")  # writes this process's queue first
        assert log.queued == 0
        assert [(e.key_id, e.status, e.response) for e in got] == [
            ("k2", 502, None),
            ("k1", 200, "Rue de la Gare."),
        ]
        first = got[1]
        assert first.request == MESSAGES  # the structure, unicode intact
        assert (first.ts, first.model, first.endpoint) == (NOW, "gpt-4o-mini", "chat.completions")
        assert (first.prompt_tokens, first.completion_tokens) == (12, 4)
        assert got[0].request == "a bare prompt"

        assert [e.tenant_id for e in await log.entries(None)] == ["t2", "t1", "t1"]
        assert [e.key_id for e in await log.entries("t1", key_id="k1")] == ["k1"]
        assert [e.key_id for e in await log.entries(None, model="llama")] == ["k2"]
        assert [e.key_id for e in await log.entries(None, since=NOW + 1, until=NOW + 2)] == ["k2"]
        assert [e.key_id for e in await log.entries(None, limit=1)] == ["k3"]
        assert [e.key_id for e in await log.entries(None, before_id=got[0].id)] == ["k1"]

    run(sqlite(tmp_path), scenario)


def test_each_tenant_keeps_entries_for_its_own_retention(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        now = [NOW]
        retention = {"short": 1.0, "long": 365.0}
        log = InvocationLog(
            store,
            InvocationLogConfig(default_retention_days=30),
            retention_days=retention.get,
            clock=lambda: now[0],
        )
        for tenant in ("short", "long", "default"):
            for age_days in (0.5, 2, 40, 400):
                log.record(tenant, "k", "m", MESSAGES, "ok", ts=NOW - age_days * DAY)
        await log.flush()
        assert await log.purge() == 3 + 1 + 2
        left = await log.entries(None)
        ages = sorted((e.tenant_id, round((NOW - e.ts) / DAY, 1)) for e in left)
        assert ages == [
            ("default", 0.5),
            ("default", 2.0),
            ("long", 0.5),
            ("long", 2.0),
            ("long", 40.0),
            ("short", 0.5),
        ]
        now[0] += DAY  # a day later, the next purge takes what has aged past it
        assert await log.purge() == 1  # short's 0.5-day entry

    run(sqlite(tmp_path), scenario)


def test_the_background_task_writes_and_purges(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        old = InvocationLog(store)
        old.record("t1", "k", "m", MESSAGES, "stale", ts=time.time() - 31 * DAY)
        await old.close()

        log = InvocationLog(store, InvocationLogConfig(flush_interval_s=0.05))
        log.start()  # purges once at start, then every purge_interval_s
        try:
            log.record("t1", "k", "m", MESSAGES, "fresh")

            async def only_fresh() -> bool:
                rows = await records.invocation_entries(store)
                return [r["response_text"] for r in rows] == ["fresh"]

            assert await eventually(only_fresh)
            assert (log.written, log.purged) == (1, 1)
        finally:
            await log.close()

    run(sqlite(tmp_path), scenario)


def test_the_queue_is_bounded_by_size_and_nul_characters_are_stored(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        log = InvocationLog(store, InvocationLogConfig(max_queue_bytes=10_000))
        for i in range(5):
            log.record("t1", "k", "m", [{"role": "user", "content": "x" * 3000}], f"r{i}")
        assert (log.queued, log.dropped) == (3, 2)  # the oldest went first
        log.record("t1", "k", "m", "nul\x00inside", "a\x00b")
        assert [e.response for e in await log.entries("t1")] == ["a\ufffdb", "r4", "r3", "r2"]
        assert (await log.entries("t1"))[0].request == "nul\x00inside"

    run(sqlite(tmp_path), scenario)


def test_invocations_round_trip_on_postgresql() -> None:
    async def scenario(store: Store) -> None:
        log = InvocationLog(store, clock=lambda: NOW)
        log.record("t1", "k1", "m", MESSAGES, "Rue de la Gare.\x00")
        log.record("t1", "k1", "m", MESSAGES, "too old", ts=NOW - 31 * DAY)
        await log.close()
        assert await log.purge() == 1
        got = await log.entries("t1")
        assert [(e.request, e.response) for e in got] == [(MESSAGES, "Rue de la Gare.\ufffd")]

    with postgres_database() as url:
        run(url, scenario)


def test_admin_invocations_endpoint_scopes_by_tenant(tmp_path: Path) -> None:
    async def seed(store: Store) -> None:
        log = InvocationLog(store)
        log.record("t1", "k1", "m", MESSAGES, "one", ts=time.time())
        log.record("t2", "k2", "m", MESSAGES, "two", ts=time.time())
        await log.close()

    run(sqlite(tmp_path), seed)
    with feeds_client(sqlite(tmp_path)) as client:
        status, body = get(client, "/admin/invocations", "admin")
        assert status == 200
        assert [e["response"] for e in body["data"]] == ["two", "one"]  # type: ignore[union-attr,index]
        first = body["data"][1]  # type: ignore[index]
        assert first["request"] == MESSAGES and first["tenant_id"] == "t1"
        status, body = get(client, "/admin/invocations", "ta1")
        assert [e["response"] for e in body["data"]] == ["one"]  # type: ignore[union-attr,index]
        assert get(client, "/admin/invocations?tenant_id=t2", "ta1")[0] == 404
        assert get(client, "/admin/invocations", "caller1")[0] == 403
        assert get(client, "/admin/invocations?until=soon", "admin")[0] == 400
