"""LoRA adapters on a loaded base model: several adapters, and the base, in one batch.

An adapter is what PEFT saves (`adapter_config.json` and `adapter_model.safetensors`):
for each target projection `y = x W^T + b` of the base, two small matrices A [rank, in]
and B [out, rank]; the tuned model computes `y + scale * (x A^T) B^T` there. Nothing is
merged into the base's weights, so one loaded base serves every adapter of it at once:

- `AdapterRegistry`: one per engine. Adapters are registered by name (a fine-tuned
  model's name) with their directory, checked against the base when registered (from the
  safetensors header: no weights are read). Loaded adapters live in an LRU cache of
  `cache_size` (the deployment's `lora_cache_size`); loading one beyond it drops the least
  recently used. A request holds its adapter while it runs, so an adapter dropped from
  the cache stays in memory until its requests end (and a request for it meanwhile uses
  that same copy); beyond `cache_size`, only adapters of running requests (and of the
  engine's last few batches, whose stacked weights it keeps) stay loaded.
- `LoraStep`: what a forward calls on each target projection: `apply(name, x, y)` adds
  each row's adapter delta to the projection's output. `LoraBatch` is the engine's: it
  knows which adapter each row of the step's batch has (None: the base, left untouched).
- `LoraHooks`: the Hugging Face forward path. Forward hooks on the base's target
  `nn.Linear` modules call the current step's `LoraStep` with the module's name
  (`model.layers.3.self_attn.q_proj`); with no step (a batch of the base only) they
  return at once. A forward of its own calls `apply` itself for each projection.

The delta is PEFT's (`lora_B(lora_A(x)) * scaling` added to the base's output), in
float32 as PEFT computes it for a float32, bfloat16 or float16 base, so a row's output
equals PEFT's for that adapter up to floating-point rounding. Supported adapters: LoRA on `nn.Linear` modules of the decoder
(`fan_in_fan_out` false, no DoRA, no trained biases or `modules_to_save`), with `rank_pattern`,
`alpha_pattern` and `use_rslora` honoured; anything else is refused when registered.
"""

from __future__ import annotations

import json
import math
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from cumulo.errors import ConfigError, Unavailable

__all__ = [
    "MAX_RANK",
    "AdapterRegistry",
    "LoadedAdapter",
    "LoraBatch",
    "LoraHooks",
    "LoraStack",
    "LoraStep",
    "LoraWeights",
]

MAX_RANK = 1024  # a larger rank is no longer a low-rank adapter
WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$"
)


class LoraStep(Protocol):
    """The adapters of one forward's batch, applied projection by projection."""

    def apply(self, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """`y` (the output of projection `name`, `[batch, ..., out]`, for input `x`
        `[batch, ..., in]`) with, on each batch row, `scale * (x_row A^T) B^T` of that row's
        adapter added (rows of the base, or of an adapter without `name`, untouched).
        May update `y` in place; returns it."""
        ...


@dataclass(frozen=True, slots=True, eq=False)
class LoraWeights:
    """One projection's adapter: A [rank, in], B [out, rank] and the scale."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float


@dataclass(slots=True, eq=False, weakref_slot=True)
class LoadedAdapter:
    """An adapter's weights, on the base's device in float32, by module name."""

    name: str
    modules: dict[str, LoraWeights]

    @property
    def nbytes(self) -> int:
        return sum(
            w.a.numel() * w.a.element_size() + w.b.numel() * w.b.element_size()
            for w in self.modules.values()
        )


@dataclass(frozen=True, slots=True)
class _Plan:
    """What registering an adapter checked: each module's rank and scale."""

    path: Path
    scales: dict[str, float]


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's `rank_pattern`/`alpha_pattern` lookup: a key matches a module name's end."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


class AdapterRegistry:
    """The LoRA adapters of one base model (see the module docstring). Thread-safe."""

    def __init__(self, model: Any, device: torch.device, cache_size: int) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self.device = device
        self.cache_size = cache_size
        decoder = model.get_decoder()
        prefix = next((n for n, m in model.named_modules() if m is decoder), "")
        # The projections an adapter may target: the decoder's linear layers, by HF name.
        self.linears: dict[str, tuple[int, int]] = {
            name: (m.in_features, m.out_features)
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and (not prefix or name.startswith(prefix + "."))
        }
        self._plans: dict[str, _Plan] = {}
        self._cache: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._live: weakref.WeakValueDictionary[str, LoadedAdapter] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time: a second asker waits, then finds it
        self.loads = 0  # adapters read from disk since start

    # -- registration ----------------------------------------------------------

    def register(self, name: str, path: Path) -> None:
        """Serve the adapter in `path` as `name`; `ConfigError` when it does not fit the base."""
        plan = self._check(path)
        with self._lock:
            old = self._plans.get(name)
            self._plans[name] = plan
            if old is not None and old.path != plan.path:
                self._cache.pop(name, None)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._plans.pop(name, None)
            self._cache.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return list(self._plans)

    def cached(self) -> list[str]:
        """The adapters in the cache, least recently used first."""
        with self._lock:
            return list(self._cache)

    def _check(self, path: Path) -> _Plan:
        from safetensors import safe_open

        try:
            config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
            with safe_open(str(path / WEIGHTS), "pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot read the LoRA adapter in {path}: {exc}") from exc
        if not isinstance(config, dict) or config.get("peft_type", "LORA") != "LORA":
            raise ConfigError(f"{path / CONFIG}: not a LoRA adapter (peft_type LORA)")
        for key, bad in (
            ("use_dora", True),
            ("fan_in_fan_out", True),
        ):
            if config.get(key) is bad:
                raise ConfigError(f"{path / CONFIG}: `{key}: {bad}` is not supported")
        if config.get("bias", "none") != "none" or config.get("modules_to_save"):
            raise ConfigError(
                f"{path / CONFIG}: adapters with trained biases or modules_to_save are not "
                "supported"
            )
        pairs: dict[str, dict[str, tuple[int, ...]]] = {}
        for key, shape in shapes.items():
            m = _KEY.match(key)
            if m is None:
                raise ConfigError(f"{path / WEIGHTS}: tensor {key!r} is not a LoRA A or B matrix")
            pairs.setdefault(m["module"], {})[m["ab"]] = shape
        if not pairs:
            raise ConfigError(f"{path / WEIGHTS}: no LoRA weights")
        alpha = float(config.get("lora_alpha") or config.get("r") or 8)
        rslora = bool(config.get("use_rslora"))
        scales = {}
        for module, ab in pairs.items():
            dims = self.linears.get(module)
            if dims is None:
                raise ConfigError(
                    f"{path}: the adapter targets {module!r}, which is not a linear layer of "
                    "the base model's decoder"
                )
            a, b = ab.get("A"), ab.get("B")
            if a is None or b is None or len(a) != 2 or len(b) != 2:
                raise ConfigError(f"{path}: {module!r} needs both lora_A and lora_B matrices")
            rank, (fan_in, fan_out) = a[0], dims
            if a != (rank, fan_in) or b != (fan_out, rank) or not 1 <= rank <= MAX_RANK:
                raise ConfigError(
                    f"{path}: {module!r} has A {list(a)} and B {list(b)}; the base needs "
                    f"[rank, {fan_in}] and [{fan_out}, rank] with rank 1 to {MAX_RANK}"
                )
            a_value = float(_pattern_value(config.get("alpha_pattern") or {}, module, alpha))
            scales[module] = a_value / math.sqrt(rank) if rslora else a_value / rank
        return _Plan(path, scales)

    # -- loading ----------------------------------------------------------------

    def get(self, name: str) -> LoadedAdapter:
        """The adapter `name`, loaded (read from disk when not in memory: blocking I/O).

        `Unavailable` when it is not registered or its files cannot be read any more."""
        found = self.peek(name)
        if found is not None:
            return found
        with self._loading:
            found = self.peek(name)
            if found is not None:
                return found
            with self._lock:
                plan = self._plans.get(name)
            if plan is None:
                raise Unavailable(f"the adapter of model {name!r} is not served here")
            adapter = self._load(name, plan)
            with self._lock:
                if self._plans.get(name) is plan:
                    self._remember(adapter)
            return adapter

    def peek(self, name: str) -> LoadedAdapter | None:
        """The adapter when it is in memory (no I/O), marked as just used."""
        with self._lock:
            adapter = self._cache.get(name)
            if adapter is not None:
                self._cache.move_to_end(name)
                return adapter
            adapter = self._live.get(name)  # dropped from the cache, still running
            if adapter is not None and name in self._plans:
                self._remember(adapter)
            return adapter

    def _remember(self, adapter: LoadedAdapter) -> None:
        """Into the cache as the most recent; the least recent beyond its size leave."""
        self._cache[adapter.name] = adapter
        self._cache.move_to_end(adapter.name)
        self._live[adapter.name] = adapter
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _load(self, name: str, plan: _Plan) -> LoadedAdapter:
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(plan.path / WEIGHTS))
        except (OSError, ValueError) as exc:
            raise Unavailable(f"the adapter of model {name!r} cannot be read") from exc
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            m = _KEY.match(key)
            if m is not None:
                pairs.setdefault(m["module"], {})[m["ab"]] = value
        if set(pairs) != set(plan.scales):
            raise Unavailable(f"the adapter of model {name!r} changed on disk")
        modules = {}
        for module, scale in plan.scales.items():
            a = pairs[module]["A"].to(self.device, torch.float32).contiguous()
            b = pairs[module]["B"].to(self.device, torch.float32).contiguous()
            modules[module] = LoraWeights(a, b, scale)
        self.loads += 1
        return LoadedAdapter(name, modules)


class LoraStack:
    """Some adapters side by side, per projection: their A matrices stacked into one
    [sum of ranks, in], their B into one [out, sum of ranks] (built once per projection,
    reused by every step over the same adapters)."""

    def __init__(self, adapters: Sequence[LoadedAdapter]) -> None:
        self.adapters = tuple(adapters)
        self.index = {id(a): i for i, a in enumerate(self.adapters)}
        self._modules: dict[str, _Stacked | None] = {}

    def module(self, name: str) -> _Stacked | None:
        """The stacked weights of projection `name`; None when no adapter targets it."""
        if name in self._modules:
            return self._modules[name]
        blocks: list[tuple[int, int, float] | None] = []
        a_parts, b_parts, at = [], [], 0
        for adapter in self.adapters:
            w = adapter.modules.get(name)
            if w is None:
                blocks.append(None)
                continue
            rank = w.a.shape[0]
            blocks.append((at, at + rank, w.scale))
            a_parts.append(w.a)
            b_parts.append(w.b)
            at += rank
        stacked = None
        if a_parts:
            stacked = _Stacked(torch.cat(a_parts), torch.cat(b_parts, dim=1), tuple(blocks))
        self._modules[name] = stacked
        return stacked


@dataclass(frozen=True, slots=True, eq=False)
class _Stacked:
    a: torch.Tensor  # [sum of ranks, in]
    b: torch.Tensor  # [out, sum of ranks]
    blocks: tuple[tuple[int, int, float] | None, ...]  # per adapter: its columns and scale


class LoraBatch:
    """`LoraStep` of one forward: row i of the batch has adapter `rows[i]` (None: the base).

    Per projection, two matrix products over the whole batch with the step's adapters
    stacked (`LoraStack`): `h = x A^T` gives every row every adapter's low-rank
    activations; a mask keeps, on each row, only its own adapter's columns, times that
    adapter's scale (zero on a base row); `y += h B^T`. A few kernels per projection,
    whatever the mix of adapters; the extra work (each row through every adapter's A) is
    a few percent of the projection's own. Computed in float32 (PEFT upcasts adapters of a
    bfloat16 or float16 base too), added into `y` in its dtype."""

    def __init__(
        self,
        rows: Sequence[LoadedAdapter | None],
        device: torch.device,
        stack: LoraStack | None = None,
    ) -> None:
        if stack is None:
            stack = LoraStack(list({id(a): a for a in rows if a is not None}.values()))
        self.stack = stack
        self.device = device
        self.rows = [None if a is None else stack.index[id(a)] for a in rows]
        self._masks: dict[tuple[tuple[int, int, float] | None, ...], torch.Tensor] = {}

    @classmethod
    def of(
        cls,
        rows: Sequence[LoadedAdapter | None],
        device: torch.device,
        stack: LoraStack | None = None,
    ) -> LoraBatch | None:
        """The step of `rows`; None when every row is the base's."""
        if all(r is None for r in rows):
            return None
        return cls(rows, device, stack)

    def adapters(self) -> Iterator[LoadedAdapter]:
        return iter(self.stack.adapters)

    def _mask(self, stacked: _Stacked) -> torch.Tensor:
        mask = self._masks.get(stacked.blocks)
        if mask is None:
            mask = torch.zeros(len(self.rows), 1, stacked.a.shape[0], dtype=stacked.a.dtype)
            for i, j in enumerate(self.rows):
                block = None if j is None else stacked.blocks[j]
                if block is not None:
                    mask[i, 0, block[0] : block[1]] = block[2]
            mask = self._masks[stacked.blocks] = mask.to(self.device)
        return mask

    def apply(self, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        stacked = self.stack.module(name)
        if stacked is None:
            return y
        mask = self._mask(stacked)
        if self.device.type != "cpu":
            return self._add(stacked, mask, x, y)
        # On a CPU these products are too small to gain from several threads, and each
        # threaded kernel waits for its slowest thread: on a busy machine that wait is most
        # of the time they take. They run on this thread alone.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._add(stacked, mask, x, y)
        finally:
            torch.set_num_threads(threads)

    @staticmethod
    def _add(
        stacked: _Stacked, mask: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        h = torch.nn.functional.linear(x.to(stacked.a.dtype), stacked.a)
        h = h.view(h.shape[0], -1, h.shape[-1]).mul_(mask).view(h.shape)
        y += torch.nn.functional.linear(h, stacked.b)
        return y


class LoraHooks:
    """Forward hooks on a model's linear layers that call the current `LoraStep`.

    Hooks are added on the engine's thread (`ensure`), for the modules the adapters in use
    target, and stay; a hook without a current step returns at once."""

    def __init__(self, model: Any) -> None:
        self._modules: dict[str, torch.nn.Module] = {
            name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        }
        self._hooked: set[str] = set()
        self.current: LoraStep | None = None

    def ensure(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self._hooked:
                self._modules[name].register_forward_hook(self._hook(name))
                self._hooked.add(name)

    def _hook(self, name: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            step = self.current
            if step is None:
                return None
            return step.apply(name, args[0], output)

        return hook

    @contextmanager
    def active(self, step: LoraStep | None) -> Iterator[None]:
        """Forwards inside the block apply `step` (nothing when None)."""
        self.current = step
        try:
            yield
        finally:
            self.current = None
