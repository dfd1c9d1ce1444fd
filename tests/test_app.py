"""The assembled app: health endpoints a load balancer or orchestrator polls."""

from __future__ import annotations

import httpx

from support import CumuloServer


def test_live_needs_no_key(cumulo: CumuloServer) -> None:
    resp = httpx.get(cumulo.url + "/health/live")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_ready_reports_each_check(cumulo: CumuloServer) -> None:
    resp = httpx.get(cumulo.url + "/health/ready")
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "ok",
        "checks": {"config": True, "store": True, "models": True},
    }
