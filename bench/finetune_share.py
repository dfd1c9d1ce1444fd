"""Time to first token of interactive requests while a fine-tuning job trains on the same
machine, against the same server idle, in the same run.

For each setting it starts `cumulo serve` (temporary CUMULO_HOME, the demo model served
by the local engine in the same process that trains), then:

1. idle: `--requests` streamed chat completions one after another, their time to first
   token (TTFT);
2. a fine-tuning job on the demo model (long enough to outlast the measurement) is
   created, and once its first step is reported the same requests are sent again while it
   trains (checked to be still running at the end); the job is then cancelled.

Settings: `share` (`training: {threads: --threads, nice: --nice}`, the CPU share a job
gets) and, with `--unshared`, `training` left at torch's defaults with niceness 0, for
comparison. Printed: p50 and p90 TTFT idle and while training, and the ratio of the p50s
(target: within 2x).

    python bench/finetune_share.py [--requests 30] [--threads 1] [--nice 10] [--unshared]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway import HOST, Procs, free_port, http, wait_until

KEY = "admin-bench-finetune-share-0000"
MODEL = "demo-tiny"


def start(procs: Procs, name: str, tmp: Path, model_dir: Path, training: dict[str, Any]) -> str:
    config = tmp / f"{name}.json"
    config.write_text(
        json.dumps(
            {
                "jobs": {"poll_interval_s": 0.2},
                "training": training,
                "models": [
                    {
                        "name": MODEL,
                        "untrained": True,
                        "deployments": [
                            {"provider": "local", "path": str(model_dir), "dtype": "float32"}
                        ],
                    }
                ],
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env.update(CUMULO_HOME=str(tmp / f"home-{name}"), CUMULO_ADMIN_KEY=KEY)
    port = free_port()
    argv = [
        sys.executable,
        "-c",
        "from cumulo.cli import main; main()",
        "serve",
        "--config",
        str(config),
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    procs.start(name, argv, env=env)
    base = f"http://{HOST}:{port}"
    wait_until(procs, name, lambda: http("GET", base + "/health/ready")[0] == 200, timeout=900)
    return base


def ttft(client: Any, base: str, i: int) -> float:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 8,
        "temperature": 0,
        "messages": [{"role": "user", "content": f"Tell me about the weather, day {i}."}],
    }
    began = time.perf_counter()
    with client.stream("POST", base + "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code}: {resp.read()[:300]!r}")
        first = None
        for line in resp.iter_lines():
            if first is None and line.startswith("data: {") and '"content"' in line:
                first = time.perf_counter() - began
    if first is None:
        raise RuntimeError("no token streamed")
    return first


def training_file() -> bytes:
    lines = []
    for i in range(64):
        words = " ".join(["cloud", "rain", "sun", "wind"][j % 4] for j in range(20 + i % 30))
        lines.append(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": f"Question {i}: {words}?"},
                        {"role": "assistant", "content": f"Answer {i}: {words}."},
                    ]
                }
            )
        )
    return ("\n".join(lines) + "\n").encode()


def measure(base: str, n: int) -> tuple[list[float], list[float], dict[str, Any]]:
    import httpx

    with httpx.Client(timeout=600, headers={"Authorization": f"Bearer {KEY}"}) as c:
        ttft(c, base, -1)  # warm-up
        idle = [ttft(c, base, i) for i in range(n)]
        f = c.post(
            base + "/v1/files",
            files={"file": ("t.jsonl", training_file())},
            data={"purpose": "fine-tune"},
        ).json()
        job = c.post(
            base + "/v1/fine_tuning/jobs",
            json={
                "model": MODEL,
                "training_file": f["id"],
                "hyperparameters": {"n_epochs": 50, "batch_size": 4},
            },
        ).json()
        if "id" not in job:
            raise RuntimeError(f"job not created: {job}")
        url = f"{base}/v1/fine_tuning/jobs/{job['id']}"
        deadline = time.monotonic() + 600
        while not any(
            e.get("type") == "metrics"
            for e in c.get(url + "/events", params={"limit": 5}).json()["data"]
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the job did not start training")
            time.sleep(0.5)
        busy = [ttft(c, base, i) for i in range(n)]
        status = c.get(url).json()["status"]
        steps = [
            e["data"]
            for e in c.get(url + "/events", params={"limit": 100}).json()["data"]
            if e.get("type") == "metrics" and e["data"].get("type") == "metrics"
        ]
        c.post(url + "/cancel")
    if status != "running":
        raise RuntimeError(f"the job was {status} before the measurement ended")
    return (
        idle,
        busy,
        {
            "steps": len(steps),
            "tokens_per_s": statistics.median(s["tokens_per_s"] for s in steps) if steps else 0.0,
        },
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="A local chat model [default: the demo model, built].")
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nice", type=int, default=10)
    p.add_argument("--unshared", action="store_true", help="Also measure without a share.")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cumulo-ft-share-"))
    model_dir = Path(args.model_dir) if args.model_dir else None
    if model_dir is None:
        from cumulo.engine.demo import build_demo_model

        model_dir = build_demo_model(tmp / "demo-tiny", seed=0)
    settings = [("share", {"threads": args.threads, "nice": args.nice})]
    if args.unshared:
        settings.append(("unshared", {"nice": 0}))
    print(
        f"{args.requests} streamed requests (8 tokens) idle, then while a job trains; "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'setting':10} {'training':28} {'idle p50/p90 ms':>16} {'training p50/p90 ms':>20}"
        f" {'ratio p50':>9} {'train tok/s':>11}"
    )
    for name, training in settings:
        procs = Procs(tmp)
        try:
            base = start(procs, name, tmp, model_dir, training)
            idle, busy, job = measure(base, args.requests)
        finally:
            procs.stop_all()

        def q(xs: list[float], f: float) -> float:
            return sorted(xs)[min(len(xs) - 1, int(f * len(xs)))] * 1000

        ratio = statistics.median(busy) / statistics.median(idle)
        print(
            f"{name:10} {json.dumps(training):28} {q(idle, 0.5):7.1f}/{q(idle, 0.9):<8.1f}"
            f" {q(busy, 0.5):10.1f}/{q(busy, 0.9):<9.1f} {ratio:9.2f} "
            f"{job['tokens_per_s']:11.0f}"
        )
    print("target: ratio p50 <= 2.0 with the share")
    return 0


if __name__ == "__main__":
    sys.exit(main())
