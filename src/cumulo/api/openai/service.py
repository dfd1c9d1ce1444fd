"""OpenAI front door: wire ⇄ canonical translation and the endpoint logic.

Implements https://platform.openai.com/docs/api-reference: Chat Completions
(create, streaming), Embeddings (create) and Models (list, retrieve).
"""

from __future__ import annotations

import base64
import logging
import re
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from cumulo.api.http import (
    After,
    DisconnectWatch,
    JSONResponse,
    client_host,
    error_headers,
    header,
    read_body,
)
from cumulo.api.openai import protocol as wire
from cumulo.config import ModelConfig
from cumulo.errors import CumuloError, InvalidRequest, NotFound
from cumulo.gateway import Gateway
from cumulo.governance.auth import Authenticator
from cumulo.platform import Platform
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
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


# -- errors -------------------------------------------------------------------


def error_body(exc: CumuloError) -> JSON:
    return {
        "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    }


def error_response(exc: CumuloError) -> Response:
    """The one place a cumulo error becomes an OpenAI-shaped HTTP response."""
    return JSONResponse(error_body(exc), status_code=exc.status, headers=error_headers(exc))


_ROLES = ("system", "developer", "user", "assistant", "tool")
# How pydantic labels union members in an error's path: `str`, `list[str]`,
# `literal['auto',...]`, `function-after[...]`, or a model's class name.
_UNION_MEMBER = re.compile(r"^(?:str|int|float|bool|[a-z]+(?:-[a-z]+)?\[.*|[A-Z]\w*)$")


def validation_error(exc: ValidationError) -> InvalidRequest:
    """The first validation error as an InvalidRequest whose `param` names the field."""
    err = exc.errors()[0]
    loc: list[str] = []
    previous: object = None
    for part in err["loc"]:
        text = str(part)
        # Union members appear in the path by their type, and messages by their role tag
        # after the index; the caller never wrote those. Field names are snake_case.
        role_tag = text in _ROLES and isinstance(previous, int)
        previous = part
        if role_tag or (isinstance(part, str) and _UNION_MEMBER.match(text)):
            continue
        loc.append(text)
    msg = err["msg"]
    if err["type"] == "union_tag_invalid":
        loc.append("role")
        tag = (err.get("ctx") or {}).get("tag")
        msg = f"Invalid role {tag!r}; expected one of {', '.join(_ROLES)}"
    elif err["type"] == "union_tag_not_found":
        loc.append("role")
        msg = "Field required"
    param = ".".join(loc) or None
    return InvalidRequest(
        f"Invalid value for '{param}': {msg}." if param else f"{msg}.", param=param
    )


def parse_body(model: type[M], body: bytes) -> M:
    """A wire model from a JSON body, or a 400 naming the field (the admin API's too)."""
    return validated(model.model_validate_json, body)


def validated(validate: Callable[[bytes], T], body: bytes) -> T:
    """`validate(body)`: a JSON body as pydantic validates it, or a 400 naming the field."""
    if not body:
        raise InvalidRequest("The request body is empty; a JSON object is required.")
    try:
        return validate(body)
    except ValidationError as exc:
        if exc.errors()[0]["type"] in ("json_invalid", "json_type"):
            raise InvalidRequest(
                f"The request body is not valid JSON: {exc.errors()[0]['msg']}."
            ) from exc
        raise validation_error(exc) from exc


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
        "usage": {
            "prompt_tokens": resp.usage.prompt_tokens,
            "completion_tokens": resp.usage.completion_tokens,
            "total_tokens": resp.usage.total_tokens,
        },
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


class OpenAIService:
    def __init__(
        self, platform: Platform, gateway: Gateway, disconnects: DisconnectWatch | None = None
    ) -> None:
        self.disconnects = disconnects or DisconnectWatch()
        self.platform = platform
        self.gateway = gateway
        self.auth: Authenticator = platform.auth
        self.limits = platform.config.server

    async def chat_completions(self, request: Request) -> Response:
        """POST /v1/chat/completions."""
        who = await self.auth.authenticate(header(request, b"authorization"))
        w = validated(
            wire.chat_completion_request.validate_json,
            await read_body(request, self.limits.max_body_bytes),
        )
        req = to_chat_request(w, self.limits.max_messages)
        if not req.stream:
            with After() as after:
                with self.disconnects.request(request):
                    resp, info = await self.gateway.chat(
                        who, req, "chat.completions", client_host(request), after.add
                    )
                return JSONResponse(render_chat(resp), raw_headers=info.raw_headers(), after=after)
        options = w.get("stream_options")
        include_usage = bool(options and options.get("include_usage"))
        with self.disconnects.request(request):
            stream = await self.gateway.stream(who, req, "chat.completions", client_host(request))
        return StreamingResponse(
            self._sse(stream.events(), req.model, include_usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", **stream.info.headers()},
        )

    async def _sse(
        self, events: AsyncIterator[Any], model: str, include_usage: bool
    ) -> AsyncIterator[bytes]:
        """Chat completion chunks as server-sent events, ending with `data: [DONE]`."""
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
        try:
            async for ev in events:
                if isinstance(ev, TextDelta):
                    yield chunk({"content": ev.text})
                elif isinstance(ev, StreamEnd):
                    yield chunk({}, ev.finish_reason)
                    if include_usage:
                        u = ev.usage
                        usage = {
                            "prompt_tokens": u.prompt_tokens if u else 0,
                            "completion_tokens": u.completion_tokens if u else 0,
                            "total_tokens": u.total_tokens if u else 0,
                        }
                        yield (
                            b"data: "
                            + orjson.dumps({**head, "choices": [], "usage": usage})
                            + b"\n\n"
                        )
                else:
                    call: JSON = {"index": ev.index, "function": {"arguments": ev.arguments}}
                    if ev.id:
                        call["id"], call["type"] = ev.id, "function"
                    if ev.name:
                        call["function"]["name"] = ev.name
                    yield chunk({"tool_calls": [call]})
        except CumuloError as exc:
            # Headers are sent: the error travels as an event the SDKs raise on.
            yield b"data: " + orjson.dumps(error_body(exc)) + b"\n\n"
        except Exception:  # logged; the client still gets a well-formed error event
            log.exception("stream failed")
            internal = CumuloError("The server had an error while streaming the response.")
            yield b"data: " + orjson.dumps(error_body(internal)) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def embeddings(self, request: Request) -> Response:
        """POST /v1/embeddings."""
        who = await self.auth.authenticate(header(request, b"authorization"))
        w = parse_body(
            wire.EmbeddingRequestWire, await read_body(request, self.limits.max_body_bytes)
        )
        req = to_embedding_request(w, self.limits.max_embedding_inputs)
        with After() as after:
            with self.disconnects.request(request):
                resp, info = await self.gateway.embed(
                    who, req, "embeddings", client_host(request), after.add
                )
            return JSONResponse(
                render_embeddings(resp, w.encoding_format),
                raw_headers=info.raw_headers(),
                after=after,
            )

    async def list_models(self, request: Request) -> Response:
        """GET /v1/models."""
        who = await self.auth.authenticate(header(request, b"authorization"))
        entries = self.platform.models.entries()
        data = [
            render_model(e.config, e.ready, e.load_error) for e in entries if who.may_use(e.name)
        ]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        """GET /v1/models/{model}."""
        who = await self.auth.authenticate(header(request, b"authorization"))
        name = request.path_params["model"]
        if not who.may_use(name):  # as if it did not exist: no probing of other tenants' models
            raise NotFound(
                f"The model '{name}' does not exist.", param="model", code="model_not_found"
            )
        entry = self.platform.models.get(name)
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
