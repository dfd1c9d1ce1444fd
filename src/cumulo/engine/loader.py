"""Loading a Hugging Face causal LM for local serving.

Picks the device (`cuda` when available, else `cpu`) and the weight dtype
(`auto`: bfloat16 where the hardware computes it natively, else float32),
configures torch's CPU threads once per process, and returns the model in
eval mode with its tokenizer and the facts the generation worker needs.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cumulo.engine.hf import quiet_progress
from cumulo.errors import ConfigError

DTypeName = Literal["auto", "bfloat16", "float32"]


@dataclass(slots=True)
class CausalLM:
    """A loaded causal language model and what serving it requires."""

    path: Path
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    context_window: int
    stop_token_ids: frozenset[int]
    untrained: bool

    def describe(self) -> str:
        flag = ", untrained" if self.untrained else ""
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.path.name} ({self.device.type}, {dtype}, ctx {self.context_window}{flag})"


@functools.cache
def configure_torch_threads() -> int:
    """Use every core this process may run on for intra-op work; done once per process."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS or Windows
        cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, cores))
    return torch.get_num_threads()


def choose_device() -> torch.device:
    """`cuda` when a GPU is usable, else `cpu`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def _cpu_has_native_bf16() -> bool:
    cpu = torch.cpu
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    native = any(bool(getattr(cpu, name, lambda: False)()) for name in probes)
    if not native:
        return False
    try:  # the kernels must actually run, not only be advertised
        a = torch.ones((4, 4), dtype=torch.bfloat16)
        return bool(torch.equal(a @ a, torch.full((4, 4), 4.0, dtype=torch.bfloat16)))
    except RuntimeError:
        return False


def choose_dtype(requested: DTypeName, device: torch.device) -> torch.dtype:
    """The weight dtype for `requested` on `device`."""
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


def load_causal_lm(path: Path, dtype: DTypeName = "auto") -> CausalLM:
    """Load the model directory `path`; raise `ConfigError` when it cannot be served."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise ConfigError(f"{path} is not a Hugging Face model directory (no config.json)")
    configure_torch_threads()
    device = choose_device()
    torch_dtype = choose_dtype(dtype, device)
    try:
        with quiet_progress():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model: Any = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=torch_dtype, local_files_only=True
            )
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot load the model in {path}: {exc}") from exc
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"the tokenizer in {path} has no chat template; a chat deployment needs one "
            "(tokenizer_config.json `chat_template` or chat_template.jinja)"
        )
    model.to(device)
    model.eval()
    return CausalLM(
        path=path,
        model=model,
        tokenizer=tokenizer,
        device=device,
        dtype=torch_dtype,
        context_window=_context_window(model, tokenizer),
        stop_token_ids=_stop_token_ids(model, tokenizer),
        untrained=_is_untrained(path),
    )


def _context_window(model: Any, tokenizer: Any) -> int:
    window = getattr(model.config, "max_position_embeddings", None)
    if isinstance(window, int) and window > 0:
        return window
    # Tokenizers without a limit report a huge sentinel (1e30); ignore it.
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10_000_000:
        return limit
    raise ConfigError(
        "the model config does not state its context window (max_position_embeddings)"
    )


def _stop_token_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    """End-of-sequence ids from the generation config, the model config and the tokenizer."""
    ids: set[int] = set()
    generation_config = getattr(model, "generation_config", None)
    for source in (generation_config, model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if not ids:
        raise ConfigError("the model defines no end-of-sequence token (eos_token_id)")
    return frozenset(ids)


def _is_untrained(path: Path) -> bool:
    marker = path / "cumulo.json"
    if not marker.is_file():
        return False
    try:
        return bool(json.loads(marker.read_text(encoding="utf-8")).get("untrained"))
    except (OSError, ValueError):
        return False
