"""Generation for async callers: the continuous-batching engine of one model.

`ChatEngine.generate` submits a request to the model's `Scheduler` (one
engine thread per model) and yields its events as the engine thread posts
them with `loop.call_soon_threadsafe` into the request's own `asyncio.Queue`.
When the caller stops reading (the generator is closed or its task
cancelled) the request is cancelled: dropped from the queue at once, or its
slot freed at the next token boundary.

A request may name a LoRA adapter of the model (`adapter`): one registered in the
engine's `adapters` (`engine.lora.AdapterRegistry`), loaded before the request is queued
(from the registry's cache, else read on a worker thread), then batched with every other
request of the model, whatever its adapter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from cumulo import origin
from cumulo.engine.loader import CausalLM
from cumulo.engine.lora import AdapterRegistry, LoadedAdapter
from cumulo.engine.params import (
    Finished,
    GenerationEvent,
    GenerationParams,
    TextPiece,
    TokenLogprobs,
)
from cumulo.engine.scheduler import EngineLimits, Posted, Scheduler, Sequence
from cumulo.engine.stats import EngineStats
from cumulo.errors import CumuloError, UpstreamError

__all__ = [
    "ChatEngine",
    "EngineLimits",
    "Finished",
    "GenerationEvent",
    "GenerationParams",
    "TextPiece",
    "TokenLogprobs",
]


class ChatEngine:
    """Serves generation requests for one `CausalLM`, batched continuously."""

    def __init__(
        self,
        lm: CausalLM,
        limits: EngineLimits | None = None,
        *,
        name: str = "cumulo-engine",
        lora_cache_size: int = 8,
    ) -> None:
        self.lm = lm
        self.adapters = AdapterRegistry(lm.model, lm.device, lora_cache_size)
        self.scheduler = Scheduler(lm, limits or EngineLimits(), name=name)
        # Token ids the model reads: its input embeddings' rows.
        self.vocab_size = int(lm.model.get_input_embeddings().weight.shape[0])

    @property
    def max_context(self) -> int:
        """The most tokens (prompt + reply) one request may use."""
        return self.scheduler.max_context

    @property
    def generated_tokens(self) -> int:
        """Tokens sampled since start, cancelled requests included."""
        return self.scheduler.recent.total_tokens

    def stats(self) -> EngineStats:
        return self.scheduler.stats()

    async def generate(
        self,
        prompt_ids: list[int],
        params: GenerationParams,
        adapter: str | None = None,
        *,
        cache_salt: str | None = None,
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Yield `TextPiece`s (and `TokenLogprobs`, when `params` ask for them) then one
        `Finished`, generated with the LoRA `adapter` (None: the model itself); closing the
        iterator cancels the request. Prompt KV is reused from the prefix cache only among
        requests of the same adapter and `cache_salt`.

        Raises `RateLimited` when the queue is full and `Unavailable` once closing, or when
        the adapter is not registered or cannot be read.
        """
        lora: LoadedAdapter | None = None
        if adapter is not None:
            lora = self.adapters.peek(adapter) or await asyncio.to_thread(
                self.adapters.get, adapter
            )
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Posted] = asyncio.Queue()

        def sink(item: Posted) -> bool:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the requester's event loop is closed: nobody listens
                return False
            return True

        seq = Sequence(
            list(prompt_ids),
            params,
            sink,
            priority=origin.priority(),
            cache_salt=_salt(adapter, cache_salt),
            adapter=adapter,
            lora=lora,
        )
        self.scheduler.submit(seq)
        try:
            while True:
                item = await events.get()
                if isinstance(item, CumuloError):
                    raise item
                if isinstance(item, BaseException):
                    raise UpstreamError(f"local generation failed: {item}") from item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            self.scheduler.cancel(seq)

    def close(self, timeout: float | None = 10.0) -> None:
        """Fail queued and running requests (at their next token); end the thread."""
        self.scheduler.close(timeout)


def _salt(adapter: str | None, cache_salt: str | None) -> str | None:
    """The prefix-cache key of a request: KV computed under one adapter (or the base) is
    never reused under another."""
    if adapter is None:
        return cache_salt
    return f"lora:{adapter}" if cache_salt is None else f"lora:{adapter}\x00{cache_salt}"
