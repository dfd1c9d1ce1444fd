"""Fine-tuning on Ray (`training: {backend: ray}`) against the local backend, same job.

    . .venv/bin/activate          # with the ray extra: `make ray`
    python bench/finetune_ray.py                     # the demo model, a few minutes
    python bench/finetune_ray.py --examples 32 --epochs 2 --model-dir ~/.cache/cumulo-bench/qwen05b

The same LoRA job (examples, epochs, batch size, seed) runs twice in this run:

(1) local: `train.train` in this process, torch on 1 thread, then on all cores;
(2) Ray: `ray_backend.train_on_ray` with 2 Ray Train workers of 1 CPU each, on a one-node
    Ray cluster started for the run (`ray start --head` on loopback, its own temp dir and
    ports, stopped at the end by its process group).

For each: training tokens/s as the trainer reports it per step (tokens of the step's
examples over the step's time, the median over steps), and end to end (all tokens over
the call's wall time: model loads, worker start, checkpoints, the merged model). Then
Ray/local of each. On a 2-core machine both runs use the same 2 cores, so this shows Ray's
overhead (process group, one gradient all-reduce a step, checkpoint hand-over, worker
start), not a speed-up: that needs workers on other machines or GPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cumulo.config import TrainingConfig
from cumulo.engine.demo import build_demo_model
from cumulo.jobs.finetune.train import TrainSpec, encode_example, train

RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_raylet_start_wait_time_s": "180",  # a busy machine registers its raylet slowly
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def ray_head(num_cpus: int) -> Iterator[str]:
    """A one-node Ray cluster of this run's own; its address."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = free_port()
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "node-manager-port",
            "object-manager-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
        )
    ]
    import cumulo

    env = {**os.environ, **RAY_ENV, "PYTHONPATH": str(Path(cumulo.__file__).resolve().parents[1])}
    log = temp / "head.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "ray"),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={temp}",
                *ports,
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 180
        while b"--block" not in log.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ray start failed:\n" + log.read_text(errors="replace"))
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def examples(n: int) -> list[list[dict[str, Any]]]:
    return [
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"What is item {i} of the support catalog about?"},
            {
                "role": "assistant",
                "content": f"Item {i} covers "
                + "refunds and returns, " * (1 + i % 4)
                + "with the form to fill in.",
            },
        ]
        for i in range(n)
    ]


def run(label: str, call: Any, spec: TrainSpec, tokens: int) -> dict[str, float]:
    steps: list[float] = []

    def on_event(event: dict[str, Any]) -> None:
        if event.get("type") == "metrics":
            steps.append(float(event["tokens_per_s"]))

    started = time.perf_counter()
    call(spec, on_event)
    wall = time.perf_counter() - started
    figures = {
        "step_tokens_per_s": statistics.median(steps),
        "e2e_tokens_per_s": tokens / wall,
        "wall_s": wall,
    }
    print(
        f"{label:>8}: {figures['step_tokens_per_s']:8.0f} tokens/s a step (median of "
        f"{len(steps)}), {figures['e2e_tokens_per_s']:8.0f} tokens/s end to end "
        f"({wall:.1f} s)",
        flush=True,
    )
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, help="a local model (default: the demo model)")
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    os.environ.update(RAY_ENV)
    from transformers import AutoTokenizer

    from cumulo.jobs.finetune.ray_backend import train_on_ray

    root = Path(tempfile.mkdtemp(prefix="bench-ft-ray-"))
    try:
        base = args.model_dir or build_demo_model(root / "demo-tiny", seed=0)
        data = examples(args.examples)
        tok = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        tokens = sum(len(encode_example(tok, ex).ids) for ex in data) * args.epochs

        def spec(out: str, threads: int) -> TrainSpec:
            return TrainSpec(
                base,
                root / out,
                data,
                n_epochs=args.epochs,
                batch_size=args.batch_size,
                seed=0,
                checkpoint_every=10_000,
                threads=threads,
            )

        print(
            f"job: {args.examples} examples x {args.epochs} epochs, batch {args.batch_size}, "
            f"{tokens} tokens; machine: {os.cpu_count()} cores, load "
            f"{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        cores = os.cpu_count() or 1
        local = max(
            (
                run(
                    f"local/{n}",
                    lambda s, ev: train(s, ev, lambda: False),
                    spec(f"l{n}", n),
                    tokens,
                )
                for n in sorted({1, cores})
            ),
            key=lambda f: f["step_tokens_per_s"],
        )
        with ray_head(num_cpus=2) as address:
            config = TrainingConfig(backend="ray", address=address, num_workers=2)
            storage = str(root / "shared")
            on_ray = run(
                "ray",
                lambda s, ev: train_on_ray(s, config, storage, "bench", ev, lambda: False),
                spec("ray", 1),
                tokens,
            )
        print(
            f"ray/best local: {on_ray['step_tokens_per_s'] / local['step_tokens_per_s']:.2f}x a "
            f"step, {on_ray['e2e_tokens_per_s'] / local['e2e_tokens_per_s']:.2f}x end to end; "
            f"load {os.getloadavg()[0]:.1f}"
        )
        print(
            "note: on this machine's cores the 2 Ray workers share the cores the local run "
            "uses: the figures show Ray's overhead, not a speed-up (that needs workers on "
            "other machines or GPUs)."
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
