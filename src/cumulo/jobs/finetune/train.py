"""LoRA training of a local causal LM with PEFT: one job's whole training run.

`train(spec, on_event, should_stop)` runs on a worker thread (it blocks) and:

- renders each chat example with the base's own chat template, so the model learns on
  exactly the tokens it is served with; only the tokens of assistant turns (those whose
  `weight` is not 0) carry loss, the prompt and the other turns are context;
- runs `n_epochs` over the examples, each step one optimizer update over `batch_size`
  examples (gradient accumulation: one example per forward pass, no padding, the loss
  summed over the batch's assistant tokens and divided by their number);
- is deterministic for a given `seed`: the initial adapter weights, the order of each
  epoch (drawn from `seed` and the epoch) and dropout;
- writes a checkpoint every `checkpoint_every` steps and at each epoch's end
  (`ckpt-step-N/`: the adapter, the optimizer and random state, the position and its
  metrics), each written beside its place and renamed into it, so a checkpoint is whole or
  absent; `train` called again on the same `out_dir` resumes from the last one;
- stops at a step boundary when `should_stop()` (pause, cancel, shutdown), after writing
  a checkpoint there, by raising `Stopped`;
- at the end writes the adapter (`adapter/`) and the base with the adapter merged in
  (`model/`, a Hugging Face directory the local provider serves as it is).

With `parallel` (the Ray backend, `ray_backend`), `train` is one of several processes
training data-parallel: each takes its share of every batch, the gradients (and the
step's figures) are summed across processes before each update, so every process holds
the same weights, and the outputs are left to the caller (written from the last
checkpoint).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

CKPT_PREFIX = "ckpt-step-"
STATE = "trainer_state.pt"
METRICS = "metrics.json"
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASE_LR = 1e-3  # learning_rate_multiplier 1.0 (LoRA adapters take larger rates than full tuning)


class Stopped(Exception):
    """Training stopped at a step boundary on request; a checkpoint holds the position."""


class Parallel(Protocol):
    """One process of a data-parallel run (implemented by `ray_backend`)."""

    def shard(self, batch: list[int]) -> list[int]:
        """This process's share of a step's examples."""
        ...

    def all_sum(self, params: list[Any], figures: list[float]) -> list[float]:
        """Sum the gradients of `params` and `figures` across processes (in place for the
        gradients); the summed figures."""
        ...


@dataclass(slots=True)
class TrainSpec:
    base_path: Path
    out_dir: Path
    examples: list[list[dict[str, Any]]]  # each: the messages of one chat example
    validation: list[list[dict[str, Any]]] = field(default_factory=list)
    n_epochs: int = 3
    batch_size: int = 1
    learning_rate_multiplier: float = 1.0
    seed: int = 0
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    checkpoint_every: int = 10
    threads: int | None = None


@dataclass(slots=True, frozen=True)
class Encoded:
    ids: list[int]
    labels: list[int]  # -100 where no loss

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != -100)


def encode_example(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> Encoded:
    """The example's tokens, with labels on the assistant turns whose weight is not 0.

    Each turn's tokens are those the template adds for it: the prefix up to an assistant
    turn is rendered with the generation prompt (what the served model is given), and the
    turn's own text after it."""
    chat = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    ids: list[int] = []
    labels: list[int] = []
    text_done = ""

    def add(text: str, train: bool) -> None:
        new: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(new)
        labels.extend(new if train else [-100] * len(new))

    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(
                chat[:i], tokenize=False, add_generation_prompt=True
            )
            add(prompt[len(text_done) :], False)
            text_done = prompt
            full = tokenizer.apply_chat_template(chat[: i + 1], tokenize=False)
            add(full[len(text_done) :], m.get("weight", 1) != 0)
            text_done = full
    full = tokenizer.apply_chat_template(chat, tokenize=False)
    if len(full) > len(text_done):
        add(full[len(text_done) :], False)
    return Encoded(ids, labels)


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))


def checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """The whole checkpoints in `out_dir`, by step."""
    found = []
    if out_dir.is_dir():
        for p in out_dir.iterdir():
            if p.name.startswith(CKPT_PREFIX) and (p / STATE).is_file():
                try:
                    found.append((int(p.name[len(CKPT_PREFIX) :]), p))
                except ValueError:
                    continue
    return sorted(found)


def checkpoint_metrics(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((path / METRICS).read_text(encoding="utf-8"))
    return data


def train(
    spec: TrainSpec,
    on_event: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
    parallel: Parallel | None = None,
) -> dict[str, Any]:
    """Train (or resume) as the module docstring says; the final metrics."""
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(spec.base_path), local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(
        str(spec.base_path), dtype=torch.float32, local_files_only=True
    )
    names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
    targets = [t for t in spec.target_modules if t in names] or ["all-linear"]
    lora = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets if targets != ["all-linear"] else "all-linear",
        task_type="CAUSAL_LM",
    )
    model: Any = get_peft_model(base, lora)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=BASE_LR * spec.learning_rate_multiplier)
    data = [encode_example(tokenizer, ex) for ex in spec.examples]
    val = [encode_example(tokenizer, ex) for ex in spec.validation]
    per_epoch = steps_per_epoch(len(data), spec.batch_size)
    total_steps = per_epoch * spec.n_epochs
    step = 0
    found = checkpoints(spec.out_dir)
    if found:
        step, path = found[-1]
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        state = torch.load(path / STATE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        on_event({"type": "message", "message": f"resumed from the checkpoint at step {step}"})
    spec.out_dir.mkdir(parents=True, exist_ok=True)

    def loss_of(ex: Encoded) -> tuple[Any, int]:
        ids = torch.tensor([ex.ids])
        labels = torch.tensor([ex.labels])
        logits = model(input_ids=ids).logits[:, :-1, :]
        target = labels[:, 1:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"
        )
        return loss, int((target != -100).sum())

    def val_loss() -> float | None:
        if not val:
            return None
        model.eval()
        with torch.no_grad():
            total, n = 0.0, 0
            for ex in val:
                loss, k = loss_of(ex)
                total, n = total + float(loss.detach()), n + k
        model.train()
        return total / max(n, 1)

    def save(step: int, metrics: dict[str, Any]) -> None:
        final = spec.out_dir / f"{CKPT_PREFIX}{step}"
        if final.exists():
            return
        tmp = spec.out_dir / f".tmp-{CKPT_PREFIX}{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        state = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
        torch.save(state, tmp / STATE)
        (tmp / METRICS).write_text(json.dumps(metrics), encoding="utf-8")
        tmp.rename(final)
        on_event({"type": "checkpoint", "step": step, **metrics})

    model.train()
    last: dict[str, Any] = {"step": step}
    while step < total_steps:
        epoch, in_epoch = divmod(step, per_epoch)
        order = list(range(len(data)))
        random.Random(spec.seed * 1000 + epoch).shuffle(order)
        batch = order[in_epoch * spec.batch_size : (in_epoch + 1) * spec.batch_size]
        started = time.perf_counter()
        n_tokens = sum(data[i].trained_tokens for i in batch) or 1
        seen = 0
        optimizer.zero_grad()
        total = 0.0
        for i in batch if parallel is None else parallel.shard(batch):
            loss, _ = loss_of(data[i])
            (loss / n_tokens).backward()
            total += float(loss.detach())
            seen += len(data[i].ids)
        if parallel is not None:
            total, all_seen = parallel.all_sum(params, [total, seen])
            seen = round(all_seen)
        optimizer.step()
        step += 1
        elapsed = max(time.perf_counter() - started, 1e-9)
        last = {
            "step": step,
            "total_steps": total_steps,
            "epoch": epoch + 1,
            "train_loss": total / n_tokens,
            "tokens_per_s": seen / elapsed,
            "trained_tokens": n_tokens,
        }
        on_event({"type": "metrics", **last})
        epoch_end = step % per_epoch == 0
        stopping = should_stop() and step < total_steps
        if epoch_end or step % spec.checkpoint_every == 0 or stopping:
            metrics = {"step": step, "train_loss": last["train_loss"], "valid_loss": val_loss()}
            save(step, metrics)
        if stopping:
            raise Stopped(f"stopped at step {step}")
    if parallel is not None:
        return last
    adapter = spec.out_dir / "adapter"
    if not adapter.exists():
        tmp = spec.out_dir / ".tmp-adapter"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        tmp.rename(adapter)
    merged_dir = spec.out_dir / "model"
    if not merged_dir.exists():
        tmp = spec.out_dir / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        merged = model.merge_and_unload()
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for extra in ("cumulo.json",):
            if (spec.base_path / extra).is_file():
                shutil.copy(spec.base_path / extra, tmp / extra)
        tmp.rename(merged_dir)
    return {**last, "valid_loss": val_loss()}


__all__ = [
    "Encoded",
    "Parallel",
    "Stopped",
    "TrainSpec",
    "checkpoint_metrics",
    "checkpoints",
    "encode_example",
    "steps_per_epoch",
    "train",
]
