"""Multi-LoRA serving: 16 streams over 4 adapters vs 16 streams on the base, same run.

The model is shaped like Qwen2-0.5B with random weights (`bench_model.py`; built once into
~/.cache/cumulo-bench/qwen05b), bfloat16. Four random LoRA adapters are made with PEFT
(rank 16 on q, k, v and o of every layer, `init_lora_weights=False`), then served the
way a fine-tuned model is: a `LocalAdapter` deployment on the base's `LocalProvider`, in
process, so every adapter and the base share the engine's running batch.

Each round streams `--concurrency` chat requests at once (greedy, `--tokens` new tokens,
the prompt differing by a number): `base` all on the base model, `lora` spread evenly over
the 4 adapters. Rounds alternate base/lora (`--rounds` of each) after a warm-up of both;
the aggregate tokens/s of each round is its completion tokens over its wall time. Prints
the medians and their ratio lora/base (target >= 0.8).

    python bench/multi_lora.py [--rounds 2] [--tokens 64] [--concurrency 16] [--rank 16]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path
from typing import Any

from bench_model import DEFAULT_DIR, ensure_model

PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle "
    "on the shore one morning."
)
ADAPTERS = 4


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_adapters(model_dir: Path, out: Path, rank: int) -> list[Path]:
    """`ADAPTERS` random PEFT LoRA adapters of rank `rank` on q, k, v and o."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cumulo.engine.hf import quiet_progress

    with quiet_progress():
        base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    names = [f"a{i}" for i in range(ADAPTERS)]
    peft: Any = get_peft_model(base, config, adapter_name=names[0])
    for name in names[1:]:
        peft.add_adapter(name, config)
    torch.manual_seed(0)
    with torch.no_grad():
        for pname, p in peft.named_parameters():
            if "lora_" in pname:
                p.normal_(0, 0.02)
    peft.save_pretrained(str(out), selected_adapters=names)
    return [out / n for n in names]  # PEFT saves each named adapter in a folder of its name


async def stream(provider: Any, i: int, tokens: int) -> int:
    """One greedy chat stream; its completion tokens."""
    from cumulo.types import ChatRequest, Message, SamplingParams, StreamEnd

    request = ChatRequest(
        model="bench",
        messages=[Message(role="user", content=f"{PROMPT} Story number {i}.")],
        params=SamplingParams(max_tokens=tokens, temperature=0.0),
    )
    count = 0
    async with aclosing(provider.stream(request)) as events:
        async for event in events:
            if isinstance(event, StreamEnd) and event.usage is not None:
                count = event.usage.completion_tokens
    return count


async def one_round(providers: list[Any], n: int, tokens: int) -> tuple[float, int, float]:
    """`n` streams at once over `providers` (round robin): tokens/s, tokens, seconds."""
    start = time.perf_counter()
    counts = await asyncio.gather(
        *(stream(providers[i % len(providers)], i, tokens) for i in range(n))
    )
    elapsed = time.perf_counter() - start
    return sum(counts) / elapsed, sum(counts), elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description="Multi-LoRA serving vs the base, same run.")
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each, alternated")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per stream")
    parser.add_argument("--concurrency", type=int, default=16, help="streams per round")
    parser.add_argument("--rank", type=int, default=16, choices=(8, 16))
    args = parser.parse_args()
    print(f"load average at start: {load_avg()}; {os.cpu_count()} CPUs", flush=True)
    model_dir = ensure_model(args.model_dir)
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-lora-") as tmp:
        asyncio.run(run(model_dir, Path(tmp), args))
    return 0


async def run(model_dir: Path, tmp: Path, args: argparse.Namespace) -> None:
    from cumulo.config import DeploymentConfig
    from cumulo.providers.base import ProviderContext
    from cumulo.providers.local import LocalProvider
    from cumulo.providers.local_adapter import LocalAdapter

    paths = await asyncio.to_thread(make_adapters, model_dir, tmp / "adapters", args.rank)
    deployment = DeploymentConfig(
        provider="local",
        path=str(model_dir),
        dtype="bfloat16",
        max_running=args.concurrency,
        max_tokens_in_flight=args.concurrency * 512,
        lora_cache_size=ADAPTERS,
    )
    ctx = ProviderContext(http=None, home=tmp)
    base = LocalProvider(deployment, "chat", ctx)
    await base.start()
    adapters = [LocalAdapter(base, f"ft:bench:a{i}", p, deployment) for i, p in enumerate(paths)]
    for a in adapters:
        await a.start()
    try:
        print(
            f"{args.concurrency} streams x {args.tokens} new tokens, greedy; "
            f"{ADAPTERS} adapters of rank {args.rank} on q,k,v,o; {args.rounds} rounds each",
            flush=True,
        )
        await one_round([base], args.concurrency, 4)  # warm-up, adapters loaded
        await one_round(list(adapters), args.concurrency, 4)
        results: dict[str, list[float]] = {"base": [], "lora": []}
        for i in range(args.rounds):
            for name in ("base", "lora") if i % 2 == 0 else ("lora", "base"):
                providers = [base] if name == "base" else list(adapters)
                rate, tokens, secs = await one_round(providers, args.concurrency, args.tokens)
                results[name].append(rate)
                print(
                    f"  round {i + 1} {name:4}  {tokens:5d} tokens in {secs:6.2f} s  "
                    f"{rate:7.2f} tok/s  load {load_avg()}",
                    flush=True,
                )
    finally:
        for a in adapters:
            await a.close()
        await base.close()
    b, lo = statistics.median(results["base"]), statistics.median(results["lora"])
    print()
    print(f"base alone, {args.concurrency} streams        {b:8.2f} tok/s (median)")
    print(f"over {ADAPTERS} adapters, {args.concurrency} streams     {lo:8.2f} tok/s (median)")
    print(f"lora/base                        {lo / b:8.2f}   (target >= 0.8)")
    print(f"load average at the end: {load_avg()}")


if __name__ == "__main__":
    sys.exit(main())
