"""OpenAI front door: wire ⇄ canonical translation and the endpoint logic.

Implements https://platform.openai.com/docs/api-reference: Chat Completions
(create, streaming), Embeddings (create) and Models (list, retrieve); legacy Completions
and the tokenizer endpoints are in `completions`.
"""

from __future__ import annotations

import base64
import logging
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.http import (
    OPENAI,
    DisconnectWatch,
    FrontDoor,
    JSONResponse,
    header,
    sse_headers,
)
from cumulo.api.openai import protocol as wire
from cumulo.api.openai.completions import CompletionsService, render_usage
from cumulo.config import ModelConfig, ServerConfig
from cumulo.errors import InvalidRequest, NotFound
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.request.gateway import Gateway
from cumulo.request.metering import CallInfo
from cumulo.routing.catalog import Catalog
from cumulo.types import (
    JSON,
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    Message,
    SamplingParams,
    StreamEnd,
    TextDelta,
    Tool,
    ToolCall,
    ToolChoice,
)

log = logging.getLogger(__name__)


# -- wire → canonical -----------------------------------------------------------


def _text(content: wire.Content | None, index: int) -> str | None:
    """The text of message `index`'s content."""
    if content is None or isinstance(content, str):
        return content
    parts = []
    for j, part in enumerate(content):
        text = part.get("text")
        if part["type"] != "text" or text is None:
            raise InvalidRequest(
                f"Content part type {part['type']!r} is not supported; only 'text' parts are.",
                param=f"messages.{index}.content.{j}.type",
            )
        parts.append(text)
    return "".join(parts)


def to_chat_request(w: wire.ChatCompletionRequest, max_messages: int) -> ChatRequest:
    if w.get("n") not in (None, 1):
        raise InvalidRequest("Only n=1 is supported.", param="n")
    wire_messages = w["messages"]
    if len(wire_messages) > max_messages:
        raise InvalidRequest(
            f"Too many messages: {len(wire_messages)}; the limit is {max_messages}.",
            param="messages",
        )
    messages: list[Message] = []
    for i, m in enumerate(wire_messages):
        text = _text(m.get("content"), i)
        if m["role"] == "user":
            messages.append(Message("user", text, m.get("name")))
        elif m["role"] == "assistant":
            calls = [
                ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments", ""))
                for c in m.get("tool_calls") or ()
            ]
            messages.append(Message("assistant", text, m.get("name"), calls or None))
        elif m["role"] == "tool":
            messages.append(Message("tool", text, tool_call_id=m["tool_call_id"]))
        else:  # system, developer
            messages.append(Message("system", text, m.get("name")))
    stop_field = w.get("stop")
    stop = [stop_field] if isinstance(stop_field, str) else list(stop_field or ())
    if len(stop) > 4:
        raise InvalidRequest("At most 4 stop sequences are allowed.", param="stop")
    choice = w.get("tool_choice")
    tool_choice = None
    if isinstance(choice, str):
        tool_choice = ToolChoice(choice)
    elif choice is not None:
        tool_choice = ToolChoice("tool", choice["function"]["name"])
    tools = [
        Tool(f["name"], f.get("description"), f.get("parameters"))
        for f in (t["function"] for t in w.get("tools") or ())
    ]
    return ChatRequest(
        model=w["model"],
        messages=messages,
        params=SamplingParams(
            temperature=w.get("temperature"),
            top_p=w.get("top_p"),
            top_k=w.get("top_k"),
            max_tokens=w.get("max_completion_tokens") or w.get("max_tokens"),
            stop=[s for s in stop if s],
            seed=w.get("seed"),
            presence_penalty=w.get("presence_penalty"),
            frequency_penalty=w.get("frequency_penalty"),
        ),
        tools=tools or None,
        tool_choice=tool_choice,
        response_format=w.get("response_format"),
        stream=w.get("stream", False),
        user=w.get("user"),
    )


def to_embedding_request(w: wire.EmbeddingRequestWire, max_inputs: int) -> EmbeddingRequest:
    inputs = [w.input] if isinstance(w.input, str) else w.input
    if not inputs:
        raise InvalidRequest("'input' must not be empty.", param="input")
    if any(not isinstance(x, str) for x in inputs):
        raise InvalidRequest(
            "Token-array input is not supported; send the input as strings.", param="input"
        )
    texts = [x for x in inputs if isinstance(x, str)]
    if any(not x for x in texts):
        raise InvalidRequest("'input' must not contain empty strings.", param="input")
    if len(texts) > max_inputs:
        raise InvalidRequest(
            f"Too many inputs: {len(texts)}; the limit is {max_inputs}.", param="input"
        )
    return EmbeddingRequest(model=w.model, inputs=texts, dimensions=w.dimensions, user=w.user)


# -- canonical → wire -------------------------------------------------------------


def _tool_calls(calls: list[ToolCall]) -> list[JSON]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def render_chat(resp: ChatResponse) -> JSON:
    message: JSON = {"role": "assistant", "content": resp.message.content, "refusal": None}
    if resp.message.tool_calls:
        message["tool_calls"] = _tool_calls(resp.message.tool_calls)
    return {
        "id": resp.id or f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": resp.created or int(time.time()),
        "model": resp.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": resp.finish_reason}
        ],
        "usage": render_usage(resp.usage),
    }


def render_embeddings(resp: EmbeddingResponse, encoding_format: str) -> JSON:
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _b64(v) if encoding_format == "base64" else v,
        }
        for i, v in enumerate(resp.vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": resp.model,
        "usage": {
            "prompt_tokens": resp.usage.prompt_tokens,
            "total_tokens": resp.usage.prompt_tokens,
        },
    }


def _chat_response(resp: ChatResponse, info: CallInfo) -> JSONResponse:
    return JSONResponse(render_chat(resp), raw_headers=info.raw_headers())


class OpenAIService:
    def __init__(
        self,
        auth: Authenticator,
        gateway: Gateway,
        catalog: Catalog,
        limits: ServerConfig,
        disconnects: DisconnectWatch | None = None,
    ) -> None:
        self.gateway = gateway
        self.catalog = catalog
        self.limits = limits

        def authenticate(request: Request) -> Awaitable[Principal]:
            return auth.authenticate(header(request, b"authorization"))

        self.door = FrontDoor(OPENAI, authenticate, limits.max_body_bytes, disconnects)
        self.completions = CompletionsService(self.door, gateway, catalog)

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions."""
        who, w = await self.door.accept(request, wire.chat_completion_request.validate_json)
        req = to_chat_request(w, self.limits.max_messages)
        if not req.stream:
            return await self.door.respond(
                request,
                lambda client, defer: self.gateway.chat(
                    who, req, "chat.completions", client, defer
                ),
                _chat_response,
            )
        options = w.get("stream_options")
        include_usage = bool(options and options.get("include_usage"))
        return await self.door.stream(
            request,
            lambda client: self.gateway.stream(who, req, "chat.completions", client),
            lambda stream: self._sse(stream.events(), req.model, include_usage),
            "text/event-stream",
            sse_headers,
        )

    async def _sse(
        self, events: AsyncIterator[Any], model: str, include_usage: bool
    ) -> AsyncGenerator[bytes, None]:
        """Chat completion chunks as server-sent events (the door ends them with
        `data: [DONE]`)."""
        head = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }

        def chunk(delta: JSON, finish: str | None = None) -> bytes:
            body = {
                **head,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            return b"data: " + orjson.dumps(body) + b"\n\n"

        yield chunk({"role": "assistant", "content": ""})
        async for ev in events:
            if isinstance(ev, TextDelta):
                yield chunk({"content": ev.text})
            elif isinstance(ev, StreamEnd):
                yield chunk({}, ev.finish_reason)
                if include_usage:
                    usage = render_usage(ev.usage)
                    yield (
                        b"data: " + orjson.dumps({**head, "choices": [], "usage": usage}) + b"\n\n"
                    )
            else:
                call: JSON = {"index": ev.index, "function": {"arguments": ev.arguments}}
                if ev.id:
                    call["id"], call["type"] = ev.id, "function"
                if ev.name:
                    call["function"]["name"] = ev.name
                yield chunk({"tool_calls": [call]})

    async def embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings."""
        who, w = await self.door.accept(request, wire.EmbeddingRequestWire.model_validate_json)
        req = to_embedding_request(w, self.limits.max_embedding_inputs)

        def render(resp: EmbeddingResponse, info: CallInfo) -> JSONResponse:
            return JSONResponse(
                render_embeddings(resp, w.encoding_format), raw_headers=info.raw_headers()
            )

        return await self.door.respond(
            request,
            lambda client, defer: self.gateway.embed(who, req, "embeddings", client, defer),
            render,
        )

    async def list_models(self, request: Request) -> Response:
        """GET /v1/models."""
        who = await self.door.authenticate(request)
        data = [
            render_model(e.config, e.ready, e.load_error)
            for e in self.catalog.entries()
            if self.catalog.may_use(who, e.name)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        """GET /v1/models/{model}."""
        who = await self.door.authenticate(request)
        name = request.path_params["model"]
        if not self.catalog.may_use(
            who, name
        ):  # as if it did not exist: no probing of other tenants' models
            raise NotFound(
                f"The model '{name}' does not exist.", param="model", code="model_not_found"
            )
        entry = self.catalog.get(name)
        return JSONResponse(render_model(entry.config, entry.ready, entry.load_error))


def render_model(m: ModelConfig, ready: bool, load_error: str | None = None) -> JSON:
    """OpenAI's model object, plus cumulo's own fields (documented in the README)."""
    return {
        "id": m.name,
        "object": "model",
        "created": 0,
        "owned_by": "cumulo",
        "kind": m.kind,
        "untrained": m.untrained,
        "ready": ready,
        "load_error": load_error,
        "context_window": m.context_window,
        "default_max_tokens": m.default_max_tokens,
        "description": m.description,
        "providers": sorted({d.provider for d in m.deployments}),
    }


def _b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
