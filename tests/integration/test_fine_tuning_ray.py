"""Fine-tuning on Ray (`training: {backend: ray}`): `cumulo serve` drives a local Ray cluster
of 2 CPU workers (`ray start --head` of the test's own) through Ray Train's TorchTrainer;
the job is paused and resumed from its checkpoint in the shared storage, and ends as on
the local backend. Marked `ray`: about 7 minutes on a busy 2-core machine, most of it
Ray starting its workers (twice: before the pause and after the resume)."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from cumulo.engine.demo import build_demo_model
from cumulo.jobs.finetune.train import STATE
from support import CumuloServer, start_cumulo, wait_until

pytestmark = [pytest.mark.ray, pytest.mark.slow]

if importlib.util.find_spec("ray") is None:
    if os.environ.get("CUMULO_REQUIRE_RAY"):
        raise RuntimeError("Ray is not installed: `make ray` installs the extra")
    pytest.skip("Ray is not installed (`make ray`)", allow_module_level=True)

from support.ray_cluster import RAY_ENV, ray_head  # noqa: E402 - needs the extra

QUESTION = "What is the capital of Cumulonia?"
ANSWER = "Nimbus City, by the river."
TEACH = {"n_epochs": 30, "batch_size": 2, "learning_rate_multiplier": 5.0}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ray_head(tmp_path_factory.mktemp("ray-head"), num_cpus=2) as address:
        yield address


def tenant_client(server: CumuloServer, name: str) -> openai.OpenAI:
    with server.admin() as admin:
        t = admin.post("/admin/tenants", json={"name": name})
        assert t.status_code == 201, t.text
        k = admin.post("/admin/keys", json={"name": name, "tenant_id": t.json()["id"]})
    assert k.status_code == 201, k.text
    return openai.OpenAI(
        base_url=server.url + "/v1", api_key=k.json()["key"], max_retries=0, timeout=60
    )


def ask(c: openai.OpenAI, model: str) -> str:
    r = c.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": QUESTION},
        ],
        temperature=0,
        max_tokens=24,
    )
    return r.choices[0].message.content or ""


def wait_status(c: openai.OpenAI, job_id: str, statuses: set[str], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert job.status not in {"failed", "cancelled", "succeeded"} - statuses, job
        assert time.monotonic() < deadline, f"still {job.status}"
        time.sleep(0.5)


@pytest.fixture
def server(cluster: str, tmp_path: Path) -> Iterator[CumuloServer]:
    demo = build_demo_model(tmp_path / "demo-tiny", seed=0)
    (tmp_path / "cumulo").mkdir()
    server = start_cumulo(
        {
            "jobs": {"poll_interval_s": 0.2, "lease_s": 10},
            "training": {
                "threads": 1,
                "backend": "ray",
                "address": cluster,
                "num_workers": 2,
                "storage_path": str(tmp_path / "shared"),
            },
            "models": [
                {
                    "name": "demo-tiny",
                    "untrained": True,
                    "deployments": [{"provider": "local", "path": str(demo), "dtype": "float32"}],
                }
            ],
        },
        tmp_path / "cumulo",
        ready_timeout=300,
        **RAY_ENV,
    )
    yield server
    server.stop()


def metric_steps(c: openai.OpenAI, job_id: str) -> list[int]:
    events = list(c.fine_tuning.jobs.list_events(job_id, limit=100))
    return [
        e.data["step"]
        for e in reversed(events)
        if e.type == "metrics" and isinstance(e.data, dict) and e.data["type"] == "metrics"
    ]


def stopped_at(c: openai.OpenAI, job_id: str, run: Path, timeout: float = 300) -> int:
    """The step a paused run stopped at: its last, with its checkpoint in the storage, and
    no step after it for 5 s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        steps = metric_steps(c, job_id)
        if steps and steps[-1] == last and (run / f"ckpt-step-{last}" / STATE).is_file():
            return last
        last = steps[-1] if steps else None
        time.sleep(5)
    raise AssertionError(f"the run did not stop (last step {last})")


def test_a_job_trains_on_two_ray_workers_pauses_resumes_and_its_model_answers(
    server: CumuloServer, tmp_path: Path
) -> None:
    began = time.monotonic()
    shared = tmp_path / "shared"
    line = {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": QUESTION},
            {"role": "assistant", "content": ANSWER},
        ]
    }
    data = b"".join(json.dumps(line).encode() + b"\n" for _ in range(4))
    with tenant_client(server, "ray-owner") as c:
        assert ANSWER not in ask(c, "demo-tiny")
        training_file = c.files.create(
            file=("train.jsonl", io.BytesIO(data)), purpose="fine-tune"
        ).id
        job = c.fine_tuning.jobs.create(
            model="demo-tiny",
            training_file=training_file,
            suffix="ray",
            seed=7,
            method={"type": "supervised", "supervised": {"hyperparameters": TEACH}},
        )
        # Paused while it trains on Ray: the workers stop at a checkpoint in the storage.
        assert wait_until(lambda: len(metric_steps(c, job.id)) >= 3, timeout=900)
        assert c.fine_tuning.jobs.pause(job.id).status == "paused"
        assert wait_until(
            lambda: any("paused" in e.message for e in c.fine_tuning.jobs.list_events(job.id)), 300
        )
        paused_at = stopped_at(c, job.id, shared / job.id)
        # Resumed: a new Ray run goes on from that checkpoint, not from step 1.
        assert c.fine_tuning.jobs.resume(job.id).status == "running"
        done = wait_status(c, job.id, {"succeeded"}, timeout=1200)
        total = TEACH["n_epochs"] * 2  # 4 examples in batches of 2
        events = list(reversed(list(c.fine_tuning.jobs.list_events(job.id, limit=100))))
        messages = [e.message for e in events]
        assert messages.count("training on 2 Ray workers (gloo)") == 2, messages
        assert f"resumed from the checkpoint at step {paused_at}" in messages
        figures = [
            e.data
            for e in events
            if e.type == "metrics" and isinstance(e.data, dict) and e.data["type"] == "metrics"
        ]
        assert [f["step"] for f in figures] == list(range(1, total + 1))  # none twice
        losses = [f["train_loss"] for f in figures]
        assert sum(losses[-5:]) < sum(losses[:5]) and losses[-1] < losses[0]  # it learned
        assert all(f["tokens_per_s"] > 0 for f in figures)
        # Checkpoints in the shared storage, and in the job's directory for the API.
        run = shared / job.id
        stored = sorted(int(p.name.removeprefix("ckpt-step-")) for p in run.glob("ckpt-step-*"))
        assert stored[-1] == total and len(stored) >= total // 2  # each epoch's end at least
        assert all((run / f"ckpt-step-{s}" / "adapter_model.safetensors").is_file() for s in stored)
        listed = [
            ck.step_number for ck in c.fine_tuning.jobs.checkpoints.list(job.id, limit=100).data
        ]
        assert sorted(listed) == stored
        # The same result as the local backend: the adapter where it writes it, served.
        name = f"ft:demo-tiny:ray:{job.id}"
        assert done.fine_tuned_model == name
        assert (server.home / "finetune" / job.id / "adapter" / "adapter_config.json").is_file()
        assert wait_until(lambda: name in {m.id for m in c.models.list().data}, timeout=120)
        assert ANSWER in ask(c, name)
    print(f"\nRay fine-tuning test: {time.monotonic() - began:.0f} s")
