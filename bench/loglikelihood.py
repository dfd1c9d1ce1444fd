"""Scoring prompts (lm-evaluation-harness's loglikelihood requests) on the local engine vs
Hugging Face, in process, on the same weights, in the same run.

Each request is what lm_eval's `local-completions` sends for a loglikelihood task: token
ids, `echo`, `logprobs: 1`, `max_tokens: 1`. cumulo: `LocalProvider.complete()` with all
the prompts of a batch in one request (the engine prefills them in its batched chunks and
gathers the log probabilities there). Baseline: what lm_eval's own `hf` model does with the
same batch: one right-padded forward of the whole batch, `log_softmax`, the prompt tokens'
log probabilities gathered, the greedy check. Both float32 (or bfloat16) with the same torch
threads, alternated over rounds (order swapped each round). Prints prompt tokens/s of each
and the ratio cumulo/HF.

    python bench/loglikelihood.py [--model-dir DIR] [--prompts 64] [--batch 16]
                                  [--tokens 96] [--rounds 3] [--dtype float32|bfloat16]

Without `--model-dir` the demo model is built into a temporary directory (tiny: the
figures then mostly show per-request overhead); `--model-dir ~/.cache/cumulo-bench/qwen05b`
uses the model `bench/engine.py` builds (Qwen2-0.5B's shape, random weights).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def make_prompts(tokenizer: Any, n: int, length: int) -> list[list[int]]:
    from cumulo.engine.demo import demo_corpus

    ids: list[int] = tokenizer(demo_corpus(), add_special_tokens=False)["input_ids"]
    step = max(1, (len(ids) - length) // max(n, 1))
    return [ids[i * step : i * step + length - (i % 7)] for i in range(n)]


def hf_score(model: Any, batch: list[list[int]], pad: int) -> list[tuple[float, bool]]:
    """lm_eval's `hf` loglikelihood of a batch: padded forward, log-softmax, gather."""
    import torch

    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for b, p in enumerate(batch):
        ids[b, : len(p)] = torch.tensor(p)
        mask[b, : len(p)] = 1
    with torch.inference_mode():
        logp = torch.log_softmax(model(ids, attention_mask=mask).logits.float(), dim=-1)
    out = []
    for b, p in enumerate(batch):
        rows = logp[b, : len(p) - 1]
        target = torch.tensor(p[1:]).unsqueeze(1)
        out.append(
            (float(rows.gather(1, target).sum()), bool((rows.argmax(-1) == target[:, 0]).all()))
        )
    return out


async def cumulo_score(provider: Any, batch: list[list[int]]) -> list[tuple[float, bool]]:
    from cumulo.types import CompletionRequest, SamplingParams

    req = CompletionRequest(
        model="bench",
        prompts=list(batch),
        params=SamplingParams(temperature=0, max_tokens=1),
        echo=True,
        logprobs=1,
    )
    resp = await provider.complete(req)
    out = []
    for choice in resp.choices:
        tokens = (choice.logprobs or [])[1:-1]  # the prompt's, as lm_eval slices them
        out.append(
            (
                sum(t.logprob or 0.0 for t in tokens),
                all(t.logprob == max((t.top or {}).values()) for t in tokens),
            )
        )
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cumulo.config import DeploymentConfig
    from cumulo.engine.demo import build_demo_model
    from cumulo.engine.hf import quiet_progress
    from cumulo.providers.base import ProviderContext
    from cumulo.providers.local import LocalProvider

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    tmp = Path(tempfile.mkdtemp(prefix="cumulo-bench-ll-"))
    model_dir = args.model_dir or build_demo_model(tmp / "demo-tiny", seed=0)
    dtype = torch.float32 if args.dtype == "float32" else torch.bfloat16
    deployment = DeploymentConfig(
        provider="local",
        path=str(model_dir),
        dtype=args.dtype,
        max_running=args.batch,
        max_tokens_in_flight=args.batch * (args.tokens + 8),
        max_queue=args.prompts,
    )
    provider = LocalProvider(deployment, "chat", ProviderContext(None, tmp))
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    with quiet_progress():
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    await provider.start()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prompts = make_prompts(tokenizer, args.prompts, args.tokens)
    batches = [prompts[i : i + args.batch] for i in range(0, len(prompts), args.batch)]
    scored = sum(len(p) - 1 for p in prompts)
    print(
        f"model {model_dir.name} {args.dtype}, {len(prompts)} prompts of ~{args.tokens} "
        f"tokens in batches of {args.batch}; load {load_avg()}"
    )

    async def run_cumulo() -> tuple[float, list[tuple[float, bool]]]:
        start = time.perf_counter()
        out = [r for b in batches for r in await cumulo_score(provider, b)]
        return time.perf_counter() - start, out

    def run_hf() -> tuple[float, list[tuple[float, bool]]]:
        start = time.perf_counter()
        out = [r for b in batches for r in hf_score(hf, b, pad)]
        return time.perf_counter() - start, out

    try:
        await run_cumulo()  # warm-up
        run_hf()
        rates: dict[str, list[float]] = {"cumulo": [], "hf": []}
        for r in range(args.rounds):
            order = ["cumulo", "hf"] if r % 2 == 0 else ["hf", "cumulo"]
            results = {}
            for name in order:
                seconds, out = await run_cumulo() if name == "cumulo" else run_hf()
                rates[name].append(scored / seconds)
                results[name] = out
            worst = max(
                abs(a[0] - b[0]) for a, b in zip(results["cumulo"], results["hf"], strict=True)
            )
            print(
                f"round {r + 1}: cumulo {rates['cumulo'][-1]:,.0f} tok/s, "
                f"hf {rates['hf'][-1]:,.0f} tok/s; largest |loglikelihood difference| "
                f"{worst:.2e}; load {load_avg()}"
            )
        c, h = statistics.median(rates["cumulo"]), statistics.median(rates["hf"])
        print(f"median prompt tokens/s: cumulo {c:,.0f}, hf {h:,.0f}; cumulo/HF {c / h:.2f}x")
    finally:
        await provider.close()


if __name__ == "__main__":
    asyncio.run(main())
