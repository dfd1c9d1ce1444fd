"""The prefix cache: KV of prompt blocks kept across requests and copied into new ones.

A prompt is cut into blocks of `block_tokens` tokens. Each full block is named by a
chained hash: blake2b of its parent block's hash and its own token ids, the first block's
parent being the sequence's `cache_salt` (a model or adapter key: KV computed under one
LoRA adapter is never reused for another, or for the base model). Two prompts share a
block's hash exactly when they share every token up to the end of that block.

The cached KV lives in a pool of its own, allocated once, per layer:

    keys[layer], values[layer] : [blocks, kv_heads, block_tokens, head_dim]

so its size (`nbytes`) is the configured budget. When a sequence has written a full prompt
block into its slot, the block is copied into the pool (`store`), unless a block of the
same hash is already there. When a sequence is about to prefill from a block boundary, the
cached blocks that continue its prompt are copied into its slot (`load`) and prefill
resumes after them. At least one prompt token is always left to prefill, for the logits
the first reply token is sampled from.

Blocks are reference-counted: a running sequence holds every block it loaded or stored
until it leaves the engine, and a held block is never evicted. Blocks nobody holds are
evicted least recently used first; a sequence releases its blocks deepest first, so a
chain is evicted from its end and its shared beginning stays longest. When every block is
held, a new block is simply not cached.

`pending` records which running sequence is about to compute a block: a sequence whose
next block another one is computing waits for it (`Prefixes.blocked_by`) instead of
computing the same KV twice, so requests sharing a prefix are prefilled together: the
first computes it, the others copy it.

Everything here runs on the engine thread.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from cumulo.engine.kvcache import KVLayout, SlotCache

__all__ = ["BLOCK_TOKENS", "PrefixCache", "PrefixStats", "SeqBlocks", "block_hashes"]

BLOCK_TOKENS = 16


def block_hashes(tokens: list[int], block_tokens: int, salt: str | None) -> list[bytes]:
    """The chained hash of every full block of `tokens`."""
    parent = hashlib.blake2b((salt or "").encode(), digest_size=16).digest()
    out = []
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        block = array("q", tokens[start : start + block_tokens]).tobytes()
        parent = hashlib.blake2b(parent + block, digest_size=16).digest()
        out.append(parent)
    return out


@dataclass(slots=True)
class SeqBlocks:
    """A running sequence's view of the cache: its blocks' hashes and the blocks it holds."""

    hashes: list[bytes]
    usable: int  # blocks it may load: leaves at least one prompt token to prefill
    reuse: bool  # False: it reads its whole prompt itself (it asked for prompt logprobs)
    held: list[int] = field(default_factory=list)  # pool indices, in chain order
    stored: int = 0  # leading blocks already in the pool (loaded or stored)
    cached_tokens: int = 0  # prompt tokens it copied from the cache


@dataclass(frozen=True, slots=True)
class PrefixStats:
    block_tokens: int
    capacity_tokens: int
    used_tokens: int
    held_tokens: int
    nbytes: int
    hit_tokens: int  # prompt tokens copied from the cache since start
    hits: int  # requests that copied at least one block


class PrefixCache:
    """The prefix cache of one engine (see the module doc)."""

    def __init__(
        self,
        layout: KVLayout,
        device: torch.device,
        capacity_tokens: int,
        block_tokens: int = BLOCK_TOKENS,
    ) -> None:
        if block_tokens < 1:
            raise ValueError("block_tokens must be at least 1")
        self.block_tokens = block_tokens
        self.capacity = max(0, capacity_tokens // block_tokens)
        shape = (self.capacity, layout.kv_heads, block_tokens, layout.head_dim)
        layers = layout.layers if self.capacity else 0
        self.keys = [torch.zeros(shape, dtype=layout.dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=layout.dtype, device=device) for _ in self.keys]
        self.nbytes = layout.bytes_per_token * self.capacity * block_tokens
        self._index: dict[bytes, int] = {}  # hash -> pool index
        self._hash: list[bytes | None] = [None] * self.capacity
        self._refs = [0] * self.capacity
        self._idle: OrderedDict[int, None] = OrderedDict()  # unheld cached blocks, LRU first
        self._empty = list(range(self.capacity - 1, -1, -1))
        self.pending: dict[bytes, Any] = {}  # hash -> the sequence computing it
        self.hit_tokens = 0
        self.hits = 0

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def open(self, prompt: list[int], salt: str | None, reuse: bool) -> SeqBlocks:
        """A new sequence's blocks (hashes only: it holds nothing yet)."""
        hashes = block_hashes(prompt, self.block_tokens, salt) if self.enabled else []
        usable = (len(prompt) - 1) // self.block_tokens if reuse else 0
        return SeqBlocks(hashes, min(usable, len(hashes)), reuse)

    def blocked_by(self, blocks: SeqBlocks, prefilled: int, owner: object) -> object | None:
        """The sequence computing the block `owner` would read next, if another one is."""
        if not blocks.reuse or prefilled % self.block_tokens:
            return None
        i = prefilled // self.block_tokens
        if i >= blocks.usable or blocks.hashes[i] in self._index:
            return None
        other = self.pending.get(blocks.hashes[i])
        return other if other is not None and other is not owner else None

    def load(self, blocks: SeqBlocks, cache: SlotCache, slot: int, prefilled: int) -> int:
        """Copy the cached blocks continuing a prompt read up to `prefilled` (a block
        boundary) into `slot`; hold them. Returns the tokens copied."""
        if not blocks.reuse or prefilled % self.block_tokens or not self.enabled:
            return 0
        first = prefilled // self.block_tokens
        found: list[int] = []
        for h in blocks.hashes[first : blocks.usable]:
            idx = self._index.get(h)
            if idx is None:
                break
            found.append(idx)
        if not found:
            return 0
        b, n = self.block_tokens, len(found)
        rows = torch.tensor(found, device=self.keys[0].device)
        for layer, (pk, pv) in enumerate(zip(self.keys, self.values, strict=True)):
            for dst, pool in ((cache.keys[layer], pk), (cache.values[layer], pv)):
                # pool rows [n, heads, b, dim] -> slot columns [heads, n * b, dim]
                dst[slot, :, prefilled : prefilled + n * b] = (
                    pool[rows].permute(1, 0, 2, 3).reshape(pool.shape[1], n * b, pool.shape[3])
                )
        for idx in found:
            self._hold(idx)
        blocks.held += found
        blocks.stored = first + n
        blocks.cached_tokens += n * b
        self.hit_tokens += n * b
        if blocks.cached_tokens == n * b:
            self.hits += 1
        return n * b

    def claim(self, blocks: SeqBlocks, owner: object, prefilled: int) -> None:
        """Mark the blocks `owner` computes from `prefilled` on as pending (when nobody
        computes them yet and they are not cached)."""
        if not self.enabled or blocks.stored >= len(blocks.hashes):
            return  # nothing left to store (or storing failed): nobody should wait for it
        for h in blocks.hashes[max(prefilled // self.block_tokens, blocks.stored) :]:
            if h not in self._index:
                self.pending.setdefault(h, owner)

    def store(
        self, blocks: SeqBlocks, owner: object, cache: SlotCache, slot: int, prefilled: int
    ) -> None:
        """Copy the full prompt blocks written in `slot` (up to `prefilled`) into the pool."""
        upto = min(prefilled // self.block_tokens, len(blocks.hashes))
        b = self.block_tokens
        while blocks.stored < upto:
            i = blocks.stored
            h = blocks.hashes[i]
            idx = self._index.get(h)
            if idx is None:
                idx = self._allocate()
                if idx is None:  # every block is held: this one and the rest go uncached
                    self._unclaim(blocks, i, owner)
                    blocks.stored = len(blocks.hashes)
                    return
                for layer, (pk, pv) in enumerate(zip(self.keys, self.values, strict=True)):
                    pk[idx] = cache.keys[layer][slot, :, i * b : (i + 1) * b]
                    pv[idx] = cache.values[layer][slot, :, i * b : (i + 1) * b]
                self._index[h] = idx
                self._hash[idx] = h
            if self.pending.get(h) is not None:
                del self.pending[h]
            self._hold(idx)
            blocks.held.append(idx)
            blocks.stored += 1

    def release(self, blocks: SeqBlocks, owner: object) -> None:
        """The sequence left the engine: drop its claims, release its blocks deepest first."""
        self._unclaim(blocks, 0, owner)
        for idx in reversed(blocks.held):
            self._refs[idx] -= 1
            if self._refs[idx] == 0:
                self._idle[idx] = None
        blocks.held.clear()

    def stats(self) -> PrefixStats:
        b = self.block_tokens
        held = sum(1 for r in self._refs if r > 0)
        return PrefixStats(
            b,
            self.capacity * b,
            len(self._index) * b,
            held * b,
            self.nbytes,
            self.hit_tokens,
            self.hits,
        )

    def refs(self, tokens: list[int], salt: str | None = None) -> list[int]:
        """The reference count of each cached block of `tokens` (for inspection)."""
        out = []
        for h in block_hashes(tokens, self.block_tokens, salt):
            idx = self._index.get(h)
            if idx is None:
                break
            out.append(self._refs[idx])
        return out

    def _hold(self, idx: int) -> None:
        self._refs[idx] += 1
        self._idle.pop(idx, None)

    def _allocate(self) -> int | None:
        if self._empty:
            return self._empty.pop()
        if not self._idle:
            return None
        idx, _ = self._idle.popitem(last=False)
        old = self._hash[idx]
        if old is not None:
            del self._index[old]
        self._hash[idx] = None
        return idx

    def _unclaim(self, blocks: SeqBlocks, start: int, owner: object) -> None:
        for h in blocks.hashes[start:]:
            if self.pending.get(h) is owner:
                del self.pending[h]
