"""Choosing the next token from the model's logits, per request.

Temperature 0 is greedy decoding; any other temperature samples from the
softmax after presence/frequency penalties, top-k and top-p (nucleus)
filtering. Each request owns a `torch.Generator`, so a request `seed` gives
the same tokens regardless of what else the process is doing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class SamplingConfig:
    """Resolved sampling settings (defaults as in the OpenAI API)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Picks tokens for one request; keeps the counts its penalties need."""

    def __init__(self, config: SamplingConfig, vocab_size: int, device: torch.device) -> None:
        self.config = config
        self._generator: torch.Generator | None = None
        if not config.greedy:
            seed = config.seed if config.seed is not None else secrets.randbits(63)
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(seed)
        self._counts: torch.Tensor | None = None
        if config.presence_penalty or config.frequency_penalty:
            self._counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)

    @property
    def plain_greedy(self) -> bool:
        """Greedy without penalties: the token is the argmax of the logits, nothing to keep."""
        return self._generator is None and self._counts is None

    def __call__(self, logits: torch.Tensor) -> int:
        """The next token for the 1-D `logits` of the last position."""
        logits = logits.float()
        cfg = self.config
        if self._counts is not None:
            # Penalties apply to tokens the model itself generated (OpenAI semantics).
            logits = logits - cfg.frequency_penalty * self._counts
            logits = logits - cfg.presence_penalty * (self._counts > 0).float()
        if self._generator is None:
            token = int(torch.argmax(logits).item())
        else:
            token = self._sample(logits / cfg.temperature, self._generator)
        if self._counts is not None:
            self._counts[token] += 1
        return token

    def _sample(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        top_k, top_p = self.config.top_k, self.config.top_p
        if 0 < top_k < logits.numel():
            kth = torch.topk(logits, top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # Drop a token when the tokens ranked above it already reach top_p;
            # the most likely token is always kept.
            drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
            drop[0] = False
            logits = logits.scatter(0, order, sorted_logits.masked_fill(drop, float("-inf")))
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=generator).item())
