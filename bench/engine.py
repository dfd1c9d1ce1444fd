"""Local serving engine: one table of engines on the same model, with the memory roofline.

The model is shaped like Qwen2-0.5B with random weights (`bench_model.py`; built once into
~/.cache/cumulo-bench/qwen05b), bfloat16, 2 torch threads. The rows, all measured in one run:

  HF generate              in-process `model.generate`: single stream (greedy, `--tokens` new
                           tokens, `--rounds` rounds) and the 16 prompts as one left-padded
                           batch (`--load-tokens` each)
  cumulo engine            `cumulo serve` (local deployment, max_running 16), streamed through
                           POST /v1/chat/completions (`vllm_row.measure`): single stream, then 16
                           requests at once; as the batching baseline, `--sequential` requests
                           one after another (ratio target >= 8x); prefix-cached vs uncached
                           time to first token of a `--prefix-tokens` prompt prefix
  cumulo deterministic     the same with `deterministic: true`: its cost against the row above
  vLLM-CPU (by cumulo)     with `--vllm` only (vLLM starts and compiles for minutes):
                           `vllm_row.cumulo_vllm`, measured the same way
  roofline                 the bandwidth of a streaming read of 1 GiB (best of 3, 2 threads),
                           divided by the bytes of weights a token reads (every parameter
                           once: the tied head reads the embedding); measured before HF's row
                           and before and after each single-stream round of a server's row

Under the table, the compute ceiling of the concurrent run: this CPU's bf16 dot-product
peak (`compute_peak.c`, registers only) against the multiply-adds of the run's prompt and
new tokens, i.e. the most any engine could batch here.

Single stream is decode tokens/s (first token to last, median of the rounds); "% roof"
compares it with the roofline of the same moments: the median over the rounds of the mean
of the measurements just before and just after each (this machine's bandwidth swings
between runs by more than any change measured here). The prefix columns read the second request's
`usage.prompt_tokens_details.cached_tokens`: "n/a" while the engine keeps no prefix cache.
Peak RSS is the server's VmHWM (vLLM: summed over its processes).

    python bench/engine.py [--vllm] [--rounds 3] [--tokens 128] [--concurrency 16]
                           [--load-tokens 64] [--sequential 4] [--prefix-tokens 2000]
                           [--skip-hf] [--skip-deterministic] [--model-dir DIR]
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_model import DEFAULT_DIR, ensure_model
from gateway import HOST, Procs, free_port, http, wait_until
from vllm_row import cumulo_vllm, measure

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


# -- the roofline -----------------------------------------------------------------------


def read_bandwidth(threads: int) -> float:
    """Bytes/s of a streaming read of 1 GiB (the best of 3 sums of a float32 tensor)."""
    import torch

    torch.set_num_threads(threads)
    data = torch.ones(2**28, dtype=torch.float32)
    data.sum()  # the pages are touched before timing
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - began)
    del data
    return 2**30 / best


def compute_peak(threads: int, tmp: Path) -> float | None:
    """Multiply-adds/s of a bf16 matrix product's instructions on `threads` threads
    (compute_peak.c, the best of 2 runs); None without a C compiler or a CPU the kernels
    build for."""
    from cumulo.engine.cpu import compiler, target_flags

    cc, target = compiler(), target_flags()
    if cc is None or target is None:
        return None
    exe = tmp / "compute_peak"
    source = Path(__file__).with_name("compute_peak.c")
    flags = ["-O2", *target, "-pthread"]
    subprocess.run([cc, *flags, "-o", str(exe), str(source)], check=True, timeout=120)
    runs = [subprocess.run([str(exe), str(threads)], capture_output=True, text=True) for _ in "ab"]
    return max(float(r.stdout) for r in runs)


def params_per_token(model_dir: Path) -> tuple[int, int]:
    """Multiply-adds of the matrix products per token: (prompt, new). Every weight once
    for a new token (the head included); a prompt token skips the head (only the last
    one is projected on the vocabulary) and looks its embedding up."""
    config = json.loads((model_dir / "config.json").read_text())
    params = weight_bytes(model_dir) // 2  # bf16
    head = int(config["vocab_size"]) * int(config["hidden_size"])
    return params - head, params


def weight_bytes(model_dir: Path) -> int:
    """Bytes of weights one decoded token reads: every parameter once (bf16)."""
    import torch

    from cumulo.engine.loader import weight_bytes as stored

    return stored(model_dir, torch.bfloat16)


@dataclass
class Row:
    """One engine's figures in the table (None: not measured)."""

    name: str
    single: float | None = None  # decode tok/s, single stream
    roofline: float | None = None  # the roofline tok/s measured just before
    concurrent: float | None = None  # aggregate tok/s, `concurrency` at once
    sequential: float | None = None  # aggregate tok/s, one after another
    ttft_p50: float | None = None
    ttft_p99: float | None = None
    prefix: tuple[float, float | None] | None = None  # uncached, cached TTFT (s)
    rss: int = 0
    notes: list[str] = field(default_factory=list)
    concurrent_tokens: tuple[int, int] = (0, 0)  # the concurrent run's prompt, completion


# -- HF generate, in-process ---------------------------------------------------------------


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
    attention = (input_ids != pad_id).long() if input_ids.shape[0] > 1 else None
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=attention if attention is not None else torch.ones_like(input_ids),
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            pad_token_id=pad_id,
            streamer=clock if input_ids.shape[0] == 1 else None,
        )
    end = time.perf_counter()
    new = int(out.shape[1] - input_ids.shape[1]) * int(input_ids.shape[0])
    first = clock.times[1] if len(clock.times) > 1 else end
    return Stream(start, first, end, new)


def bench_hf(model_dir: Path, args: argparse.Namespace) -> Row:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cumulo.engine.hf import quiet_progress

    torch.set_num_threads(args.threads)
    row = Row("HF generate (in-process)")
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    tokenizer.padding_side = "left"
    with quiet_progress():
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    pad = tokenizer.pad_token_id

    def chat(text: str) -> str:
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
        )

    ids = tokenizer(chat(PROMPT), return_tensors="pt", add_special_tokens=False)["input_ids"]
    hf_stream(hf, ids, 4, pad)  # warm-up
    row.roofline = args.roof()
    runs = []
    for r in range(args.rounds):
        s = hf_stream(hf, ids, args.tokens, pad)
        runs.append(s.decode_tok_s)
        print(
            f"  HF round {r + 1}: decode {s.decode_tok_s:.2f} tok/s  load {load_avg()}", flush=True
        )
    row.single = statistics.median(runs)
    texts = [chat(f"{PROMPT} Story number {i}.") for i in range(args.concurrency)]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    s = hf_stream(hf, batch["input_ids"], args.load_tokens, pad)
    row.concurrent = s.tokens / (s.end - s.start)
    row.notes.append(f"{args.concurrency} prompts as one padded batch; no server, no RSS")
    print(
        f"  HF batch of {args.concurrency}: {row.concurrent:.2f} tok/s  load {load_avg()}",
        flush=True,
    )
    del hf
    gc.collect()
    return row


# -- cumulo serve --------------------------------------------------------------------------


async def http_stream(client: Any, url: str, body: dict[str, Any]) -> tuple[Stream, dict[str, Any]]:
    """One streamed chat request: its timing and its usage chunk."""
    body = {
        **body,
        "model": MODEL,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    start = time.perf_counter()
    first, usage = 0.0, {}
    async with client.stream("POST", url, json=body, headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{resp.status_code} {(await resp.aread())[:300]!r}")
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if not first and any(c.get("delta", {}).get("content") for c in chunk["choices"]):
                first = time.perf_counter()
    end = time.perf_counter()
    return Stream(start, first or end, end, int(usage.get("completion_tokens", 0))), usage


async def sequential_rate(url: str, n: int, tokens: int) -> float:
    """Aggregate tok/s of `n` requests one after another."""
    import httpx

    async with httpx.AsyncClient(timeout=900) as client:
        began, total = time.perf_counter(), 0
        for i in range(n):
            body = {
                "messages": [{"role": "user", "content": f"{PROMPT} Story number {i}."}],
                "max_tokens": tokens,
            }
            total += (await http_stream(client, url, body))[0].tokens
        return total / (time.perf_counter() - began)


def long_prefix(model_dir: Path, tokens: int, seed: int) -> str:
    """A text of about `tokens` tokens (under the benchmark tokenizer), distinct per seed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    words = ("harbour", "lantern", "tide", "gull", "rope", "salt", "storm", "keeper", "shore")
    text = " ".join(f"{words[(i * 7 + seed) % len(words)]}{i % 13}" for i in range(tokens))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return str(tokenizer.decode(ids))


async def prefix_ttft(url: str, prefix: str) -> tuple[float, float | None]:
    """TTFT of a request with `prefix` as its system prompt, the first time (uncached) and
    again with another question (cached, when the usage says cached tokens were reused)."""
    import httpx

    async with httpx.AsyncClient(timeout=900) as client:
        ttfts, cached = [], 0
        for question in ("Who found the bottle?", "What did the message say?"):
            body = {
                "messages": [
                    {"role": "system", "content": prefix},
                    {"role": "user", "content": question},
                ],
                "max_tokens": 2,
            }
            stream, usage = await http_stream(client, url, body)
            ttfts.append(stream.ttft)
            cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        return ttfts[0], (ttfts[1] if cached > 0 else None)


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


@contextlib.contextmanager
def cumulo_server(model_dir: Path, tmp: Path, *, deterministic: bool) -> Iterator[tuple[str, int]]:
    """`cumulo serve` with a local deployment of the model: (chat URL, server pid)."""
    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "cumulo.yaml"
    config.write_text(
        "models:\n"
        f"  - name: {MODEL}\n"
        "    kind: chat\n"
        "    untrained: true\n"
        "    deployments:\n"
        "      - provider: local\n"
        f"        path: {model_dir}\n"
        "        dtype: bfloat16\n"
        "        max_running: 16\n"
        f"        deterministic: {'true' if deterministic else 'false'}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env.update(CUMULO_HOME=str(tmp / "home"), CUMULO_ADMIN_KEY=ADMIN_KEY)
    py = sys.executable
    cumulo = shutil.which("cumulo", path=str(Path(py).parent)) or shutil.which("cumulo")
    argv = [cumulo] if cumulo else [py, "-c", "from cumulo.cli import main; main()"]
    port = free_port()
    procs = Procs(tmp)
    try:
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
        wait_until(
            procs, "cumulo", lambda: http("GET", base + "/health/ready")[0] == 200, timeout=900
        )
        yield base + "/v1/chat/completions", proc.pid
        procs.check_alive()
    finally:
        procs.stop_all()


def bench_cumulo(
    model_dir: Path, args: argparse.Namespace, tmp: Path, *, deterministic: bool
) -> Row:
    name = "cumulo deterministic: true" if deterministic else "cumulo engine"
    row = Row(name)
    print(f"{name}: starting cumulo serve ...", flush=True)
    with cumulo_server(model_dir, tmp, deterministic=deterministic) as (url, pid):
        print(f"  measuring (load {load_avg()})", flush=True)
        measure_into(row, url, MODEL, ADMIN_KEY, args)
        if args.sequential:
            print(f"  {args.sequential} one after another (load {load_avg()})", flush=True)
            row.sequential = asyncio.run(sequential_rate(url, args.sequential, args.load_tokens))
        if args.prefix_tokens:
            print(f"  prefix TTFT, {args.prefix_tokens} tokens (load {load_avg()})", flush=True)
            prefix = long_prefix(model_dir, args.prefix_tokens, seed=int(deterministic))
            row.prefix = asyncio.run(prefix_ttft(url, prefix))
        row.rss = peak_rss(pid)
    return row


def measure_into(row: Row, url: str, model: str, key: str, args: argparse.Namespace) -> None:
    """A server's single-stream rounds (each between two roofline measurements) and its
    concurrent run (`vllm_row.measure`), into `row`."""
    got = measure(
        url,
        model,
        key,
        name=row.name,
        tokens=args.tokens,
        rounds=args.rounds,
        concurrency=args.concurrency,
        load_tokens=args.load_tokens,
        between=args.roof,
    )
    row.roofline = statistics.median(got.round_roofs)
    row.single, row.concurrent = got.single_tok_s, got.concurrent_tok_s
    row.ttft_p50, row.ttft_p99 = got.ttft_p50_s, got.ttft_p99_s
    row.concurrent_tokens = got.concurrent_tokens


def bench_vllm(model_dir: Path, args: argparse.Namespace, tmp: Path) -> Row:
    name = "vLLM-CPU (started by cumulo)"
    row = Row(name)
    began = time.monotonic()
    print(f"{name}: starting (vLLM compiles for minutes) ...", flush=True)
    tmp.mkdir(parents=True, exist_ok=True)
    from vllm_row import peak_rss as summed_rss

    with cumulo_vllm(model_dir, tmp, threads=args.threads) as (url, model, key, pid):
        print(f"  ready after {time.monotonic() - began:.0f} s; measuring", flush=True)
        measure_into(row, url, model, key, args)
        row.rss = summed_rss(pid)
    return row


# -- the table -----------------------------------------------------------------------------


def fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def print_table(
    rows: list[Row], roofs: list[float], per_token: int, args: argparse.Namespace
) -> None:
    n = args.concurrency
    print()
    print(
        f"{'engine':30} {'single tok/s':>12} {'% roof':>7} {f'{n}-conc tok/s':>13} "
        f"{'x seq':>6} {'ttft p50':>9} {'ttft p99':>9} {'prefix uncached':>16} "
        f"{'cached':>8} {'peak RSS':>9}"
    )
    for r in rows:
        roof = f"{100 * r.single / r.roofline:.0f}%" if r.single and r.roofline else "-"
        ratio = fmt(
            r.concurrent / r.sequential if r.concurrent and r.sequential else None, ".1f", "x"
        )
        uncached = fmt(r.prefix[0] if r.prefix else None, ".2f", "s")
        cached = "-" if r.prefix is None else fmt(r.prefix[1], ".2f", "s").replace("-", "n/a")
        rss = f"{r.rss / 2**20:.0f} MiB" if r.rss else "-"
        print(
            f"{r.name:30} {fmt(r.single, '.2f'):>12} {roof:>7} {fmt(r.concurrent, '.2f'):>13}"
            f" {ratio:>6} {fmt(r.ttft_p50, '.2f', 's'):>9} {fmt(r.ttft_p99, '.2f', 's'):>9}"
            f" {uncached:>16} {cached:>8} {rss:>9}"
        )
    roof = statistics.median(roofs)
    print(
        f"{'roofline (measured)':30} {roof:12.2f} {'100%':>7}"
        f"   ({statistics.median(args.bandwidths) / 1e9:.1f} GB/s streaming read, "
        f"{per_token / 1e9:.3f} GB of weights per token; "
        f"range {min(roofs):.1f}-{max(roofs):.1f} tok/s over the run)"
    )
    print()
    by = {r.name: r for r in rows}
    engine, det = by.get("cumulo engine"), by.get("cumulo deterministic: true")
    vllm = by.get("vLLM-CPU (started by cumulo)")
    if engine and engine.single and engine.roofline:
        print(
            f"cumulo single / roofline          {engine.single / engine.roofline:.2f}"
            "   (target >= 0.80)"
        )
    if engine and engine.concurrent and engine.sequential:
        print(
            f"cumulo {n} concurrent / sequential  {engine.concurrent / engine.sequential:.1f}x"
            "   (target >= 8x)"
        )
    if engine and engine.concurrent and engine.sequential and args.peak_macs:
        # The compute floor of the concurrent run: its matrix products at the measured peak.
        prompt, completion = engine.concurrent_tokens
        macs = prompt * args.params_per_token[0] + completion * args.params_per_token[1]
        floor_s = macs / args.peak_macs
        best = completion / floor_s
        print(
            f"  compute ceiling: {args.peak_macs / 1e9:.0f} GMAC/s bf16 peak ({args.threads} "
            f"threads, registers only); the {n} requests' {prompt} prompt + {completion} new "
            f"tokens are {macs / 1e9:.0f} GMAC: >= {floor_s:.2f} s, <= {best:.0f} tok/s = "
            f"{best / engine.sequential:.1f}x sequential at 100% of peak"
        )
    if engine and vllm and engine.single and vllm.single:
        print(
            f"cumulo single / vLLM-CPU single   {engine.single / vllm.single:.2f}   (target >= 1.0)"
        )
    if engine and det and engine.single and det.single and engine.concurrent and det.concurrent:
        print(
            f"deterministic cost: single {det.single / engine.single:.2f}x, "
            f"{n} concurrent {det.concurrent / engine.concurrent:.2f}x of the default engine"
        )
    if engine and engine.prefix and engine.prefix[1] is not None:
        print(
            f"prefix cached / uncached TTFT     {engine.prefix[1] / engine.prefix[0]:.2f}"
            "   (target <= 0.15)"
        )
    for r in rows:
        for note in r.notes:
            print(f"note: {r.name}: {note}")
    print(f"load average at the end: {load_avg()}; {os.cpu_count()} CPUs")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Local engine: a table of engines and the memory roofline."
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the benchmark model")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (roofline, HF)")
    parser.add_argument("--rounds", type=int, default=3, help="single-stream rounds")
    parser.add_argument("--tokens", type=int, default=128, help="single: new tokens")
    parser.add_argument("--concurrency", type=int, default=16, help="requests at once")
    parser.add_argument("--load-tokens", type=int, default=64, help="new tokens each, at once")
    parser.add_argument(
        "--sequential",
        type=int,
        default=4,
        help="requests one after another: the batching baseline (0: skip)",
    )
    parser.add_argument(
        "--prefix-tokens",
        type=int,
        default=2000,
        help="prefix length of the cached/uncached TTFT (0: skip)",
    )
    parser.add_argument(
        "--vllm",
        action="store_true",
        help="add vLLM-CPU started by cumulo (needs `make vllm`; minutes)",
    )
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--skip-deterministic", action="store_true")
    args = parser.parse_args()

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"load average at start: {load_avg()}; {os.cpu_count()} CPUs", flush=True)
    try:
        model_dir = ensure_model(args.model_dir, rebuild=args.rebuild)
        per_token = weight_bytes(model_dir)
        args.bandwidths, roofs = [], []

        def roof() -> float:
            bw = read_bandwidth(args.threads)
            args.bandwidths.append(bw)
            roofs.append(bw / per_token)
            print(
                f"  roofline now: {bw / 1e9:.1f} GB/s -> {roofs[-1]:.1f} tok/s (load {load_avg()})",
                flush=True,
            )
            return roofs[-1]

        args.roof = roof
        args.params_per_token = params_per_token(model_dir)
        rows = []
        with tempfile.TemporaryDirectory(prefix="cumulo-bench-engine-") as tmpdir:
            tmp = Path(tmpdir)
            args.peak_macs = compute_peak(args.threads, tmp)
            if not args.skip_hf:
                rows.append(bench_hf(model_dir, args))
            rows.append(bench_cumulo(model_dir, args, tmp / "engine", deterministic=False))
            if not args.skip_deterministic:
                rows.append(bench_cumulo(model_dir, args, tmp / "det", deterministic=True))
            if args.vllm:
                rows.append(bench_vllm(model_dir, args, tmp / "vllm"))
            roof()
        print_table(rows, roofs, per_token, args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        print(f"bench/engine.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
