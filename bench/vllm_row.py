"""vLLM-CPU started by cumulo: its row of the engine table, and cumulo's overhead in front of it.

`measure(url, model, key)` measures any OpenAI-compatible chat URL the same way, so that
`bench/engine.py` can add a "vLLM-CPU (started by cumulo)" row next to its own:

  single  one streamed request at a time (greedy, `tokens` new tokens), `rounds` times:
          median tokens/s of the decode (first token to last)
  load    `concurrency` streamed requests at once (`load_tokens` new tokens each):
          aggregate tokens/s, time to first token p50/p99

`cumulo_vllm(model_dir, tmp)` runs `cumulo serve` with one `provider: vllm` deployment of
the model (bf16, `threads` CPU threads for vLLM) and yields the URL to measure, and
`peak_rss` reads the replica's peak memory. Run alone, this module measures vLLM through
cumulo and, as the same run's baseline, the same vLLM command run directly (cumulo's
overhead in front of vLLM: the ratio of the two):

    python bench/vllm_row.py [--model-dir DIR] [--tokens 128] [--rounds 3]
                             [--concurrency 16] [--load-tokens 64] [--threads 2] [--eager]

Needs the vllm extra (`make vllm`). vLLM's first start on a model compiles for minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_model import DEFAULT_DIR, ensure_model
from gateway import HOST, Procs, free_port, http, wait_until

MODEL = "bench-qwen05b"
ADMIN_KEY = "bench-admin-key-not-secret"
PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle "
    "on the shore one morning."
)


@dataclass
class Row:
    """One engine's figures, as the table prints them."""

    name: str
    single_tok_s: float
    concurrent_tok_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    peak_rss_bytes: int = 0
    # With `between`: the roofline (tok/s) measured around each single-stream round, the
    # mean of the measurements just before and just after it.
    round_roofs: list[float] = field(default_factory=list)
    # The concurrent run's prompt and completion tokens (summed over its requests).
    concurrent_tokens: tuple[int, int] = (0, 0)


def vllm_args(threads: int, eager: bool) -> tuple[list[str], dict[str, str]]:
    """vLLM's options and environment for the CPU benchmark: bf16, `threads` cores."""
    args = [
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "2048",
        "--max-num-seqs",
        "16",
        "--kv-cache-memory-bytes",
        str(2**30),
        *(["--enforce-eager"] if eager else []),
    ]
    env = {"VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    return args, env


async def _stream(
    client: Any, url: str, model: str, key: str, i: int, tokens: int
) -> tuple[float, float, float, int, int]:
    """(start, first token, end, completion tokens, prompt tokens) of one streamed request."""
    body = {
        "model": model,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "messages": [{"role": "user", "content": f"{PROMPT} Story number {i}."}],
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, count, prompt = 0.0, 0, 0
    async with client.stream(
        "POST", url, json=body, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"request {i}: {resp.status_code} {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                count = int(chunk["usage"]["completion_tokens"])
                prompt = int(chunk["usage"].get("prompt_tokens") or 0)
            if not first and any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                first = time.perf_counter()
    end = time.perf_counter()
    return start, first or end, end, count, prompt


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _measure(
    url: str,
    model: str,
    key: str,
    tokens: int,
    rounds: int,
    concurrency: int,
    load_tokens: int,
    between: Callable[[], float] | None = None,
) -> tuple[float, float, list[float], list[float], tuple[int, int]]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:
        await _stream(client, url, model, key, -1, 4)  # warm-up, and a check that it answers
        single, roofs = [], [between()] if between else []
        for r in range(rounds):
            _, first, end, count, _ = await _stream(client, url, model, key, r, tokens)
            single.append((count - 1) / (end - first) if count > 1 and end > first else 0.0)
            if between:
                roofs.append(between())
        began = time.perf_counter()
        runs = await asyncio.gather(
            *(_stream(client, url, model, key, i, load_tokens) for i in range(concurrency))
        )
        wall = time.perf_counter() - began
    aggregate = sum(r[3] for r in runs) / wall
    around = [(a + b) / 2 for a, b in itertools.pairwise(roofs)]
    tokens_in = (sum(r[4] for r in runs), sum(r[3] for r in runs))
    return statistics.median(single), aggregate, [r[1] - r[0] for r in runs], around, tokens_in


def measure(
    url: str,
    model: str,
    key: str,
    *,
    name: str = "vLLM-CPU (started by cumulo)",
    tokens: int = 128,
    rounds: int = 3,
    concurrency: int = 16,
    load_tokens: int = 64,
    between: Callable[[], float] | None = None,
) -> Row:
    """Single-stream and `concurrency`-concurrent tokens/s through an OpenAI-compatible
    chat URL (`.../v1/chat/completions`); `between()` (the roofline, tok/s) is measured
    before the first single-stream round and after each."""
    single, aggregate, ttfts, around, used = asyncio.run(
        _measure(url, model, key, tokens, rounds, concurrency, load_tokens, between)
    )
    return Row(
        name,
        single,
        aggregate,
        _pct(ttfts, 50),
        _pct(ttfts, 99),
        round_roofs=around,
        concurrent_tokens=used,
    )


def peak_rss(pid: int) -> int:
    """The summed VmHWM (bytes) of `pid` and its descendants (vLLM's API server and engine
    processes each hold their own memory)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total


@contextlib.contextmanager
def cumulo_vllm(
    model_dir: Path,
    tmp: Path,
    *,
    threads: int = 2,
    eager: bool = False,
    startup_timeout_s: float = 1800,
) -> Iterator[tuple[str, str, str, int]]:
    """`cumulo serve` with a vLLM deployment of `model_dir`: (chat URL, model, key, pid of
    the vLLM replica), once the replica is ready."""
    import yaml

    args, env = vllm_args(threads, eager)
    config = {
        "models": [
            {
                "name": MODEL,
                "untrained": True,
                "deployments": [
                    {
                        "provider": "vllm",
                        "path": str(model_dir),
                        "args": args,
                        "env": env,
                        "python": sys.executable,
                        "startup_timeout_s": startup_timeout_s,
                    }
                ],
            }
        ]
    }
    (tmp / "cumulo.yaml").write_text(yaml.safe_dump(config))
    penv = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    penv.update(CUMULO_HOME=str(tmp / "home"), CUMULO_ADMIN_KEY=ADMIN_KEY)
    cumulo = shutil.which("cumulo", path=str(Path(sys.executable).parent)) or "cumulo"
    port = free_port()
    procs = Procs(tmp)
    try:
        procs.start(
            "cumulo",
            [
                cumulo,
                "serve",
                "--config",
                str(tmp / "cumulo.yaml"),
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=penv,
        )
        base = f"http://{HOST}:{port}"
        wait_until(
            procs,
            "cumulo",
            lambda: http("GET", base + "/health/ready")[0] == 200,
            timeout=startup_timeout_s,
        )
        _, raw = http("GET", base + "/admin/engine", token=ADMIN_KEY)
        pid = next(r["pid"] for r in json.loads(raw)["data"] if r.get("engine") == "vllm")
        yield base + "/v1/chat/completions", MODEL, ADMIN_KEY, pid
    finally:
        procs.stop_all()


@contextlib.contextmanager
def direct_vllm(
    model_dir: Path,
    tmp: Path,
    *,
    threads: int = 2,
    eager: bool = False,
    startup_timeout_s: float = 1800,
) -> Iterator[tuple[str, str, str, int]]:
    """The same vLLM command, run directly (the baseline of cumulo in front of it)."""
    args, env = vllm_args(threads, eager)
    key, port = secrets.token_urlsafe(16), free_port()
    procs = Procs(tmp)
    try:
        proc = procs.start(
            "vllm",
            [
                sys.executable,
                "-m",
                "vllm.entrypoints.openai.api_server",
                "--model",
                str(model_dir),
                "--served-model-name",
                MODEL,
                "--host",
                HOST,
                "--port",
                str(port),
                *args,
            ],
            env={**os.environ, **env, "VLLM_API_KEY": key},
        )
        base = f"http://{HOST}:{port}"
        wait_until(
            procs,
            "vllm",
            lambda: http("GET", base + "/health")[0] == 200,
            timeout=startup_timeout_s,
        )
        yield base + "/v1/chat/completions", MODEL, key, proc.pid
    finally:
        procs.stop_all()


def print_rows(rows: list[Row]) -> None:
    print(
        f"{'engine':34} {'single tok/s':>12} {'16-conc tok/s':>13} {'ttft p50':>9} "
        f"{'ttft p99':>9} {'peak RSS':>9}"
    )
    for r in rows:
        rss = f"{r.peak_rss_bytes / 2**20:.0f} MiB" if r.peak_rss_bytes else "-"
        print(
            f"{r.name:34} {r.single_tok_s:12.2f} {r.concurrent_tok_s:13.2f} "
            f"{r.ttft_p50_s:8.2f}s {r.ttft_p99_s:8.2f}s {rss:>9}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--load-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eager", action="store_true", help="vLLM with --enforce-eager")
    args = parser.parse_args()
    model_dir = ensure_model(args.model_dir)
    opts = {"threads": args.threads, "eager": args.eager}
    sizes = {
        "tokens": args.tokens,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "load_tokens": args.load_tokens,
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-vllm-") as tmp:
        for name, start in (
            ("vLLM-CPU (started by cumulo)", cumulo_vllm),
            ("vLLM-CPU direct (baseline)", direct_vllm),
        ):
            began = time.monotonic()
            print(f"{name}: starting ...", flush=True)
            run = Path(tmp) / name.split()[1].strip("()")
            run.mkdir()
            with start(model_dir, run, **opts) as (url, model, key, pid):
                print(f"  ready after {time.monotonic() - began:.0f} s; measuring", flush=True)
                row = measure(url, model, key, name=name, **sizes)
                row.peak_rss_bytes = peak_rss(pid)
            rows.append(row)
    print()
    print_rows(rows)
    via, direct = rows
    print(
        f"through cumulo / direct: single {via.single_tok_s / direct.single_tok_s:.2f}x, "
        f"{args.concurrency} concurrent {via.concurrent_tok_s / direct.concurrent_tok_s:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
