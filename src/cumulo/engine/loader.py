"""Loading a Hugging Face causal LM for local serving.

Picks the device (`cuda` when available, else `cpu`) and the weight dtype
(`auto`: bfloat16 where the hardware computes it natively, else float32),
configures torch's CPU threads once per process, and returns the model in
eval mode with its tokenizer and the facts the generation worker needs.

`check_memory` refuses a model before loading it when its weights (read from
the safetensors headers, at the dtype it will be loaded in) plus any KV cache
budget exceed the memory available or the deployment's `max_memory_gb`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cumulo.engine.hf import quiet_progress
from cumulo.errors import ConfigError, Unavailable

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


# Bytes per element of each safetensors dtype.
_SAFETENSORS_SIZES = {
    **dict.fromkeys(("F64", "I64", "U64"), 8),
    **dict.fromkeys(("F32", "I32", "U32"), 4),
    **dict.fromkeys(("F16", "BF16", "I16", "U16"), 2),
    **dict.fromkeys(("F8_E4M3", "F8_E5M2", "I8", "U8", "BOOL"), 1),
}
_FLOAT_TYPES = frozenset({"F64", "F32", "F16", "BF16"})


def weight_bytes(path: Path, dtype: torch.dtype | None = None) -> int:
    """Bytes the weights in `path` take once loaded, floating tensors cast to `dtype`.

    Read from the safetensors headers (the tensors themselves are not read); a
    directory without safetensors files counts its `*.bin`/`*.pt` files' sizes.
    """
    files = sorted(path.rglob("*.safetensors"))
    if not files:
        return sum(f.stat().st_size for pattern in ("*.bin", "*.pt") for f in path.rglob(pattern))
    target = None if dtype is None else torch.empty((), dtype=dtype).element_size()
    total = 0
    for file in files:
        try:
            with file.open("rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                if length > 100 * 2**20:
                    raise ValueError(f"a header of {length} bytes is not credible")
                header = json.loads(fh.read(length))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                kind = info["dtype"]
                size = target if target is not None and kind in _FLOAT_TYPES else None
                total += math.prod(info["shape"]) * (size or _SAFETENSORS_SIZES.get(kind, 4))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, struct.error) as exc:
            raise ConfigError(f"cannot read the safetensors header of {file}: {exc}") from exc
    return total


def kv_cache_bytes(path: Path, dtype: torch.dtype, tokens: int) -> int:
    """Bytes of a KV cache of `tokens` tokens for the causal LM in `path` (0 when unknown)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        config = config.get("text_config", config)
        layers, heads = int(config["num_hidden_layers"]), int(config["num_attention_heads"])
        head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
        kv_heads = int(config.get("num_key_value_heads") or heads)
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return 0
    per_token = 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()
    return per_token * tokens


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup v2 limit."""
    available: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        return None
    # Without a cgroup v2 memory controller (or limit), MemAvailable stands.
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit != "max":
            room = max(0, int(limit) - used)
            available = room if available is None else min(available, room)
    return available


def load_dtype(kind: str, requested: DTypeName) -> torch.dtype:
    """The dtype a local model of `kind` is loaded in (embeddings keep float32 on `auto`)."""
    if kind == "embedding":
        return torch.bfloat16 if requested == "bfloat16" else torch.float32
    return choose_dtype(requested, choose_device())


def check_memory(
    model: str,
    path: Path,
    dtype: torch.dtype | None,
    *,
    max_memory_gb: float | None = None,
    kv_bytes: int = 0,
) -> int:
    """The bytes `model` needs (weights + `kv_bytes`); raise when they do not fit.

    `ConfigError` when they exceed the configured `max_memory_gb`, `Unavailable`
    when they exceed the memory available now.
    """
    weights = weight_bytes(path, dtype)
    needed = weights + kv_bytes
    what = f"model {model!r} ({path}) needs {_size(needed)}"
    if kv_bytes:
        what += f" (weights {_size(weights)} + KV cache {_size(kv_bytes)})"
    if max_memory_gb is not None and needed > max_memory_gb * 2**30:
        cap = int(max_memory_gb * 2**30)
        raise ConfigError(f"{what}, more than its max_memory_gb allows ({_size(cap)}); not loaded")
    available = available_memory()
    if available is not None and needed > available:
        raise Unavailable(f"{what}, but only {_size(available)} of memory is available; not loaded")
    return needed


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 2**30:.2f} GiB)"
