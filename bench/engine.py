"""Local serving engine: decode speed vs Hugging Face, and throughput under concurrency.

The model is shaped like Qwen2-0.5B with random weights (`bench_model.py`; built once into
~/.cache/cumulo-bench/qwen05b), bfloat16. Two measurements, each against a baseline in the
same run:

  single  in-process, one request at a time, greedy, ~32-token prompt, 128 new tokens:
          cumulo's `LocalProvider.stream()` vs Hugging Face `model.generate` on the same
          weights, alternated over rounds. Ratio cumulo/HF of tokens/s (target >= 1.0).
  load    `cumulo serve` as a subprocess serving the model (max_running 16). 16 streaming
          requests (64 new tokens each) through POST /v1/chat/completions all at once vs the
          same 16 one after another on the same server. Aggregate tokens/s of both and their
          ratio (target >= 8), time to first token p50/p99 under load (target p50 < 2 s),
          and the server's peak RSS (VmHWM).

    python bench/engine.py [--only single|load] [--rounds 2] [--tokens 128]
                           [--concurrency 16] [--load-tokens 64] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_model import DEFAULT_DIR, ensure_model
from gateway import HOST, Procs, free_port, http, wait_until

ADMIN_KEY = "bench-admin-key-not-secret"
MODEL = "bench-qwen05b"
PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle "
    "on the shore one morning."
)


@dataclass
class Stream:
    """One generation: when it started, produced its first and last token, and how many."""

    start: float
    first: float
    end: float
    tokens: int

    @property
    def tok_s(self) -> float:
        return self.tokens / (self.end - self.start)

    @property
    def decode_tok_s(self) -> float:  # the rate after the first token (prefill excluded)
        return (self.tokens - 1) / (self.end - self.first) if self.end > self.first else 0.0

    @property
    def ttft(self) -> float:
        return self.first - self.start


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 16 values is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


# -- (a) single stream, in-process -----------------------------------------------------


async def cumulo_stream(provider: Any, tokens: int, prompt: str = PROMPT) -> Stream:
    from cumulo.types import ChatRequest, Message, SamplingParams, StreamEnd, TextDelta

    params = SamplingParams(temperature=0, max_tokens=tokens)
    request = ChatRequest(model=MODEL, messages=[Message("user", prompt)], params=params)
    start = time.perf_counter()
    first, count = 0.0, 0
    async for event in provider.stream(request):
        if isinstance(event, TextDelta) and not first:
            first = time.perf_counter()
        elif isinstance(event, StreamEnd):
            count = event.usage.completion_tokens if event.usage else 0
    return Stream(start, first or time.perf_counter(), time.perf_counter(), count)


def hf_stream(model: Any, input_ids: Any, tokens: int, pad_id: int) -> Stream:
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value: Any) -> None:  # first call: the prompt; then one per new token
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    clock = Clock()
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=pad_id,
            streamer=clock,
        )
    end = time.perf_counter()
    return Stream(start, clock.times[1], end, int(out.shape[1] - input_ids.shape[1]))


def bench_single(model_dir: Path, args: argparse.Namespace, tmp: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cumulo.config import DeploymentConfig
    from cumulo.engine.hf import quiet_progress
    from cumulo.providers.base import ProviderContext
    from cumulo.providers.local import LocalProvider

    deployment = DeploymentConfig(provider="local", path=str(model_dir), dtype="bfloat16")
    ctx = ProviderContext(http=None, home=tmp)  # type: ignore[arg-type]  # local needs no HTTP
    provider = LocalProvider(deployment, "chat", ctx)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    with quiet_progress():
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]

    async def run() -> None:
        await provider.start()
        torch.set_num_threads(args.threads)
        try:
            print(
                f"single: prompt {ids.shape[1]} tokens, {args.tokens} new tokens, greedy, "
                f"torch threads {torch.get_num_threads()}, {args.rounds} rounds",
                flush=True,
            )
            await cumulo_stream(provider, 4)  # warm-up
            hf_stream(hf, ids, 4, tokenizer.pad_token_id)
            runs: dict[str, list[Stream]] = {"hf": [], "cumulo": []}
            for i in range(args.rounds):
                for name in ("hf", "cumulo") if i % 2 == 0 else ("cumulo", "hf"):
                    s = (
                        hf_stream(hf, ids, args.tokens, tokenizer.pad_token_id)
                        if name == "hf"
                        else await cumulo_stream(provider, args.tokens)
                    )
                    runs[name].append(s)
                    print(
                        f"  round {i + 1} {name:6} {s.tokens:4d} tokens  {s.tok_s:6.2f} tok/s"
                        f"  decode {s.decode_tok_s:6.2f} tok/s  ttft {s.ttft * 1e3:6.0f} ms"
                        f"  load {load_avg()}",
                        flush=True,
                    )
        finally:
            await provider.close()
        report_single(runs)

    asyncio.run(run())


def report_single(runs: dict[str, list[Stream]]) -> None:
    def rate(streams: list[Stream], decode: bool = False) -> float:
        return statistics.median(s.decode_tok_s if decode else s.tok_s for s in streams)

    hf, cu = runs["hf"], runs["cumulo"]
    print()
    print(f"{'single stream':14} {'tok/s':>8} {'decode tok/s':>13} {'ttft':>8}   (medians)")
    for name, streams in (("HF generate", hf), ("cumulo", cu)):
        ttft = statistics.median(s.ttft for s in streams) * 1e3
        print(f"{name:14} {rate(streams):8.2f} {rate(streams, True):13.2f} {ttft:6.0f}ms")
    print(f"cumulo/HF tok/s         {rate(cu) / rate(hf):.2f}   (target >= 1.0)")
    print(f"cumulo/HF decode tok/s  {rate(cu, True) / rate(hf, True):.2f}")


# -- (b) throughput under concurrency, over HTTP -------------------------------------------


async def http_stream(client: Any, url: str, i: int, tokens: int) -> Stream:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"{PROMPT} Story number {i}."}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    start = time.perf_counter()
    first, count = 0.0, 0
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"request {i}: {resp.status_code} {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                count = int(chunk["usage"]["completion_tokens"])
            if not first and any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                first = time.perf_counter()
    return Stream(start, first or time.perf_counter(), time.perf_counter(), count)


async def drive(url: str, n: int, tokens: int, concurrent: bool) -> tuple[list[Stream], float]:
    import httpx

    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await http_stream(client, url, -1, 4)  # warm-up (and a check that it answers)
        start = time.perf_counter()
        if concurrent:
            streams = list(
                await asyncio.gather(*(http_stream(client, url, i, tokens) for i in range(n)))
            )
        else:
            streams = [await http_stream(client, url, i, tokens) for i in range(n)]
        return streams, time.perf_counter() - start


def peak_rss(pid: int) -> int:
    """The largest VmHWM (bytes) among `pid` and its descendants."""
    best, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    best = max(best, int(line.split()[1]) * 1024)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return best


def start_server(procs: Procs, model_dir: Path, tmp: Path) -> tuple[str, int, str]:
    from cumulo.config import DeploymentConfig

    note = ""
    if "max_running" in DeploymentConfig.model_fields:
        extra = "        max_running: 16\n"
    else:
        extra, note = "", " (this cumulo has no max_running: run without it)"
    config = tmp / "cumulo.yaml"
    config.write_text(
        "models:\n"
        f"  - name: {MODEL}\n"
        "    kind: chat\n"
        "    untrained: true\n"
        "    deployments:\n"
        "      - provider: local\n"
        f"        path: {model_dir}\n"
        "        dtype: bfloat16\n" + extra
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env.update(CUMULO_HOME=str(tmp / "home"), CUMULO_ADMIN_KEY=ADMIN_KEY)
    py = sys.executable
    cumulo = shutil.which("cumulo", path=str(Path(py).parent)) or shutil.which("cumulo")
    argv = [cumulo] if cumulo else [py, "-c", "from cumulo.cli import main; main()"]
    port = free_port()
    proc = procs.start(
        "cumulo",
        [
            *argv,
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    base = f"http://{HOST}:{port}"
    wait_until(procs, "cumulo", lambda: http("GET", base + "/health/ready")[0] == 200, timeout=600)
    return base + "/v1/chat/completions", proc.pid, note


def bench_load(model_dir: Path, args: argparse.Namespace, tmp: Path) -> None:
    procs = Procs(tmp)
    try:
        print("load: starting cumulo serve ...", flush=True)
        url, pid, note = start_server(procs, model_dir, tmp)
        n, tokens = args.concurrency, args.load_tokens
        print(
            f"load: {n} streaming requests x {tokens} new tokens, max_running 16{note}", flush=True
        )
        print(f"  concurrent ... (load {load_avg()})", flush=True)
        together, t_conc = asyncio.run(drive(url, n, tokens, concurrent=True))
        print(f"  one by one ... (load {load_avg()})", flush=True)
        alone, t_seq = asyncio.run(drive(url, n, tokens, concurrent=False))
        load_after = load_avg()
        procs.check_alive()
        rss = peak_rss(pid)
    finally:
        procs.stop_all()

    conc_rate = sum(s.tokens for s in together) / t_conc
    seq_rate = sum(s.tokens for s in alone) / t_seq
    ttfts = [s.ttft for s in together]
    print()
    print(f"{'':22} {'tokens':>7} {'wall s':>8} {'tok/s':>8} {'ttft p50':>9} {'ttft p99':>9}")
    for name, streams, wall in (
        ("one by one", alone, t_seq),
        (f"{n} concurrent", together, t_conc),
    ):
        t = [s.ttft for s in streams]
        print(
            f"{name:22} {sum(s.tokens for s in streams):7d} {wall:8.1f}"
            f" {sum(s.tokens for s in streams) / wall:8.2f}"
            f" {percentile(t, 50):8.2f}s {percentile(t, 99):8.2f}s"
        )
    print(f"concurrent/sequential tok/s  {conc_rate / seq_rate:.2f}x   (target >= 8x)")
    print(f"ttft p50 under load          {percentile(ttfts, 50):.2f} s  (target < 2 s)")
    print(f"ttft p99 under load          {percentile(ttfts, 99):.2f} s")
    print(f"server peak RSS (VmHWM)      {rss / 2**20:.0f} MiB")
    print(f"load average at the end      {load_after}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description="Local engine: decode speed and throughput.")
    parser.add_argument("--only", choices=("single", "load"), help="run one measurement only")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the benchmark model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (single)")
    parser.add_argument("--rounds", type=int, default=2, help="single: alternated rounds")
    parser.add_argument("--tokens", type=int, default=128, help="single: new tokens")
    parser.add_argument("--concurrency", type=int, default=16, help="load: requests")
    parser.add_argument("--load-tokens", type=int, default=64, help="load: new tokens each")
    args = parser.parse_args()

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"load average at start: {load_avg()}; {os.cpu_count()} CPUs", flush=True)
    try:
        model_dir = ensure_model(args.model_dir, rebuild=args.rebuild)
        with tempfile.TemporaryDirectory(prefix="cumulo-bench-engine-") as tmpdir:
            if args.only in (None, "single"):
                bench_single(model_dir, args, Path(tmpdir))
                gc.collect()
            if args.only in (None, "load"):
                print(flush=True)
                bench_load(model_dir, args, Path(tmpdir))
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"bench/engine.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
