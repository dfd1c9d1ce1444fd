"""vLLM fleets through `cumulo serve`, with the fake vLLM (`fakes/vllm_server`): cumulo starts
two replicas, routes the openai SDK's calls between them and a second deployment of the
same model, reports the replicas' vLLM metrics at /admin/engine, serves a LoRA adapter as a
model of its own, covers a killed replica with the other deployments while it restarts, and
stops the replicas with itself."""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from fakes import FakeOpenAIUpstream
from support import CumuloServer, openai_deployment, wait_until

FAKE_VLLM = Path(__file__).resolve().parents[1] / "fakes" / "vllm_server"


@pytest.fixture
def fleet(
    tmp_path: Path, upstream: FakeOpenAIUpstream, cumulo_factory: Callable[..., CumuloServer]
) -> CumuloServer:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    vllm: dict[str, Any] = {
        "provider": "vllm",
        "model": "tiny",
        "path": str(model),
        "replicas": 2,
        "args": ["--enable-lora"],
        "adapters": {"ft:tiny:support": str(adapter)},
        "env": {"PYTHONPATH": str(FAKE_VLLM)},
        "restart_backoff_s": 0.5,
    }
    config = {
        "models": [
            {
                "name": "tiny",
                "deployments": [vllm, {**openai_deployment(upstream, "echo"), "name": "backup"}],
                "routing": {"backoff_s": 0.01},
            }
        ]
    }
    return cumulo_factory(config, workdir=tmp_path)


def test_cumulo_serves_through_its_vllm_replicas_and_covers_one_that_dies(
    fleet: CumuloServer,
) -> None:
    client = OpenAI(base_url=fleet.url + "/v1", api_key=fleet.admin_key, max_retries=0)

    def ask(model: str = "tiny") -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        text = raw.parse().choices[0].message.content or ""
        return raw.headers["x-cumulo-deployment"], text

    # Least-busy by default: idle deployments tie, so all three serve some of 30 calls.
    served = Counter(ask()[0] for _ in range(30))
    assert set(served) == {"vllm:tiny/0", "vllm:tiny/1", "backup"}, served

    # The adapter is a model of the catalog, served by the replicas under its own name.
    models = {m.id for m in client.models.list()}
    assert {"tiny", "ft:tiny:support"} <= models
    label, text = ask("ft:tiny:support")
    assert label.startswith("vllm:tiny/") and text.endswith(" ft:tiny:support")

    with fleet.admin() as admin:
        rows = admin.get("/admin/engine").json()["data"]
    vllm_rows = sorted((r for r in rows if r.get("engine") == "vllm"), key=lambda r: r["replica"])
    # One row per replica, though it serves two models.
    assert [(r["model"], r["deployment"]) for r in vllm_rows] == [
        ("tiny", "vllm:tiny/0"),
        ("tiny", "vllm:tiny/1"),
    ]
    first = next(r for r in vllm_rows if r["deployment"] == "vllm:tiny/0")
    assert first["state"] == "ready" and first["loaded"] is True
    assert wait_until(lambda: "kv_cache_usage" in _row(fleet, "vllm:tiny/0"), timeout=10)
    row = _row(fleet, "vllm:tiny/0")
    assert row["running"] == 0.0 and row["waiting"] == 0.0 and row["kv_cache_usage"] == 0.25

    # Kill replica 0: every call still succeeds (replica 1 and backup cover it) ...
    pid = first["pid"]
    os.kill(pid, signal.SIGKILL)
    during = Counter(ask()[0] for _ in range(20))
    assert sum(during.values()) == 20
    # ... and it comes back on a new process, serving again.
    assert wait_until(
        lambda: (
            _row(fleet, "vllm:tiny/0").get("state") == "ready"
            and _row(fleet, "vllm:tiny/0")["pid"] != pid
        ),
        timeout=20,
    )
    assert _row(fleet, "vllm:tiny/0")["restarts"] == 1
    after = Counter(ask()[0] for _ in range(30))
    assert after["vllm:tiny/0"] > 0, after

    # Replica logs are under CUMULO_HOME/logs, one per replica.
    logs = sorted(p.name for p in (fleet.home / "logs").glob("vllm-*.log"))
    assert logs == ["vllm-vllm_tiny_0.log", "vllm-vllm_tiny_1.log"]

    # Stopping cumulo stops its replicas.
    pids = [_row(fleet, f"vllm:tiny/{i}")["pid"] for i in (0, 1)]
    assert fleet.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the SIGTERM it handled
    assert all(not _alive(p) for p in pids)


def _row(server: CumuloServer, deployment: str) -> dict[str, Any]:
    with server.admin() as admin:
        rows = admin.get("/admin/engine").json()["data"]
    return next(r for r in rows if r["deployment"] == deployment and r["model"] == "tiny")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
