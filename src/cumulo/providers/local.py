"""The `local` provider: models served in-process from a directory on disk.

A chat deployment loads a Hugging Face causal LM and serves it with the
continuous-batching engine (`cumulo.engine.generate`); an embedding deployment loads a
sentence-transformers model (`cumulo.engine.embeddings`). torch and
transformers are imported by `start()`, so importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import threading
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cumulo.errors import ConfigError, InvalidRequest, Unavailable, UpstreamError
from cumulo.providers.base import Provider, ProviderContext
from cumulo.types import (
    ChatRequest,
    ChatResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
    LogprobsDelta,
    Message,
    ModelKind,
    SamplingParams,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TokenLogprob,
    Usage,
)

if TYPE_CHECKING:
    from cumulo.config import DeploymentConfig
    from cumulo.engine.completions import PromptRun, TokenStrings
    from cumulo.engine.embeddings import Embedder
    from cumulo.engine.generate import ChatEngine, EngineLimits, Finished, GenerationParams
    from cumulo.engine.stats import EngineStats

_LOADS = threading.Lock()  # see LocalProvider._load


class LocalProvider(Provider):
    """Serves one local model (chat or embedding) in this process.

    Chat requests are rendered with the model's chat template and generated
    by the model's engine thread, batched continuously with the other requests
    (`max_running` at once, `max_queue` waiting; a full queue is `RateLimited`).
    Local models do not call
    tools: `tools` and `tool_choice` are ignored, and the reply is plain
    text. `response_format` is ignored as well. A prompt that does not fit
    the context window (or one KV cache slot, if smaller) is an
    `InvalidRequest`; `max_tokens` beyond the room left is cut to that room
    (finish reason `length`). The reply's `queue_ms` is the time it waited for
    a slot.

    Text completions (`complete`) run each prompt, text or token ids, through the same
    engine, with the log probabilities the engine computes in its batched forwards; a
    text prompt is tokenized as the model's tokenizer does by default (special tokens
    such as a BOS added). The prompt plus `max_tokens` must fit the window; `max_tokens`
    0 reads the prompt only.

    A fine-tuned model is a `LocalAdapter` (`providers.local_adapter`): this class with an
    `adapter`, generating on its base's engine with that LoRA adapter.
    """

    adapter: str | None = None  # the LoRA adapter requests run with (None: the model itself)

    def __init__(self, deployment: DeploymentConfig, kind: ModelKind, ctx: ProviderContext) -> None:
        super().__init__(deployment, kind, ctx)
        self._worker: ChatEngine | None = None
        self._embedder: Embedder | None = None
        self._closed = False
        self._token_strings: TokenStrings | None = None

    @classmethod
    def check(cls, deployment: DeploymentConfig, kind: ModelKind) -> None:
        """The model directory exists (and holds a Hugging Face config, for chat)."""
        from cumulo.engine.hf import resolve_model_path

        try:
            path = resolve_model_path(deployment.path or "")
        except ConfigError as exc:
            raise ConfigError(exc.message, param="path") from exc
        if kind == "chat" and not (path / "config.json").is_file():
            raise ConfigError(
                f"{path} is not a Hugging Face model directory (no config.json)", param="path"
            )

    @property
    def ready(self) -> bool:
        return self._worker is not None or self._embedder is not None

    @property
    def worker(self) -> ChatEngine | None:
        """The engine of a started chat deployment."""
        return self._worker

    async def start(self) -> None:
        from cumulo.engine.hf import resolve_model_path

        if self.ready:
            return
        if self._closed:
            raise Unavailable("this local deployment has been shut down")
        path = resolve_model_path(self.deployment.path or "")
        await asyncio.to_thread(self._load, path)

    def _load(self, path: Path) -> None:
        """Check memory, load the weights, start the engine (on a worker thread).

        One load at a time per process: transformers' lazy imports are not
        thread-safe, and each memory check must see the models loaded before it.
        """
        with _LOADS:
            self._check_memory(path)
            if self.kind == "chat":
                from cumulo.engine.generate import ChatEngine
                from cumulo.engine.loader import load_causal_lm

                dep = self.deployment
                lm = load_causal_lm(path, dep.dtype)
                self._worker = ChatEngine(
                    lm,
                    self._limits(),
                    name=f"cumulo-engine-{path.name}",
                    lora_cache_size=dep.lora_cache_size,
                )
            else:
                from cumulo.engine.embeddings import Embedder

                self._embedder = Embedder.load(path, self.deployment.dtype)

    async def close(self) -> None:
        worker, embedder = self._worker, self._embedder
        self._worker = self._embedder = None
        self._closed = True
        if worker is not None:
            await asyncio.to_thread(worker.close)
        if embedder is not None:
            await asyncio.to_thread(embedder.close)

    def describe(self) -> str:
        if self._worker is not None:
            return f"local chat {self._worker.lm.describe()}"
        if self._embedder is not None:
            return f"local embedding {self._embedder.describe()}"
        return f"local {self.kind} {self.deployment.path} (not loaded)"

    def engine_stats(self) -> EngineStats | None:
        """The chat engine's figures; None before it starts."""
        return None if self._worker is None else self._worker.stats()

    def stats(self) -> dict[str, Any] | None:
        """A chat deployment's batching engine (`engine_stats`); embeddings run none."""
        if self.kind != "chat":
            return None
        stats = self.engine_stats()
        return {"loaded": stats is not None, **(stats.as_dict() if stats is not None else {})}

    async def chat(self, request: ChatRequest) -> ChatResponse:
        parts: list[str] = []
        end: StreamEnd | None = None
        async with aclosing(self.stream(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
                elif isinstance(event, StreamEnd):
                    end = event
        if end is None or end.usage is None:  # the stream contract guarantees both
            raise UpstreamError("the local model stopped before finishing the reply")
        return ChatResponse(
            id=f"chatcmpl-{secrets.token_hex(12)}",
            model=request.model,
            created=int(time.time()),
            message=Message(role="assistant", content="".join(parts)),
            finish_reason=end.finish_reason,
            usage=end.usage,
            queue_ms=end.queue_ms,
        )

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        from cumulo.engine.generate import Finished, TextPiece

        worker = self._chat_worker()
        prompt_ids = self._encode_prompt(worker, request.messages)
        params = self._generation_params(worker, request.params, len(prompt_ids))
        # Closing this generator closes the worker's, which cancels the request.
        async with aclosing(worker.generate(prompt_ids, params, self.adapter)) as events:
            async for event in events:
                if isinstance(event, Finished):
                    reason: FinishReason = event.finish_reason
                    usage = Usage(event.prompt_tokens, event.completion_tokens, event.cached_tokens)
                    yield StreamEnd(finish_reason=reason, usage=usage, queue_ms=event.queue_ms)
                elif isinstance(event, TextPiece):
                    yield TextDelta(event.text)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        if self.kind != "embedding":
            return await super().embed(request)
        if self._embedder is None:
            raise self._not_serving()
        vectors, tokens = await self._embedder.embed(request.inputs, request.dimensions)
        return EmbeddingResponse(model=request.model, vectors=vectors, usage=Usage(tokens, 0))

    def tokenizer(self) -> Any | None:
        worker = self.worker
        return None if worker is None else worker.lm.tokenizer

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        """Every prompt checked first; then at most `max_running` of them in the engine at
        once (more would only wait in its queue, which other callers share); if one
        fails, the others are cancelled."""
        runs = [self._prompt_run(request, i) for i in range(len(request.prompts))]
        room = asyncio.Semaphore(self.deployment.max_running)

        async def run(r: PromptRun) -> CompletionChoice:
            parts: list[str] = []
            tokens: list[TokenLogprob] = []
            async with room, aclosing(r.events()) as events:
                async for piece in events:
                    if isinstance(piece, str):
                        parts.append(piece)
                    else:
                        tokens += piece
            end = self._ended(r)
            logprobs = tokens if request.logprobs is not None else None
            return CompletionChoice("".join(parts), end.finish_reason, logprobs)

        tasks = [asyncio.ensure_future(run(r)) for r in runs]
        try:
            choices = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        ends = [self._ended(r) for r in runs]
        return CompletionResponse(
            id=f"cmpl-{secrets.token_hex(12)}",
            model=request.model,
            created=int(time.time()),
            choices=list(choices),
            usage=Usage(
                sum(e.prompt_tokens for e in ends),
                sum(e.completion_tokens for e in ends),
                sum(e.cached_tokens for e in ends),
            ),
            queue_ms=max(e.queue_ms for e in ends),
        )

    async def stream_complete(
        self, request: CompletionRequest
    ) -> AsyncGenerator[StreamEvent, None]:
        if len(request.prompts) != 1:
            raise InvalidRequest("A streamed completion takes one prompt.", param="prompt")
        r = self._prompt_run(request, 0)
        async with aclosing(r.events()) as events:
            async for piece in events:
                yield TextDelta(piece) if isinstance(piece, str) else LogprobsDelta(piece)
        end = self._ended(r)
        usage = Usage(end.prompt_tokens, end.completion_tokens, end.cached_tokens)
        yield StreamEnd(finish_reason=end.finish_reason, usage=usage, queue_ms=end.queue_ms)

    def _prompt_run(self, request: CompletionRequest, index: int) -> PromptRun:
        """Prompt `index` of `request`, checked against the model, ready to run."""
        from cumulo.engine.completions import PromptRun

        worker = self._completions_worker()
        tokenizer = worker.lm.tokenizer
        prompt = request.prompts[index]
        param = "prompt" if len(request.prompts) == 1 else f"prompt.{index}"
        if isinstance(prompt, str):
            ids: list[int] = tokenizer(prompt)["input_ids"]
            text = prompt
        else:
            vocab = worker.vocab_size
            bad = next((t for t in prompt if not 0 <= t < vocab), None)
            if bad is not None:
                raise InvalidRequest(
                    f"Token id {bad} is not in this model's vocabulary (0 to {vocab - 1}).",
                    param=param,
                )
            ids, text = list(prompt), tokenizer.decode(prompt)
        if not ids:
            raise InvalidRequest("The prompt must not be empty.", param=param)
        max_tokens = request.params.max_tokens
        window = worker.max_context
        if len(ids) > window or (len(ids) == window and max_tokens != 0):
            raise InvalidRequest(
                f"this model's context window is {window} tokens; the prompt uses {len(ids)} "
                "tokens" + ("" if max_tokens == 0 else ", leaving no room for a completion"),
                param=param,
                code="context_length_exceeded",
            )
        params = self._generation_params(worker, request.params, len(ids), allow_zero=True)
        if request.logprobs is not None:
            prompt_logprobs = request.logprobs if request.echo else None
            params = dataclasses.replace(
                params, logprobs=request.logprobs, prompt_logprobs=prompt_logprobs
            )
        echo = text if request.echo else None
        return PromptRun(worker, self._strings(worker), ids, params, echo, self.adapter)

    def _strings(self, worker: ChatEngine) -> TokenStrings:
        from cumulo.engine.completions import TokenStrings

        if self._token_strings is None or self._token_strings.tokenizer is not worker.lm.tokenizer:
            self._token_strings = TokenStrings(worker.lm.tokenizer)
        return self._token_strings

    @staticmethod
    def _ended(run: PromptRun) -> Finished:
        if run.end is None:  # the engine's contract guarantees it
            raise UpstreamError("the local model stopped before finishing the completion")
        return run.end

    def _completions_worker(self) -> ChatEngine:
        if self.kind != "chat":
            raise InvalidRequest(
                "this local deployment serves embeddings, not completions", param="model"
            )
        worker = self.worker
        if worker is None:
            raise self._not_serving()
        return worker

    def _limits(self) -> EngineLimits:
        """The chat engine's limits from the deployment (the memory check counts these)."""
        from cumulo.engine.generate import EngineLimits

        dep = self.deployment
        return EngineLimits(
            dep.max_running,
            dep.max_tokens_in_flight,
            dep.max_queue,
            # deterministic: a prompt is always computed the same way, never partly copied
            prefix_cache_tokens=0 if dep.deterministic else dep.prefix_cache_tokens,
            deterministic=dep.deterministic,
        )

    def _check_memory(self, path: Path) -> None:
        """Refuse, before loading, a model whose weights do not fit in memory."""
        from cumulo.engine.loader import check_memory, kv_cache_bytes, load_dtype

        dep = self.deployment
        dtype = load_dtype(self.kind, dep.dtype)
        kv = 0
        if self.kind == "chat":  # the engine allocates its whole KV cache at start
            limits = self._limits()
            tokens = limits.max_tokens_in_flight + limits.max_running + limits.prefix_cache_tokens
            kv = kv_cache_bytes(path, dtype, tokens)
        check_memory(
            dep.name or path.name, path, dtype, max_memory_gb=dep.max_memory_gb, kv_bytes=kv
        )

    def _chat_worker(self) -> ChatEngine:
        if self.kind != "chat":
            raise InvalidRequest("this local deployment serves embeddings, not chat", param="model")
        worker = self.worker
        if worker is None:
            raise self._not_serving()
        return worker

    def _not_serving(self) -> Unavailable:
        if self._closed:
            return Unavailable("the local model has been shut down")
        return Unavailable("the local model is still loading")

    @staticmethod
    def _encode_prompt(worker: ChatEngine, messages: list[Message]) -> list[int]:
        from jinja2 import TemplateError

        if not messages:
            raise InvalidRequest("messages must not be empty", param="messages")
        tokenizer, window = worker.lm.tokenizer, worker.max_context
        chat = [{"role": m.role, "content": m.content or ""} for m in messages]
        try:
            text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        except (TemplateError, ValueError) as exc:  # the template's raise_exception()
            raise InvalidRequest(
                f"the model's chat template rejected the messages: {exc}", param="messages"
            ) from exc
        ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= window:
            raise InvalidRequest(
                f"this model's context window is {window} tokens; the messages use {len(ids)} "
                "tokens, leaving no room for a reply",
                param="messages",
                code="context_length_exceeded",
            )
        return ids

    @staticmethod
    def _generation_params(
        worker: ChatEngine, p: SamplingParams, prompt_tokens: int, *, allow_zero: bool = False
    ) -> GenerationParams:
        from cumulo.engine.generate import GenerationParams
        from cumulo.engine.sampling import SamplingConfig

        if p.temperature is not None and p.temperature < 0:
            raise InvalidRequest("temperature must be at least 0", param="temperature")
        if p.top_p is not None and not 0 <= p.top_p <= 1:
            raise InvalidRequest("top_p must be between 0 and 1", param="top_p")
        if p.top_k is not None and p.top_k < 0:
            raise InvalidRequest("top_k must be at least 0", param="top_k")
        least = 0 if allow_zero else 1
        if p.max_tokens is not None and p.max_tokens < least:
            raise InvalidRequest(f"max_tokens must be at least {least}", param="max_tokens")
        room = worker.max_context - prompt_tokens
        sampling = SamplingConfig(
            temperature=1.0 if p.temperature is None else float(p.temperature),
            top_p=1.0 if p.top_p is None else float(p.top_p),
            top_k=p.top_k or 0,
            seed=p.seed,
            presence_penalty=p.presence_penalty or 0.0,
            frequency_penalty=p.frequency_penalty or 0.0,
        )
        return GenerationParams(
            max_new_tokens=min(room if p.max_tokens is None else p.max_tokens, room),
            sampling=sampling,
            stop=tuple(p.stop),
        )
