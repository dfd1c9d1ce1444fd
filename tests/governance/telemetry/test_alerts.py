"""The alert sink: queued on the request path, written in batches, read by every replica;
and `GET /admin/alerts` with its tenant scoping."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cumulo.governance.telemetry.alerts import Alert, AlertSink, AlertSinkConfig
from cumulo.store import records
from cumulo.store.db import Store
from support import eventually
from support.admin_feeds import feeds_client, get
from support.pg import postgres_database
from support.stores import run_with_store as run
from support.stores import sqlite_url as sqlite

T0 = 1_700_000_000.0


def alert(
    kind: str = "anomaly.request_spike",
    tenant: str | None = "t1",
    key: str | None = "k1",
    ts: float = T0,
    severity: str = "warning",
) -> Alert:
    return Alert(
        kind,
        key,
        tenant,
        ts,
        severity,  # type: ignore[arg-type]
        f"Key {key}: something unusual",
        {"count": 412, "threshold": 80.5},
    )


def test_emit_only_queues_and_recent_reads_them_back(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        seen: list[str] = []
        sink = AlertSink(store, on_alert=lambda a: seen.append(a.kind))
        sink.emit(alert(ts=T0))
        sink.emit_all(
            [
                alert("budget.soft_threshold", key=None, ts=T0 + 1, severity="critical"),
                alert(tenant="t2", key="k9", ts=T0 + 2),
            ]
        )
        assert sink.queued == 3
        assert await records.recent_alerts(store) == []  # nothing written yet
        assert seen == ["anomaly.request_spike", "budget.soft_threshold", "anomaly.request_spike"]
        assert sink.counts() == {"anomaly.request_spike": 2, "budget.soft_threshold": 1}

        got = await sink.recent()  # writes this process's queue first
        assert sink.queued == 0
        assert [(a.kind, a.tenant_id, a.ts) for a in got] == [
            ("anomaly.request_spike", "t2", T0 + 2),
            ("budget.soft_threshold", "t1", T0 + 1),
            ("anomaly.request_spike", "t1", T0),
        ]
        first = got[-1]
        assert first.id is not None and first.severity == "warning"
        assert first.details == {"count": 412, "threshold": 80.5}
        assert first.message == "Key k1: something unusual"

        assert [a.ts for a in await sink.recent("t1")] == [T0 + 1, T0]
        assert [a.ts for a in await sink.recent(since=T0 + 1)] == [T0 + 2, T0 + 1]
        assert [a.ts for a in await sink.recent(kind="budget.soft_threshold")] == [T0 + 1]
        assert [a.ts for a in await sink.recent(limit=1)] == [T0 + 2]
        assert [a.ts for a in await sink.recent(before_id=got[0].id)] == [T0 + 1, T0]

    run(sqlite(tmp_path), scenario)


def test_every_replica_sees_every_alert_and_close_flushes(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        other = Store(store.url)  # a second replica on the same database
        try:
            a, b = AlertSink(store), AlertSink(other)
            a.emit(alert(key="ka", ts=T0))
            b.emit(alert(key="kb", ts=T0 + 1))
            await b.close()  # b shuts down: its alert is written
            assert {x.key_id for x in await a.recent()} == {"ka", "kb"}
        finally:
            await other.close()

    run(sqlite(tmp_path), scenario)


def test_the_background_writer_flushes_on_its_interval(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        sink = AlertSink(store, AlertSinkConfig(flush_interval_s=0.05))
        sink.start()
        try:
            sink.emit(alert(ts=time.time()))  # (older than the retention would be purged)

            async def stored() -> bool:
                return len(await records.recent_alerts(store)) == 1

            assert await eventually(stored)
            assert sink.written == 1
        finally:
            await sink.close()

    run(sqlite(tmp_path), scenario)


def test_a_failed_write_keeps_the_alerts_for_the_next_attempt(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        sink = AlertSink(store, AlertSinkConfig(max_queue=2))
        for i in range(3):
            sink.emit(alert(ts=T0 + i))
        with pytest.raises(Exception, match="alerts"):  # no such table yet
            await sink.flush()
        assert (sink.queued, sink.dropped) == (2, 1)  # over max_queue: the oldest went
        await store.migrate()
        await sink.flush()
        assert [a.ts for a in await sink.recent()] == [T0 + 2, T0 + 1]

    run(sqlite(tmp_path), scenario, migrate=False)


def test_alerts_past_retention_are_purged(tmp_path: Path) -> None:
    async def scenario(store: Store) -> None:
        now = T0 + 100 * 86400
        sink = AlertSink(store, AlertSinkConfig(retention_s=90 * 86400), clock=lambda: now)
        sink.emit_all([alert(ts=T0), alert(ts=now - 86400)])
        await sink.flush()
        assert await sink.purge() == 1
        assert [a.ts for a in await sink.recent()] == [now - 86400]

    run(sqlite(tmp_path), scenario)


def test_alerts_round_trip_on_postgresql() -> None:
    async def scenario(store: Store) -> None:
        sink = AlertSink(store)
        sink.emit(alert(tenant="t1", ts=T0))
        sink.emit(alert("budget.soft_threshold", tenant="t2", key=None, ts=T0 + 1))
        await sink.close()
        got = await sink.recent("t2")
        assert [(a.kind, a.key_id, a.details["count"]) for a in got] == [
            ("budget.soft_threshold", None, 412)
        ]
        assert len(await sink.recent()) == 2

    with postgres_database() as url:
        run(url, scenario)


# -- GET /admin/alerts ------------------------------------------------------------


def test_admin_alerts_endpoint_scopes_by_tenant(tmp_path: Path) -> None:
    async def seed(store: Store) -> None:
        sink = AlertSink(store)
        sink.emit_all(
            [
                alert(tenant="t1", key="k1", ts=T0),
                alert(tenant="t2", key="k2", ts=T0 + 1),
                alert("budget.soft_threshold", tenant="t1", key=None, ts=T0 + 2),
            ]
        )
        await sink.close()

    run(sqlite(tmp_path), seed)
    with feeds_client(sqlite(tmp_path)) as client:
        status, body = get(client, "/admin/alerts", "admin")
        assert status == 200
        assert [a["tenant_id"] for a in body["data"]] == ["t1", "t2", "t1"]  # type: ignore[index,union-attr]
        assert body["has_more"] is False
        first = body["data"][0]  # type: ignore[index]
        assert set(first) == {
            "id",
            "ts",
            "kind",
            "severity",
            "tenant_id",
            "key_id",
            "message",
            "details",
        }
        assert get(client, "/admin/alerts?tenant_id=t2", "admin")[1]["data"][0]["key_id"] == "k2"  # type: ignore[index]

        status, body = get(client, "/admin/alerts", "ta1")
        assert [a["tenant_id"] for a in body["data"]] == ["t1", "t1"]  # type: ignore[index,union-attr]
        status, body = get(client, "/admin/alerts?limit=1&kind=anomaly.request_spike", "ta1")
        assert ([a["key_id"] for a in body["data"]], body["has_more"]) == (["k1"], False)  # type: ignore[index,union-attr]
        status, body = get(client, "/admin/alerts?limit=1", "ta1")
        assert (len(body["data"]), body["has_more"]) == (1, True)  # type: ignore[arg-type]

        status, body = get(client, "/admin/alerts?tenant_id=t2", "ta1")
        assert status == 404  # another tenant's: as if it did not exist
        assert get(client, "/admin/alerts", "caller1")[0] == 403
        assert get(client, "/admin/alerts", "nobody")[0] == 401
        status, body = get(client, "/admin/alerts?limit=0", "admin")
        assert (status, body["error"]["param"]) == (400, "limit")  # type: ignore[index]
        assert get(client, "/admin/alerts?since=yesterday", "admin")[0] == 400
