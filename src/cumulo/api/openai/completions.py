"""OpenAI's legacy Completions, and the tokenizer endpoints vLLM serves beside them.

Implements https://platform.openai.com/docs/api-reference/completions (create, streaming)
and vLLM's `POST /tokenize`, `POST /detokenize` and `GET /tokenizer_info`
(vllm/entrypoints/openai/serving_tokenization.py), which lm-evaluation-harness's remote
tokenizer reads. Those three serve local models only; their `model` may be left out when
the caller may use a single local model, or given by the path: every endpoint here is also
served under `/models/{model}/...` (a cumulo extension), so a client that only knows a base
URL talks to one model.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.http import FrontDoor, JSONResponse, sse_headers
from cumulo.api.openai import protocol as wire
from cumulo.errors import InvalidRequest, NotFound
from cumulo.request.gateway import Gateway
from cumulo.request.metering import CallInfo
from cumulo.routing.catalog import Catalog
from cumulo.types import (
    JSON,
    CompletionRequest,
    CompletionResponse,
    LogprobsDelta,
    SamplingParams,
    StreamEnd,
    TextDelta,
    TokenLogprob,
    Usage,
)

MAX_PROMPTS = 256  # prompts in one completion request


def to_completion_request(
    w: wire.CompletionRequestWire, path_model: str | None
) -> CompletionRequest:
    """The canonical request; 400s name the field."""
    if path_model is not None and w.model != path_model:
        raise InvalidRequest(
            f"The body's model '{w.model}' is not the path's model '{path_model}'.", param="model"
        )
    if w.n not in (None, 1) or w.best_of not in (None, 1):
        raise InvalidRequest(
            "Only one completion per prompt is supported (n and best_of must be 1); send "
            "the prompt several times in `prompt` instead.",
            param="n" if w.n not in (None, 1) else "best_of",
        )
    if w.suffix:
        raise InvalidRequest("'suffix' (insertion) is not supported.", param="suffix")
    prompt = w.prompt
    prompts: list[str | list[int]]
    if isinstance(prompt, str):
        prompts = [prompt]
    elif prompt and isinstance(prompt[0], int):
        prompts = [[t for t in prompt if isinstance(t, int)]]
    else:
        prompts = [p for p in prompt if isinstance(p, str | list)]
    if not prompts:
        raise InvalidRequest("'prompt' must not be empty.", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidRequest(
            f"Too many prompts: {len(prompts)}; the limit is {MAX_PROMPTS}.", param="prompt"
        )
    for i, p in enumerate(prompts):
        if not p:
            where = "prompt" if len(prompts) == 1 else f"prompt.{i}"
            raise InvalidRequest(f"'{where}' must not be empty.", param=where)
    stop = [w.stop] if isinstance(w.stop, str) else list(w.stop or ())
    if len(stop) > wire.MAX_STOP:
        raise InvalidRequest(f"At most {wire.MAX_STOP} stop sequences are allowed.", param="stop")
    if w.stream and len(prompts) > 1:
        raise InvalidRequest("A streamed completion takes one prompt.", param="prompt")
    return CompletionRequest(
        model=w.model,
        prompts=prompts,
        params=SamplingParams(
            temperature=w.temperature,
            top_p=w.top_p,
            max_tokens=w.max_tokens,
            stop=[s for s in stop if s],
            seed=w.seed,
            presence_penalty=w.presence_penalty,
            frequency_penalty=w.frequency_penalty,
        ),
        echo=w.echo,
        logprobs=w.logprobs,
        stream=w.stream,
        user=w.user,
    )


def render_logprobs(tokens: list[TokenLogprob] | None, shift: int = 0) -> JSON | None:
    """OpenAI's completion `logprobs` object (offsets moved on by `shift`)."""
    if tokens is None:
        return None
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [t.top for t in tokens],
        "text_offset": [t.offset + shift for t in tokens],
    }


def render_completion(resp: CompletionResponse) -> JSON:
    return {
        "id": resp.id or f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": resp.created or int(time.time()),
        "model": resp.model,
        "choices": [
            {
                "index": i,
                "text": c.text,
                "logprobs": render_logprobs(c.logprobs),
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(resp.choices)
        ],
        "usage": render_usage(resp.usage),
    }


def render_usage(u: Usage | None) -> JSON:
    """A response's `usage`; `prompt_tokens_details.cached_tokens` counts the prompt tokens
    read from a prompt cache (the local engine's prefix cache or the upstream's)."""
    u = u or Usage()
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


class CompletionsService:
    """The endpoints of this module, on the OpenAI door's flow."""

    def __init__(self, door: FrontDoor, gateway: Gateway, catalog: Catalog) -> None:
        self.door = door
        self.gateway = gateway
        self.catalog = catalog

    async def completions(self, request: Request) -> Response:
        """POST /v1/completions (and /models/{model}/v1/completions)."""
        who, w = await self.door.accept(request, wire.CompletionRequestWire.model_validate_json)
        req = to_completion_request(w, request.path_params.get("model"))
        if not req.stream:

            def render(resp: CompletionResponse, info: CallInfo) -> JSONResponse:
                return JSONResponse(render_completion(resp), raw_headers=info.raw_headers())

            return await self.door.respond(
                request,
                lambda client, defer: self.gateway.complete(who, req, "completions", client, defer),
                render,
            )
        include_usage = bool(w.stream_options and w.stream_options.get("include_usage"))
        return await self.door.stream(
            request,
            lambda client: self.gateway.stream_complete(who, req, "completions", client),
            lambda stream: _sse(stream.events(), req.model, include_usage),
            "text/event-stream",
            sse_headers,
        )

    # -- the tokenizer endpoints (vLLM's shapes) -----------------------------------------

    def _tokenizer(self, request: Request, who: Any, model: str | None) -> tuple[str, Any]:
        path_model = request.path_params.get("model")
        if path_model is not None:
            if model is not None and model != path_model:
                raise InvalidRequest(
                    f"The body's model '{model}' is not the path's model '{path_model}'.",
                    param="model",
                )
            model = path_model
        if model is None:
            model = self._only_local_model(who)
        return model, self.gateway.tokenizer(who, model)

    def _only_local_model(self, who: Any) -> str:
        """The one local chat model `who` may use, when there is exactly one."""
        names = [
            e.name
            for e in self.catalog.entries()
            if e.config.kind == "chat"
            and who.may_use(e.name)
            and any(d.provider == "local" for d in e.config.deployments)
        ]
        if len(names) != 1:
            raise InvalidRequest(
                "Name the model: in 'model', or in the path (/models/{model}/tokenize); "
                f"local models you may use: {', '.join(sorted(names)) or 'none'}.",
                param="model",
            )
        return names[0]

    async def tokenize(self, request: Request) -> Response:
        """POST /tokenize."""
        who, w = await self.door.accept(request, wire.TokenizeRequest.model_validate_json)
        model, tok = self._tokenizer(request, who, w.model)
        if (w.prompt is None) == (w.messages is None):
            raise InvalidRequest("Give either 'prompt' or 'messages'.", param="prompt")
        if w.prompt is not None:
            special = True if w.add_special_tokens is None else w.add_special_tokens
            ids: list[int] = tok(w.prompt, add_special_tokens=special)["input_ids"]
        else:
            chat = [
                {"role": m["role"], "content": _plain(m.get("content"))} for m in w.messages or ()
            ]
            try:
                text = tok.apply_chat_template(
                    chat, tokenize=False, add_generation_prompt=w.add_generation_prompt
                )
            except ValueError as exc:
                raise InvalidRequest(
                    f"The model's chat template rejected the messages: {exc}", param="messages"
                ) from exc
            ids = tok(text, add_special_tokens=bool(w.add_special_tokens))["input_ids"]
        body: JSON = {
            "count": len(ids),
            "max_model_len": self._max_len(model),
            "tokens": ids,
            "token_strs": tok.convert_ids_to_tokens(ids) if w.return_token_strs else None,
        }
        return JSONResponse(body)

    async def detokenize(self, request: Request) -> Response:
        """POST /detokenize."""
        who, w = await self.door.accept(request, wire.DetokenizeRequest.model_validate_json)
        _, tok = self._tokenizer(request, who, w.model)
        size = len(tok)
        for i, t in enumerate(w.tokens):
            if t >= size:
                raise InvalidRequest(
                    f"Token id {t} is not in this model's vocabulary (0 to {size - 1}).",
                    param=f"tokens.{i}",
                )
        return JSONResponse({"prompt": tok.decode(w.tokens)})

    async def tokenizer_info(self, request: Request) -> Response:
        """GET /tokenizer_info[?model=...]: the tokenizer's configuration, as vLLM gives it
        (`eos_token`, `bos_token`, `pad_token`, `chat_template` ...)."""
        who = await self.door.authenticate(request)
        model, tok = self._tokenizer(request, who, request.query_params.get("model") or None)
        info: JSON = {"tokenizer_class": type(tok).__name__, "model": model}
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = getattr(tok, name, None)
            info[name] = value if isinstance(value, str) else None
        info["chat_template"] = getattr(tok, "chat_template", None)
        info["model_max_length"] = self._max_len(model)
        info["vocab_size"] = len(tok)
        return JSONResponse(info)

    def _max_len(self, model: str) -> int | None:
        try:
            return self.catalog.get(model).config.context_window
        except NotFound:
            return None


def _plain(content: wire.Content | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(p.get("text") or "" for p in content)


async def _sse(
    events: AsyncIterator[Any], model: str, include_usage: bool
) -> AsyncGenerator[bytes, None]:
    """Completion chunks as server-sent events (OpenAI's `text_completion` chunks; the door
    ends them with `data: [DONE]`). Log probabilities travel with the text they cover."""
    head = {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    pending: list[TokenLogprob] | None = None

    def chunk(text: str, finish: str | None = None) -> bytes:
        nonlocal pending
        logprobs = render_logprobs(pending)
        pending = None
        body = {
            **head,
            "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    async for ev in events:
        if isinstance(ev, LogprobsDelta):
            pending = (pending or []) + ev.tokens
        elif isinstance(ev, TextDelta):
            yield chunk(ev.text)
        elif isinstance(ev, StreamEnd):
            yield chunk("", ev.finish_reason)
            if include_usage:
                usage = render_usage(ev.usage)
                yield b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
