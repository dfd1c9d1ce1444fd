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

`FastDecoder.supports` says which models it handles (the others keep the Hugging Face
forward). `LoraStep` is the per-step hook of adapter batching: when a step runs with
one, every projection's output `y` of input `x` becomes `lora.apply(name, x, y)`, where
`name` is the Hugging Face module name (`model.layers.3.self_attn.q_proj`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cumulo.engine.kvcache import SlotCache
from cumulo.engine.lora import LoraStep

__all__ = ["FastDecoder"]

_MODEL_TYPES = frozenset({"llama", "qwen2", "mistral"})
_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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
                getattr(
                    layer.self_attn
                    if p.endswith(("q_proj", "k_proj", "v_proj", "o_proj"))
                    else layer.mlp,
                    p,
                )
                for p in _PROJECTIONS
            ]
            plain = all(type(m) is torch.nn.Linear for m in modules)
            return plain and hasattr(decoder, "rotary_emb") and hasattr(decoder, "norm")
        except (AttributeError, IndexError):
            return False

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
        hi = lo + batch
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
            qkv = F.linear(h, layer.qkv, layer.qkv_bias)
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
            o = F.linear(o_in, layer.o, layer.o_bias)
            if lora is not None:
                o = lora.apply(f"{layer.prefix}.self_attn.o_proj", o_in, o)
            x = x + o
            h = _rms_norm(x, layer.post_norm, self.eps)
            gu = F.linear(h, layer.gate_up, layer.gate_up_bias)
            inter = gu.shape[-1] // 2
            gate, up = gu[:, :inter], gu[:, inter:]
            if lora is not None:
                mlp = f"{layer.prefix}.mlp"
                gate = lora.apply(f"{mlp}.gate_proj", h, gate)
                up = lora.apply(f"{mlp}.up_proj", h, up)
            act = F.silu(gate) * up
            down = F.linear(act, layer.down, layer.down_bias)
            if lora is not None:
                down = lora.apply(f"{layer.prefix}.mlp.down_proj", act, down)
            x = x + down
        return _rms_norm(x, self.final_norm, self.eps)
