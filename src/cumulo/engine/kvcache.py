"""The KV cache of the batching engine: one fixed buffer per layer, one row per slot.

    keys[layer], values[layer] : [slots, kv_heads, slot_len + 1, head_dim]

It is allocated once when the engine starts, so its size is the memory budget
(`KVLayout.nbytes`). The extra column at `slot_len` is a scratch position: the
padding tokens of a batched forward write there and nothing ever reads it.

`SlotCache` is handed to a Hugging Face model as its cache (`cache`, `past_key_values`
before transformers 5.2x). Attention layers only call `update(keys, values, layer_idx)` and attend over what it
returns; the engine says beforehand which rows take part, where each query
token's key goes, and how many key columns to read (`prepare`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, slots=True)
class KVLayout:
    """The shape of a model's KV cache for `slots` sequences of up to `slot_len` tokens."""

    layers: int
    kv_heads: int
    head_dim: int
    slots: int
    slot_len: int
    dtype: torch.dtype

    @classmethod
    def for_model(cls, config: Any, slots: int, slot_len: int, dtype: torch.dtype) -> KVLayout:
        heads = int(config.num_attention_heads)
        head_dim = getattr(config, "head_dim", None) or int(config.hidden_size) // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(
            int(config.num_hidden_layers), int(kv_heads), int(head_dim), slots, slot_len, dtype
        )

    @property
    def bytes_per_token(self) -> int:
        itemsize = torch.empty(0, dtype=self.dtype).element_size()
        return 2 * self.layers * self.kv_heads * self.head_dim * itemsize

    @property
    def nbytes(self) -> int:
        """Bytes the whole cache takes (scratch columns included)."""
        return self.bytes_per_token * self.slots * (self.slot_len + 1)


class SlotCache:
    """A duck-typed `transformers` cache over static per-slot buffers (see the module doc)."""

    def __init__(self, layout: KVLayout, device: torch.device) -> None:
        self.layout = layout
        shape = (layout.slots, layout.kv_heads, layout.slot_len + 1, layout.head_dim)
        self.keys = [
            torch.zeros(shape, dtype=layout.dtype, device=device) for _ in range(layout.layers)
        ]
        self.values = [
            torch.zeros(shape, dtype=layout.dtype, device=device) for _ in range(layout.layers)
        ]
        self._lo = self._hi = self._read = 0
        self._rows = self._cols = torch.zeros((0, 0), dtype=torch.long, device=device)

    @property
    def scratch(self) -> int:
        """The column padding tokens write to."""
        return self.layout.slot_len

    def prepare(self, lo: int, hi: int, write_cols: torch.Tensor, read: int) -> None:
        """The next forward runs rows `lo..hi-1`; query token (b, q) writes its key and value
        at column `write_cols[b, q]`; attention reads columns `0..read-1`."""
        batch, queries = write_cols.shape
        self._lo, self._hi, self._read = lo, hi, read
        rows = torch.arange(lo, hi, device=write_cols.device)
        self._rows = rows.unsqueeze(1).expand(batch, queries)
        self._cols = write_cols

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        cache_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new keys/values ([batch, kv_heads, queries, head_dim]); return the
        rows' keys and values to attend over. (What else the model passes, as
        `cache_kwargs` before transformers 5.2x and `kwargs` since, is not needed.)"""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        keys[self._rows, :, self._cols] = key_states.transpose(1, 2)
        values[self._rows, :, self._cols] = value_states.transpose(1, 2)
        lo, hi, read = self._lo, self._hi, self._read
        return keys[lo:hi, :, :read], values[lo:hi, :, :read]

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst`."""
        for keys, values in zip(self.keys, self.values, strict=True):
            keys[dst, :, :length] = keys[src, :, :length]
            values[dst, :, :length] = values[src, :, :length]

    # What some model code probes on a cache object.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0

    @property
    def is_compileable(self) -> bool:
        return False
