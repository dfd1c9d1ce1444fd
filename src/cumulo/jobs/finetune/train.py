"""LoRA training of a local causal LM with PEFT: one job's whole training run.

`train(spec, on_event, should_stop)` runs on a worker thread (it blocks) and:

- renders each chat example with the base's own chat template, so the model learns on
  exactly the tokens it is served with; only the tokens of assistant turns (those whose
  `weight` is not 0) carry loss, the prompt and the other turns are context;
- runs `n_epochs` over the examples, each step one optimizer update over `batch_size`
  examples, the loss summed over the batch's assistant tokens and divided by their number;
- buckets by length: each epoch's shuffled order is cut into windows of
  `BUCKET_BATCHES` batches, each window sorted by length and cut into batches (so a batch
  holds examples of similar length), the window's batches then shuffled. A batch runs as
  few forward passes as fit `micro_batch_tokens` padded tokens each (gradient
  accumulation over them); the examples of one pass are right-padded and masked, so no
  token attends to another example's (each example is its own row) and padding carries no
  loss;
- trains in `dtype` (`auto`: bf16 on a CUDA device that supports it, else fp32; the
  adapter's own weights stay fp32), on CUDA when there is a device, else on the CPU with
  `threads` threads (those of the training thread only: the serving threads of the same
  process keep theirs) at niceness `nice`;
- is deterministic for a given `seed` (on the CPU: the same adapter bytes): the initial
  adapter weights, the batches of each epoch (drawn from `seed` and the epoch) and
  dropout;
- writes a checkpoint every `checkpoint_every` steps and at each epoch's end
  (`ckpt-step-N/`: the adapter, the optimizer and random state, the position and its
  metrics), each written beside its place and renamed into it, so a checkpoint is whole or
  absent; `train` called again on the same `out_dir` resumes from the last one;
- stops at a step boundary when `should_stop()` (pause, cancel, shutdown), after writing
  a checkpoint there, by raising `Stopped`; when `discard()` (the job was cancelled: it
  will never resume) it stops at the step boundary without writing anything more;
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
import os
import random
import shutil
import threading
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
BUCKET_BATCHES = 16  # batches per length-sorted window of an epoch
DTYPES = ("auto", "fp32", "bf16")


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
    dtype: str = "auto"  # one of DTYPES
    nice: int = 0  # niceness of the training thread (and its CPU threads), 0 to 19
    micro_batch_tokens: int = 2048  # padded tokens per forward pass (one example at least)


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


def load_model(spec: TrainSpec) -> tuple[Any, Any]:
    """(tokenizer, the base wrapped in a fresh LoRA adapter) for `spec`, seeded."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(spec.seed)
    dtype, device = resolve_dtype(spec.dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(spec.base_path), local_files_only=True)
    base: Any = AutoModelForCausalLM.from_pretrained(
        str(spec.base_path), dtype=dtype, local_files_only=True
    )
    if device != "cpu":
        base = base.to(device)
    names = {n.rsplit(".", 1)[-1] for n, _ in base.named_modules()}
    targets = [t for t in spec.target_modules if t in names] or ["all-linear"]
    lora = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=targets if targets != ["all-linear"] else "all-linear",
        task_type="CAUSAL_LM",
    )
    return tokenizer, get_peft_model(base, lora)


def resolve_dtype(name: str) -> tuple[Any, str]:
    """(torch dtype, device) of `training.dtype` `name` on this machine."""
    import torch

    if name not in DTYPES:
        raise ValueError(f"training dtype must be one of {', '.join(DTYPES)}, not {name!r}")
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if name == "bf16" or (name == "auto" and cuda and torch.cuda.is_bf16_supported()):
        return torch.bfloat16, device
    return torch.float32, device


def limit_threads(threads: int | None, nice: int) -> None:
    """Give the calling thread `threads` CPU threads (torch's intra-op pool) and niceness
    `nice`, leaving the rest of the process as it was.

    torch keeps one process-wide thread count that each thread reads once, at its first
    parallel operation, into its own OpenMP setting: set here, then set back from a short
    helper thread, the count holds for this thread alone. The pool's threads are created by
    this thread and inherit its niceness (Linux: niceness is per thread)."""
    import torch

    if threads:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        restore = threading.Thread(target=torch.set_num_threads, args=(before,))
        restore.start()
        restore.join()
    if nice > 0 and hasattr(os, "setpriority"):
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        if nice > current:
            os.setpriority(os.PRIO_PROCESS, tid, min(nice, 19))


def make_optimizer(model: Any, spec: TrainSpec) -> Any:
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=BASE_LR * spec.learning_rate_multiplier)


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """The batches of epoch `epoch` (indices into `lengths`), bucketed by length as the
    module docstring says; drawn from `seed` and the epoch alone."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = BUCKET_BATCHES * batch_size
    out: list[list[int]] = []
    for start in range(0, len(order), window):
        part = sorted(order[start : start + window], key=lambda i: lengths[i])
        cut = [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        rng.shuffle(cut)
        out += cut
    return out


def micro_batches(batch: Sequence[Encoded], max_tokens: int) -> list[list[Encoded]]:
    """`batch` in as few forward passes as hold at most `max_tokens` padded tokens each
    (longest first; an example longer than that is a pass of its own)."""
    out: list[list[Encoded]] = []
    for ex in sorted(batch, key=lambda e: len(e.ids), reverse=True):
        if out and (len(out[-1]) + 1) * len(out[-1][0].ids) <= max_tokens:
            out[-1].append(ex)
        else:
            out.append([ex])
    return out


def loss_of(model: Any, examples: Sequence[Encoded]) -> tuple[Any, int]:
    """The summed loss over the trained tokens of `examples` in one forward pass (each its
    own row, right-padded and masked), and their number."""
    import torch

    device = next(model.parameters()).device
    width = max(len(ex.ids) for ex in examples)
    ids = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.ids)
        ids[row, :n] = torch.tensor(ex.ids)
        labels[row, :n] = torch.tensor(ex.labels)
        mask[row, :n] = 1
    ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1, :]
    target = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="sum"
    )
    return loss, int((target != -100).sum())


def train_step(
    model: Any,
    optimizer: Any,
    batch: Sequence[Encoded],
    micro_batch_tokens: int = 2048,
    parallel: Parallel | None = None,
) -> dict[str, Any]:
    """One optimizer update over `batch` (gradients accumulated over its forward passes,
    the loss averaged over its trained tokens): {train_loss, trained_tokens, seen_tokens}.

    With `parallel`, this process computes only its share of `batch`; the gradients and
    figures are summed across the processes before the update."""
    n_tokens = sum(ex.trained_tokens for ex in batch) or 1
    mine = list(batch)
    if parallel is not None:
        mine = [batch[i] for i in parallel.shard(list(range(len(batch))))]
    optimizer.zero_grad()
    total = 0.0
    for part in micro_batches(mine, micro_batch_tokens) if mine else []:
        loss, _ = loss_of(model, part)
        (loss / n_tokens).backward()
        total += float(loss.detach())
    seen = sum(len(ex.ids) for ex in mine)
    if parallel is not None:
        params = [p for p in model.parameters() if p.requires_grad]
        total, all_seen = parallel.all_sum(params, [total, float(seen)])
        seen = round(all_seen)
    optimizer.step()
    return {"train_loss": total / n_tokens, "trained_tokens": n_tokens, "seen_tokens": seen}


def eval_loss(model: Any, val: Sequence[Encoded], micro_batch_tokens: int = 2048) -> float | None:
    """The mean loss per trained token over `val` (None without examples)."""
    import torch

    if not val:
        return None
    model.eval()
    with torch.no_grad():
        total, n = 0.0, 0
        for part in micro_batches(val, micro_batch_tokens):
            loss, k = loss_of(model, part)
            total, n = total + float(loss.detach()), n + k
    model.train()
    return total / max(n, 1)


def save_checkpoint(
    model: Any, optimizer: Any, out_dir: Path, step: int, metrics: dict[str, Any]
) -> bool:
    """Write `ckpt-step-<step>/` whole or not at all; False when it was there already."""
    import torch

    final = out_dir / f"{CKPT_PREFIX}{step}"
    if final.exists():
        return False
    tmp = out_dir / f".tmp-{CKPT_PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    state = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}
    torch.save(state, tmp / STATE)
    (tmp / METRICS).write_text(json.dumps(metrics), encoding="utf-8")
    tmp.rename(final)
    return True


def load_checkpoint(model: Any, optimizer: Any, path: Path) -> None:
    """Restore the adapter, optimizer and random state of checkpoint `path`."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    state = torch.load(path / STATE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])


def train(
    spec: TrainSpec,
    on_event: Callable[[dict[str, Any]], None],
    should_stop: Callable[[], bool],
    parallel: Parallel | None = None,
    discard: Callable[[], bool] = lambda: False,
) -> dict[str, Any]:
    """Train (or resume) as the module docstring says; the final metrics."""
    limit_threads(spec.threads, spec.nice)
    tokenizer, model = load_model(spec)
    optimizer = make_optimizer(model, spec)
    data = [encode_example(tokenizer, ex) for ex in spec.examples]
    val = [encode_example(tokenizer, ex) for ex in spec.validation]
    per_epoch = steps_per_epoch(len(data), spec.batch_size)
    total_steps = per_epoch * spec.n_epochs
    step = 0
    found = checkpoints(spec.out_dir)
    if found:
        step, path = found[-1]
        load_checkpoint(model, optimizer, path)
        on_event({"type": "message", "message": f"resumed from the checkpoint at step {step}"})
    spec.out_dir.mkdir(parents=True, exist_ok=True)

    lengths = [len(ex.ids) for ex in data]
    tokens = spec.micro_batch_tokens
    model.train()
    last: dict[str, Any] = {"step": step}
    batches: tuple[int, list[list[int]]] = (-1, [])
    while step < total_steps:
        epoch, in_epoch = divmod(step, per_epoch)
        if batches[0] != epoch:
            batches = (epoch, epoch_batches(lengths, spec.batch_size, spec.seed, epoch))
        batch = batches[1][in_epoch]
        started = time.perf_counter()
        done = train_step(model, optimizer, [data[i] for i in batch], tokens, parallel)
        step += 1
        elapsed = max(time.perf_counter() - started, 1e-9)
        last = {
            "step": step,
            "total_steps": total_steps,
            "epoch": epoch + 1,
            "train_loss": done["train_loss"],
            "tokens_per_s": done["seen_tokens"] / elapsed,
            "trained_tokens": done["trained_tokens"],
            "seen_tokens": done["seen_tokens"],
        }
        on_event({"type": "metrics", **last})
        if discard():
            raise Stopped(f"cancelled at step {step}")
        epoch_end = step % per_epoch == 0
        stopping = should_stop() and step < total_steps
        if epoch_end or step % spec.checkpoint_every == 0 or stopping:
            metrics = {
                "step": step,
                "train_loss": last["train_loss"],
                "valid_loss": eval_loss(model, val, tokens),
            }
            if save_checkpoint(model, optimizer, spec.out_dir, step, metrics):
                on_event({"type": "checkpoint", "step": step, **metrics})
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
    return {**last, "valid_loss": eval_loss(model, val, tokens)}


__all__ = [
    "Encoded",
    "Parallel",
    "Stopped",
    "TrainSpec",
    "checkpoint_metrics",
    "checkpoints",
    "encode_example",
    "epoch_batches",
    "eval_loss",
    "limit_threads",
    "load_checkpoint",
    "load_model",
    "loss_of",
    "make_optimizer",
    "micro_batches",
    "resolve_dtype",
    "save_checkpoint",
    "steps_per_epoch",
    "train",
    "train_step",
]
