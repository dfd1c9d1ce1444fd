"""Training throughput: cumulo's LoRA trainer against a plain PEFT + transformers loop.

Both train the same LoRA (rank 8, the same target modules) on the same model and the same
examples (chat examples of mixed lengths, tokenized once by cumulo's encoder, loss on the
assistant tokens), with the same batch size and optimizer, each in a child process of its
own (so that each one's peak RSS is its own), alternating `--rounds` times in the same
run. The plain loop is what one writes from the PEFT docs: shuffled batches padded to
their longest example, `model(input_ids, attention_mask, labels)`, backward, AdamW step.

Printed: training tokens/s (every token of each example, over the steps' time: model load
and the final save excluded) and peak RSS of each, the best round of each, and the ratio
cumulo/plain (target >= 0.9).

    python bench/finetune_throughput.py [--model-dir DIR] [--examples 256] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "clouds",
    "drift",
    "across",
    "the",
    "sky",
]


def examples(n: int, seed: int = 0) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))
        a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 60)))
        out.append([{"role": "user", "content": f"{i}: {q}?"}, {"role": "assistant", "content": a}])
    return out


def child_cumulo(args: argparse.Namespace) -> dict[str, Any]:
    from cumulo.jobs.finetune.train import TrainSpec, train

    events: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as out:
        spec = TrainSpec(
            Path(args.model_dir),
            Path(out),
            examples(args.examples),
            n_epochs=1,
            batch_size=args.batch_size,
            seed=0,
            threads=args.threads,
            checkpoint_every=10**9,
        )
        train(spec, events.append, lambda: False)
    steps = [e for e in events if e["type"] == "metrics"]
    seconds = sum(e["seen_tokens"] / e["tokens_per_s"] for e in steps)
    return {"tokens": sum(e["seen_tokens"] for e in steps), "seconds": seconds}


def child_plain(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cumulo.jobs.finetune.train import BASE_LR, DEFAULT_TARGETS, encode_example

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    model = get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=[t for t in DEFAULT_TARGETS if t in names],
        ),
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=BASE_LR)
    data = [encode_example(tok, ex) for ex in examples(args.examples)]
    order = list(range(len(data)))
    random.Random(0).shuffle(order)
    model.train()
    tokens, seconds = 0, 0.0
    for start in range(0, len(order), args.batch_size):
        batch = [data[i] for i in order[start : start + args.batch_size]]
        width = max(len(e.ids) for e in batch)
        ids = torch.tensor([e.ids + [0] * (width - len(e.ids)) for e in batch])
        labels = torch.tensor([e.labels + [-100] * (width - len(e.ids)) for e in batch])
        mask = torch.tensor([[1] * len(e.ids) + [0] * (width - len(e.ids)) for e in batch])
        began = time.perf_counter()
        optimizer.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        float(loss.detach())
        seconds += time.perf_counter() - began
        tokens += sum(len(e.ids) for e in batch)
    return {"tokens": tokens, "seconds": seconds}


def run_child(which: str, args: argparse.Namespace) -> dict[str, Any]:
    argv = [
        sys.executable,
        __file__,
        "--child",
        which,
        "--model-dir",
        args.model_dir,
        "--examples",
        str(args.examples),
        "--batch-size",
        str(args.batch_size),
    ]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{which} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", help="A local causal LM [default: the demo model, built].")
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--child", choices=["cumulo", "plain"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        figures = (child_cumulo if args.child == "cumulo" else child_plain)(args)
        figures["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(json.dumps(figures))
        return 0
    tmp = tempfile.TemporaryDirectory()
    if not args.model_dir:
        from cumulo.engine.demo import build_demo_model

        args.model_dir = str(build_demo_model(Path(tmp.name) / "demo-tiny", seed=0))
    runs: dict[str, list[dict[str, Any]]] = {"cumulo": [], "plain": []}
    for _ in range(args.rounds):
        for which in ("plain", "cumulo"):
            runs[which].append(run_child(which, args))
    print(
        f"model {args.model_dir}; {args.examples} examples, batch {args.batch_size}, "
        f"1 epoch, {args.rounds} rounds each (alternating); load {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs"
    )
    print(f"{'':8} {'tokens/s (best)':>16} {'each round':>24} {'peak RSS MB':>12}")
    best = {}
    for which, rs in runs.items():
        rates = [r["tokens"] / r["seconds"] for r in rs]
        best[which] = max(rates)
        print(
            f"{which:8} {best[which]:16.0f} {' '.join(f'{x:.0f}' for x in rates):>24} "
            f"{max(r['peak_rss'] for r in rs) / 2**20:12.0f}"
        )
    print(f"cumulo/plain tokens/s: {best['cumulo'] / best['plain']:.2f} (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
