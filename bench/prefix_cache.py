"""Prefix cache: time to first token with a cached 2,000-token prefix vs the same uncached.

In-process, on the engine's `Scheduler`, one request at a time, greedy, 1 new token (the
time to `Finished` is the time to first token). Each round takes a fresh 2,000-token prefix
(a long system prompt nobody sent before) and sends two requests that start with it and end
with different 20-token questions:

  uncached  the first request: its whole prompt is prefilled (the cache misses);
  cached    the second: the prefix's blocks are copied from the cache, only the question
            (and the prefix's last partial block) is prefilled.

Prints the median TTFT of each, their ratio (target <= 0.15) and the cached token count the
engine reported, for the 0.5B-shaped bench model (bfloat16, `bench_model.py`) and the demo
model (float32), with `--threads` torch threads (2 by default).

    python bench/prefix_cache.py [--rounds 5] [--prefix 2000] [--threads 2]
                                 [--only bench|demo] [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from bench_model import DEFAULT_DIR, ensure_model
from cumulo.engine.demo import build_demo_model
from cumulo.engine.loader import load_causal_lm
from cumulo.engine.params import Finished, GenerationParams
from cumulo.engine.sampling import SamplingConfig
from cumulo.engine.scheduler import EngineLimits, Posted, Scheduler, Sequence

QUESTION = 20


def first_token(engine: Scheduler, prompt: list[int]) -> tuple[float, Finished]:
    """Seconds from submit to the first token, and the request's `Finished`."""
    done = threading.Event()
    end: list[Posted] = []

    def sink(item: Posted) -> bool:
        if isinstance(item, Finished | BaseException):
            end.append(item)
            done.set()
        return True

    params = GenerationParams(max_new_tokens=1, sampling=SamplingConfig(temperature=0.0))
    start = time.perf_counter()
    engine.submit(Sequence(prompt, params, sink))
    if not done.wait(600):
        raise RuntimeError("the request did not finish")
    elapsed = time.perf_counter() - start
    if not isinstance(end[0], Finished):
        raise RuntimeError(f"the request failed: {end[0]!r}")
    return elapsed, end[0]


def bench(name: str, path: Path, dtype: str, args: argparse.Namespace) -> float:
    lm = load_causal_lm(path, dtype)
    vocab = len(lm.tokenizer)
    specials = set(lm.tokenizer.all_special_ids)
    words = [i for i in range(min(vocab, 30000)) if i not in specials]
    rng = random.Random(0)
    room = args.prefix + 2 * QUESTION + 16
    limits = EngineLimits(
        max_running=2,
        max_tokens_in_flight=2 * room,
        prefill_chunk=args.chunk,
        prefix_cache_tokens=4 * args.prefix,
    )
    engine = Scheduler(lm, limits, name=f"bench-{name}")
    cold, warm, cached = [], [], []
    try:
        first_token(engine, rng.choices(words, k=64))  # warm-up (allocations, kernels)
        for _ in range(args.rounds):
            prefix = rng.choices(words, k=args.prefix)
            t_cold, end_cold = first_token(engine, prefix + rng.choices(words, k=QUESTION))
            t_warm, end_warm = first_token(engine, prefix + rng.choices(words, k=QUESTION))
            assert end_cold.cached_tokens == 0, end_cold
            cold.append(t_cold)
            warm.append(t_warm)
            cached.append(end_warm.cached_tokens)
    finally:
        engine.close()
    c, w = statistics.median(cold), statistics.median(warm)
    ratio = w / c
    print(
        f"{name:<28} {dtype:<9} uncached {c * 1000:9.1f} ms   cached {w * 1000:8.1f} ms   "
        f"ratio {ratio:6.3f}   cached tokens {min(cached)}-{max(cached)} of "
        f"{args.prefix + QUESTION}"
    )
    return ratio


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefix", type=int, default=2000, help="prefix tokens")
    parser.add_argument("--chunk", type=int, default=256, help="prefill chunk (tokens)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=["bench", "demo"])
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"prefix {args.prefix} tokens + {QUESTION}-token question, {args.rounds} rounds, "
        f"{args.threads} threads, load average {os.getloadavg()[0]:.1f} on "
        f"{os.cpu_count()} cores; TTFT medians, same run"
    )
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "bench"):
            path = ensure_model(args.model_dir)
            ratios.append(bench("bench model (0.5B-shaped)", path, "bfloat16", args))
        if args.only in (None, "demo"):
            demo = build_demo_model(Path(tmp) / "demo-tiny", seed=0)
            ratios.append(bench("demo model (untrained)", demo, "float32", args))
    target = all(r <= 0.15 for r in ratios)
    print(f"target cached/uncached <= 0.15: {'met' if target else 'NOT met'}")
    return 0 if target else 1


if __name__ == "__main__":
    sys.exit(main())
