"""A generation worker: one thread per model, one request at a time.

Requests wait in a FIFO queue. The worker thread runs a manual decode loop
with the KV cache (one forward pass over the prompt, then one per token),
samples each token with the request's settings, and posts text pieces to the
requesting event loop with `call_soon_threadsafe`. The async side reads them
from an `asyncio.Queue`; when it stops reading (the generator is closed or
its task cancelled) it sets the request's cancel flag, and the worker drops
the request at the next token and moves on to the next one.

This is the simple engine: requests are not batched together.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import torch

from cumulo.engine.detok import IncrementalText
from cumulo.engine.loader import CausalLM
from cumulo.engine.sampling import Sampler, SamplingConfig
from cumulo.errors import CumuloError, Unavailable, UpstreamError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """What to generate for one request, already validated against the model."""

    max_new_tokens: int
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()


@dataclass(slots=True)
class TextPiece:
    """New text, in order; never part of a stop string, never a partial character."""

    text: str


@dataclass(slots=True)
class Finished:
    """The last event of a request, with its exact token counts.

    `completion_tokens` counts every token sampled, the end-of-sequence token
    and the tokens of a stop string included.
    """

    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int


GenerationEvent: TypeAlias = TextPiece | Finished
_Posted: TypeAlias = GenerationEvent | BaseException


@dataclass(eq=False, slots=True)
class _Job:
    prompt_ids: list[int]
    params: GenerationParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[_Posted]
    cancelled: threading.Event = field(default_factory=threading.Event)

    def post(self, item: _Posted) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the requester's event loop is closed: nobody is listening
            self.cancelled.set()


def _shutting_down() -> Unavailable:
    return Unavailable("the local model is shutting down")


class GenerationWorker:
    """Serves generation requests for one `CausalLM` on a dedicated thread."""

    def __init__(self, lm: CausalLM, *, name: str = "cumulo-generate") -> None:
        self.lm = lm
        self.generated_tokens = 0  # tokens sampled since start, cancelled requests included
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def generate(
        self, prompt_ids: list[int], params: GenerationParams
    ) -> AsyncGenerator[GenerationEvent, None]:
        """Yield `TextPiece`s then one `Finished`; closing the iterator cancels the request."""
        job = _Job(list(prompt_ids), params, asyncio.get_running_loop(), asyncio.Queue())
        with self._lock:
            if self._closed:
                raise _shutting_down()
            self._jobs.put(job)
        try:
            while True:
                item = await job.events.get()
                if isinstance(item, CumuloError):
                    raise item
                if isinstance(item, BaseException):
                    raise UpstreamError(f"local generation failed: {item}") from item
                yield item
                if isinstance(item, Finished):
                    return
        finally:
            job.cancelled.set()

    def close(self, timeout: float | None = 10.0) -> None:
        """Fail queued requests and the current one (at its next token); end the thread."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.post(_shutting_down())
            self._jobs.put(None)
        self._thread.join(timeout)

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            try:
                self._run(job)
            except Exception as exc:
                logger.exception("generation failed on %s", self.lm.path.name)
                job.post(exc)
        logger.debug("generation worker for %s stopped", self.lm.path.name)

    @torch.inference_mode()
    def _run(self, job: _Job) -> None:
        lm, params = self.lm, job.params
        sampler = Sampler(params.sampling, self._vocab_size(), lm.device)
        text = IncrementalText(lm.tokenizer, params.stop)

        def emit(piece: str) -> None:
            if piece:
                job.post(TextPiece(piece))

        completion = 0
        reason: Literal["stop", "length"] = "length"
        logits, cache = self._forward(torch.tensor([job.prompt_ids], device=lm.device), None)
        while completion < params.max_new_tokens:
            if job.cancelled.is_set():
                return
            if self._closed:
                job.post(_shutting_down())
                return
            token = sampler(logits)
            completion += 1
            self.generated_tokens += 1
            if token in lm.stop_token_ids:
                reason = "stop"
                break
            emit(text.push(token))
            if text.stopped:
                reason = "stop"
                break
            if completion < params.max_new_tokens:
                logits, cache = self._forward(torch.tensor([[token]], device=lm.device), cache)
        emit(text.flush())
        job.post(Finished(reason, len(job.prompt_ids), completion))

    def _forward(self, input_ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
        out = self.lm.model(
            input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        return out.logits[0, -1], out.past_key_values

    def _vocab_size(self) -> int:
        return int(self.lm.model.get_output_embeddings().weight.shape[0])
