"""cumulo's own decode forward for Llama-shaped models (Llama, Qwen2, Mistral).

A decode step feeds one token per running sequence through every layer. Through the
Hugging Face modules such a step is mostly Python and operator dispatch, not reading the
weights: dozens of small operators per layer, each with its own checks and allocations.
`FastDecoder` computes the same thing with fewer operators:

- the q, k and v projections run as one matrix product, gate and up as one: their
  weights are concatenated once, and the model's own modules are given views into the
  concatenated tensors, so memory does not grow and the Hugging Face forward (used for
  prefill, and for every model this path does not support) reads the same weights;
- the rotary embedding turns q and k together;
- the new keys and values are written straight into the `SlotCache` buffers;
- the query heads that share a KV head attend as one group (scaled dot-product
  attention without repeating the keys), with no mask when a single sequence runs.

In bfloat16 on a CPU with cumulo's kernels (`engine/cpu.py`) a step without adapters
runs every operation of a layer as one kernel call on buffers allocated once per batch
size (norms, projections streaming each weight row once, the rotary embedding with the
cache write, attention over the cache, the gated activation, the residual adds), and
the projections of a step with adapters and the output head use the same kernels. So
do the projections of the Hugging Face forward (prefill), up to the number of rows
where PyTorch's product is as fast (`Kernels.max_rows`: any number on CPUs without
AVX-512 BF16, where PyTorch's bf16 product is several times slower than the kernels').

`FastDecoder.supports` says which models it handles (the others keep the Hugging Face
forward). `LoraStep` is the per-step hook of adapter batching: when a step runs with
one, every projection's output `y` of input `x` becomes `lora.apply(name, x, y)`, where
`name` is the Hugging Face module name (`model.layers.3.self_attn.q_proj`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from cumulo.engine.cpu import Kernels, kernels
from cumulo.engine.kvcache import SlotCache
from cumulo.engine.lora import LoraStep

__all__ = ["FastDecoder"]

_MODEL_TYPES = frozenset({"llama", "qwen2", "mistral"})
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_ATTENTION = frozenset(_PROJECTIONS[:4])


@dataclass(slots=True)
class _Layer:
    prefix: str  # the layer's Hugging Face module name, e.g. "model.layers.3"
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: torch.Tensor  # [q_out + 2 * kv_out, hidden]
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


@dataclass(slots=True)
class _Buffers:
    """The activations of a kernel step over `batch` rows, reused step after step."""

    x: torch.Tensor  # the residual stream [B, hidden]
    h: torch.Tensor  # a normed copy of it
    qkv: torch.Tensor
    attn: torch.Tensor  # [B, heads * dim]
    gate_up: torch.Tensor
    act: torch.Tensor
    out: torch.Tensor  # the final normed hidden states


def _fuse(modules: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Concatenate the linear layers' weights (and biases) along their outputs; give each
    module a view into the result, so the weights exist once."""
    weight = torch.cat([m.weight.detach() for m in modules])
    biases = [m.bias for m in modules]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat(
            [
                b.detach() if b is not None else torch.zeros_like(m.weight[:, 0])
                for m, b in zip(modules, biases, strict=True)
            ]
        )
    start = 0
    for m in modules:
        n = m.weight.shape[0]
        m.weight.data = weight[start : start + n]
        if m.bias is not None and bias is not None:
            m.bias.data = bias[start : start + n]
        start += n
    return weight, bias


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As Llama's and Qwen2's RMSNorm: normalized in float32, scaled in the model's dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


class FastDecoder:
    """The decode forward of one Llama-shaped model over its engine's `SlotCache`."""

    def __init__(self, model: Any, cache: SlotCache) -> None:
        config = model.config
        decoder = model.get_decoder()
        self.cache = cache
        self.embed = decoder.embed_tokens.weight
        self.rotary = decoder.rotary_emb
        self.final_norm = decoder.norm.weight
        self.eps = float(config.rms_norm_eps)
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(getattr(config, "num_key_value_heads", None) or self.heads)
        self.head_dim = cache.layout.head_dim
        self.scale = self.head_dim**-0.5
        self.layers: list[_Layer] = []
        head = model.get_output_embeddings()
        self.head_weight, self.head_bias = head.weight, getattr(head, "bias", None)
        for i, layer in enumerate(decoder.layers):
            attn, mlp = layer.self_attn, layer.mlp
            qkv, qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
            gate_up, gate_up_bias = _fuse([mlp.gate_proj, mlp.up_proj])
            self.layers.append(
                _Layer(
                    prefix=f"model.layers.{i}",
                    input_norm=layer.input_layernorm.weight,
                    post_norm=layer.post_attention_layernorm.weight,
                    qkv=qkv,
                    qkv_bias=qkv_bias,
                    o=attn.o_proj.weight,
                    o_bias=attn.o_proj.bias,
                    gate_up=gate_up,
                    gate_up_bias=gate_up_bias,
                    down=mlp.down_proj.weight,
                    down_bias=mlp.down_proj.bias,
                )
            )
        self.kernels = self._kernels(model)
        if self.kernels is not None:
            self._route_projections(decoder)
        self._buffers: dict[int, _Buffers] = {}
        self._layer_pointers: list[_LayerPointers] | None = None
        self._rotary: tuple[torch.Tensor, torch.Tensor] | None = None
        # With the kernels: compute each row of a batch exactly as alone (the deterministic
        # mode), at some cost in speed when several rows run.
        self.exact = False

    def _kernels(self, model: Any) -> Kernels | None:
        """cumulo's CPU kernels, when they compute this model (bf16 weights on the CPU)."""
        weights = [self.embed, self.head_weight, self.final_norm]
        for layer in self.layers:
            weights += [layer.qkv, layer.o, layer.gate_up, layer.down]
        fits = (
            all(w.dtype == torch.bfloat16 and w.device.type == "cpu" for w in weights)
            and all(w.is_contiguous() for w in weights)
            and self.cache.layout.dtype == torch.bfloat16
            and self.head_dim % 2 == 0
            and self.head_dim <= 512
        )
        return kernels() if fits else None

    def _route_projections(self, decoder: Any) -> None:
        """Compute the Hugging Face forward's projections (a prefill's, a step's with
        adapters on that path) with the kernels too, where they beat PyTorch's product."""
        for layer in decoder.layers:
            for name in _PROJECTIONS:
                module = getattr(layer.self_attn if name in _ATTENTION else layer.mlp, name)
                module.forward = functools.partial(self._project, module)

    def _project(self, module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        weight, bias = module.weight, module.bias
        inner = x.shape[-1] if x.dim() else 0
        rows = x.numel() // inner if inner else 0
        k = self._kernels_for(rows)
        if (
            k is None
            or rows == 0
            or torch.is_grad_enabled()
            or x.dtype != torch.bfloat16
            or x.device.type != "cpu"
            or weight.dtype != torch.bfloat16
            or not weight.is_contiguous()
            or (bias is not None and (bias.dtype != torch.bfloat16 or not bias.is_contiguous()))
        ):
            return F.linear(x, weight, bias)
        y = self._linear(k, x.reshape(rows, inner).contiguous(), weight, bias)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether `model` has the shape this forward computes (else: the HF forward)."""
        config = model.config
        if getattr(config, "model_type", None) not in _MODEL_TYPES:
            return False
        if getattr(config, "hidden_act", "silu") != "silu":
            return False
        if getattr(config, "pretraining_tp", 1) not in (1, None):
            return False
        try:
            decoder = model.get_decoder()
            layer = decoder.layers[0]
            modules = [
                getattr(layer.self_attn if p in _ATTENTION else layer.mlp, p) for p in _PROJECTIONS
            ]
            plain = all(type(m) is torch.nn.Linear for m in modules)
            return plain and hasattr(decoder, "rotary_emb") and hasattr(decoder, "norm")
        except (AttributeError, IndexError):
            return False

    def _kernels_for(self, rows: int) -> Kernels | None:
        """The kernels for a product over `rows` rows (None: PyTorch's is faster there)."""
        k = self.kernels
        return k if k is not None and (k.max_rows is None or rows <= k.max_rows) else None

    def head(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """The logits of final hidden states [B, hidden] with the kernels; None without."""
        k = self._kernels_for(hidden.shape[0])
        if k is None:
            return None
        return self._linear(k, hidden.contiguous(), self.head_weight, self.head_bias)

    def argmax(self, logits: torch.Tensor) -> list[int] | None:
        """Each row's greedy token, by the kernels (bf16 logits on the CPU); None without."""
        k = self.kernels
        if k is None or logits.dtype != torch.bfloat16 or logits.device.type != "cpu":
            return None
        logits = logits.contiguous()
        out = torch.empty(logits.shape[0], dtype=torch.int64)
        k.argmax(logits.data_ptr(), out.data_ptr(), logits.shape[0], logits.shape[1],
                 torch.get_num_threads())  # fmt: skip
        tokens: list[int] = out.tolist()
        return tokens

    def _linear(
        self, k: Kernels, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        rows, (n, inner) = x.shape[0], weight.shape
        y = torch.empty(rows, n, dtype=x.dtype)
        bias_at = None if bias is None else bias.data_ptr()
        threads = torch.get_num_threads()
        k.linear(x.data_ptr(), weight.data_ptr(), bias_at, None, y.data_ptr(), rows, n, inner,
                 self.exact, threads)  # fmt: skip
        return y

    def batch_invariant(self, rows: int, adapters: bool) -> bool:
        """Whether a decode step over `rows` rows computes each exactly as alone: on the
        kernels in `exact` mode, without adapters."""
        return self.exact and not adapters and self._kernels_for(rows) is not None

    def forward(
        self,
        lo: int,
        ids: torch.Tensor,
        pos: torch.Tensor,
        write_cols: torch.Tensor,
        read: int,
        lora: LoraStep | None = None,
    ) -> torch.Tensor:
        """One token for each of rows `lo..lo+B-1`: `ids`, `pos`, `write_cols` are [B]
        (a padding row writes to the scratch column); attention reads columns
        `0..read-1`, each row up to its own position. Returns the final normed hidden
        states [B, hidden]."""
        batch = ids.shape[0]
        kern = self._kernels_for(batch)
        if kern is not None and lora is None:
            return self._forward_kernels(kern, lo, ids, pos, write_cols)
        hi = lo + batch

        def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            if kern is None:
                return F.linear(x, w, b)
            return self._linear(kern, x.contiguous(), w, b)

        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        q_out, kv_out = heads * dim, kv_heads * dim
        group = heads // kv_heads
        x = F.embedding(ids, self.embed)  # [B, hidden]
        cos, sin = self.rotary(x, pos.unsqueeze(0))  # [1, B, dim] each
        cos, sin = cos.view(batch, 1, dim), sin.view(batch, 1, dim)
        rows = torch.arange(lo, hi, device=ids.device)
        mask = None
        if batch > 1:
            keys_at = torch.arange(read, device=ids.device)
            mask = (keys_at.view(1, read) <= pos.view(batch, 1)).view(batch, 1, 1, read)
        half = dim // 2
        for i, layer in enumerate(self.layers):
            h = _rms_norm(x, layer.input_norm, self.eps)
            qkv = linear(h, layer.qkv, layer.qkv_bias)
            if lora is None:
                qk = qkv[:, : q_out + kv_out].view(batch, heads + kv_heads, dim)
                v = qkv[:, q_out + kv_out :]
            else:
                attn = f"{layer.prefix}.self_attn"
                q = lora.apply(f"{attn}.q_proj", h, qkv[:, :q_out])
                k = lora.apply(f"{attn}.k_proj", h, qkv[:, q_out : q_out + kv_out])
                v = lora.apply(f"{attn}.v_proj", h, qkv[:, q_out + kv_out :])
                qk = torch.cat([q, k], dim=-1).view(batch, heads + kv_heads, dim)
            rotated = torch.cat([-qk[..., half:], qk[..., :half]], dim=-1)
            qk = qk * cos + rotated * sin
            keys, values = self.cache.keys[i], self.cache.values[i]
            keys[rows, :, write_cols] = qk[:, heads:]
            values[rows, :, write_cols] = v.view(batch, kv_heads, dim)
            # The `group` query heads of one KV head attend as `group` queries of it.
            q = qk[:, :heads].reshape(batch, kv_heads, group, dim)
            attn_out = F.scaled_dot_product_attention(
                q,
                keys[lo:hi, :, :read],
                values[lo:hi, :, :read],
                attn_mask=mask,
                scale=self.scale,
            )
            o_in = attn_out.reshape(batch, q_out)
            o = linear(o_in, layer.o, layer.o_bias)
            if lora is not None:
                o = lora.apply(f"{layer.prefix}.self_attn.o_proj", o_in, o)
            x = x + o
            h = _rms_norm(x, layer.post_norm, self.eps)
            gu = linear(h, layer.gate_up, layer.gate_up_bias)
            inter = gu.shape[-1] // 2
            gate, up = gu[:, :inter], gu[:, inter:]
            if lora is not None:
                mlp = f"{layer.prefix}.mlp"
                gate = lora.apply(f"{mlp}.gate_proj", h, gate)
                up = lora.apply(f"{mlp}.up_proj", h, up)
            act = F.silu(gate) * up
            down = linear(act, layer.down, layer.down_bias)
            if lora is not None:
                down = lora.apply(f"{layer.prefix}.mlp.down_proj", act, down)
            x = x + down
        return _rms_norm(x, self.final_norm, self.eps)

    def _rotary_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every cache position [cols, dim], from the model's own rotary
        embedding (elementwise per position: the values it gives a step)."""
        if self._rotary is None:
            cols = self.cache.keys[0].shape[2]
            like = self.embed[:1]
            cos, sin = self.rotary(like, torch.arange(cols).unsqueeze(0))
            self._rotary = (cos[0].contiguous(), sin[0].contiguous())
        return self._rotary

    def _pointers(self) -> list[_LayerPointers]:
        """Each layer's addresses, taken once (the weights and the cache do not move)."""
        if self._layer_pointers is None:
            cache = self.cache
            self._layer_pointers = [
                _LayerPointers(
                    layer.input_norm.data_ptr(),
                    layer.post_norm.data_ptr(),
                    layer.qkv.data_ptr(),
                    _ptr(layer.qkv_bias),
                    layer.o.data_ptr(),
                    _ptr(layer.o_bias),
                    layer.gate_up.data_ptr(),
                    _ptr(layer.gate_up_bias),
                    layer.down.data_ptr(),
                    _ptr(layer.down_bias),
                    cache.keys[i].data_ptr(),
                    cache.values[i].data_ptr(),
                )
                for i, layer in enumerate(self.layers)
            ]
        return self._layer_pointers

    def _buffers_for(self, batch: int) -> _Buffers:
        found = self._buffers.get(batch)
        if found is None:
            hidden = self.embed.shape[1]
            width = (self.heads + 2 * self.kv_heads) * self.head_dim
            inter = self.layers[0].gate_up.shape[0] // 2

            def new(n: int) -> torch.Tensor:
                return torch.empty(batch, n, dtype=torch.bfloat16)

            found = _Buffers(
                new(hidden),
                new(hidden),
                new(width),
                new(self.heads * self.head_dim),
                new(2 * inter),
                new(inter),
                new(hidden),
            )
            self._buffers[batch] = found
        return found

    def _forward_kernels(
        self, k: Kernels, lo: int, ids: torch.Tensor, pos: torch.Tensor, write_cols: torch.Tensor
    ) -> torch.Tensor:
        """`forward` without adapters, each operation one kernel call (see the module doc).
        Returns a buffer the next step overwrites."""
        batch = ids.shape[0]
        b = self._buffers_for(batch)
        threads = torch.get_num_threads()
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        hidden, q_out = b.x.shape[1], heads * dim
        width, inter = b.qkv.shape[1], b.act.shape[1]
        cols = self.cache.keys[0].shape[2]
        torch.index_select(self.embed, 0, ids, out=b.x)
        cos_table, sin_table = self._rotary_table()
        cos, sin = cos_table.index_select(0, pos), sin_table.index_select(0, pos)
        writes = write_cols.to(torch.int64).contiguous()
        reads = (pos.to(torch.int64) + 1).contiguous()
        x, h, qkv, attn = b.x.data_ptr(), b.h.data_ptr(), b.qkv.data_ptr(), b.attn.data_ptr()
        gu, act = b.gate_up.data_ptr(), b.act.data_ptr()
        cos_at, sin_at, writes_at, reads_at = (
            cos.data_ptr(),
            sin.data_ptr(),
            writes.data_ptr(),
            reads.data_ptr(),
        )
        eps, exact = self.eps, self.exact
        for w in self._pointers():
            k.rms_norm(x, w.input_norm, h, batch, hidden, eps, threads)
            k.linear(h, w.qkv, w.qkv_bias, None, qkv, batch, width, hidden, exact, threads)
            k.rope_write(qkv, cos_at, sin_at, w.keys, w.values, writes_at, lo, batch, heads,
                         kv_heads, dim, cols)  # fmt: skip
            k.attention(qkv, width, w.keys, w.values, attn, reads_at, lo, batch, heads, kv_heads,
                        dim, cols, self.scale, threads)  # fmt: skip
            k.linear(attn, w.o, w.o_bias, x, x, batch, hidden, q_out, exact, threads)
            k.rms_norm(x, w.post_norm, h, batch, hidden, eps, threads)
            k.linear(h, w.gate_up, w.gate_up_bias, None, gu, batch, 2 * inter, hidden, exact,
                     threads)  # fmt: skip
            k.silu_mul(gu, act, batch, inter, threads)
            k.linear(act, w.down, w.down_bias, x, x, batch, hidden, inter, exact, threads)
        k.rms_norm(x, self.final_norm.data_ptr(), b.out.data_ptr(), batch, hidden, eps, threads)
        return b.out


def _ptr(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _LayerPointers(NamedTuple):
    """The addresses of one layer's weights and cache, for the kernels' calls."""

    input_norm: int
    post_norm: int
    qkv: int
    qkv_bias: int | None
    o: int
    o_bias: int | None
    gate_up: int
    gate_up_bias: int | None
    down: int
    down_bias: int | None
    keys: int
    values: int
