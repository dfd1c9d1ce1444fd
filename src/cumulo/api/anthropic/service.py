"""Anthropic front door: wire ⇄ canonical translation and the endpoint logic.

Implements https://docs.anthropic.com/en/api/messages ("Create a Message"),
its streaming form (https://docs.anthropic.com/en/api/messages-streaming) and
its error shape (https://docs.anthropic.com/en/api/errors). The caller's
cumulo key is accepted as `x-api-key` or as `Authorization: Bearer`.

Translation notes: `system` (a string or text blocks) becomes a leading system
message; `tool_result` blocks become tool messages, in order with the user's
text; a result marked `is_error` reaches the model prefixed with "Error: ".
`cache_control` on a block marks a prompt-cache breakpoint at the end of the canonical
message holding that block (the system prompt, a turn's text, a tool result), or after a
tool definition; its `ttl` is not kept. Usage reports prompt-cache reads as
`cache_read_input_tokens` (and writes, by a provider's cache, as `cache_creation_input_tokens`),
which `input_tokens` then leaves out, as the Messages API does.
Canonical responses carry no matched stop sequence, so `stop_sequence` is
always null and a stop is reported as `end_turn`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.anthropic import protocol as wire
from cumulo.api.http import (
    DisconnectWatch,
    FrontDoor,
    JSONResponse,
    WireFormat,
    sse_headers,
)
from cumulo.config import ServerConfig
from cumulo.errors import AuthenticationFailed, CumuloError, InvalidRequest, UpstreamError
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.request.gateway import Gateway
from cumulo.request.metering import CallInfo
from cumulo.types import (
    JSON,
    ChatRequest,
    ChatResponse,
    FinishReason,
    Message,
    SamplingParams,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)

# -- errors -------------------------------------------------------------------

# Anthropic's error types by HTTP status; every other status is an `api_error`.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def error_body(exc: CumuloError) -> JSON:
    kind = _ERROR_TYPES.get(exc.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


# How pydantic labels union members in an error's path: `str`, `list[...]`,
# `tagged-union[...]`, or a model's class name; the caller never wrote those.
_UNION_MEMBER = re.compile(r"^(?:str|int|float|bool|[a-z]+(?:-[a-z]+)?\[.*|[A-Z]\w*)$")


def validation_error(exc: ValidationError) -> InvalidRequest:
    """The most specific validation error, worded as Anthropic does: `path.to.field: message`."""
    err = max(exc.errors(), key=lambda e: len(e["loc"]))
    loc: list[str] = []
    previous: object = None
    for part in err["loc"]:
        # A content block's type tag follows its index in the path.
        tag = part in wire.BLOCK_TYPES and isinstance(previous, int)
        previous = part
        if tag or (isinstance(part, str) and _UNION_MEMBER.match(part)):
            continue
        loc.append(str(part))
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("type")
    param = ".".join(loc) or None
    return InvalidRequest(f"{param}: {err['msg']}" if param else str(err["msg"]), param=param)


ANTHROPIC = WireFormat(
    error=lambda exc: (error_body(exc), exc.status, {}),
    invalid=validation_error,
    stream_error=lambda exc: _event("error", {"error": error_body(exc)["error"]}),
)
"""The Messages API's error shape ("Errors"), also as a stream's `error` event."""


# -- wire → canonical -----------------------------------------------------------


def _unsupported(block: Any, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"{param}.type: content blocks of type {block.type!r} are not supported here.",
        param=f"{param}.type",
    )


def _result_text(block: wire.ToolResultBlock, param: str) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        parts = []
        for k, part in enumerate(block.content):
            if not isinstance(part, wire.TextBlock):
                raise _unsupported(part, f"{param}.content.{k}")
            parts.append(part.text)
        text = "".join(parts)
    return f"Error: {text}" if block.is_error else text


def _user(blocks: list[Any], param: str) -> list[Message]:
    """A user turn: tool results become tool messages, text around them user messages."""
    out: list[Message] = []
    text: list[str] = []
    cached = False  # a breakpoint on a text block: after the text message it is in
    for j, block in enumerate(blocks):
        if isinstance(block, wire.TextBlock):
            text.append(block.text)
            cached = cached or block.cache_control is not None
        elif isinstance(block, wire.ToolResultBlock):
            if text:
                out.append(Message("user", "".join(text), cache_point=cached))
                text, cached = [], False
            result = _result_text(block, f"{param}.{j}")
            point = block.cache_control is not None
            out.append(Message("tool", result, tool_call_id=block.tool_use_id, cache_point=point))
        else:
            raise _unsupported(block, f"{param}.{j}")
    if text or not out:
        out.append(Message("user", "".join(text), cache_point=cached))
    return out


def _assistant(blocks: list[Any], param: str) -> Message:
    text: list[str] = []
    calls: list[ToolCall] = []
    cached = False
    for j, block in enumerate(blocks):
        if isinstance(block, wire.TextBlock):
            text.append(block.text)
        elif isinstance(block, wire.ToolUseBlock):
            calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
        else:
            raise _unsupported(block, f"{param}.{j}")
        cached = cached or block.cache_control is not None
    content = "".join(text) if text else None
    return Message("assistant", content, tool_calls=calls or None, cache_point=cached)


def _tool_choice(w: wire.ToolChoiceWire | None) -> ToolChoice | None:
    if w is None:
        return None
    if w.type == "tool":
        if not w.name:
            raise InvalidRequest("tool_choice.name: Field required", param="tool_choice.name")
        return ToolChoice("tool", w.name)
    return ToolChoice("required" if w.type == "any" else w.type)


def to_chat_request(w: wire.MessagesRequest, max_messages: int) -> ChatRequest:
    if len(w.messages) > max_messages:
        raise InvalidRequest(
            f"messages: too many messages: {len(w.messages)}; the limit is {max_messages}.",
            param="messages",
        )
    messages: list[Message] = []
    system = w.system if isinstance(w.system, str) else "".join(b.text for b in w.system or ())
    if system:
        blocks = w.system if isinstance(w.system, list) else ()
        cached = any(b.cache_control is not None for b in blocks)
        messages.append(Message("system", system, cache_point=cached))
    for i, m in enumerate(w.messages):
        if isinstance(m.content, str):
            messages.append(Message(m.role, m.content))
        elif m.role == "assistant":
            messages.append(_assistant(m.content, f"messages.{i}.content"))
        else:
            messages.extend(_user(m.content, f"messages.{i}.content"))
    tools = [
        Tool(t.name, t.description, t.input_schema, cache_point=t.cache_control is not None)
        for t in w.tools or ()
    ]
    return ChatRequest(
        model=w.model,
        messages=messages,
        params=SamplingParams(
            temperature=w.temperature,
            top_p=w.top_p,
            top_k=w.top_k or None,  # 0 leaves top-k sampling off
            max_tokens=w.max_tokens,
            stop=[s for s in w.stop_sequences or () if s],
        ),
        tools=tools or None,
        tool_choice=_tool_choice(w.tool_choice),
        stream=w.stream,
    )


# -- canonical → wire -------------------------------------------------------------

_STOP_REASONS: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}


def _input(call: ToolCall) -> JSON:
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UpstreamError(
            f"The model called {call.name!r} with arguments that are not a JSON object."
        )
    return value


def _message_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("msg_") else f"msg_{uuid.uuid4().hex}"


def render_message(resp: ChatResponse) -> JSON:
    """A Messages API `message` object for a canonical response."""
    content: list[JSON] = []
    if resp.message.content:
        content.append({"type": "text", "text": resp.message.content})
    for call in resp.message.tool_calls or ():
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call)}
        )
    return {
        "id": _message_id(resp.id),
        "type": "message",
        "role": "assistant",
        "model": resp.model,
        "content": content,
        "stop_reason": _STOP_REASONS[resp.finish_reason],
        "stop_sequence": None,
        "usage": _usage(resp.usage),
    }


def _usage(u: Usage | None) -> JSON:
    """Messages API usage: `input_tokens` counts the prompt tokens neither read from nor
    written to a prompt cache (those are `cache_read_input_tokens` and
    `cache_creation_input_tokens`; the local engine's prefix cache only reads)."""
    u = u or Usage()
    return {
        "input_tokens": max(0, u.prompt_tokens - u.cached_tokens - u.cache_write_tokens),
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_tokens,
    }


def _event(kind: str, data: JSON) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


class _MessageStream:
    """Canonical stream events as the Messages API's server-sent events, block by block.

    One content block is open at a time: text opens (or continues) a text
    block, a new tool call opens a `tool_use` block after the current one.
    """

    def __init__(self) -> None:
        self.blocks = 0  # content blocks opened so far
        self.open: int | None = None  # the open block's index
        self.text_block: int | None = None  # the open block's index when it is text
        self.tools: dict[int, int] = {}  # tool ordinal → its block index

    def start(self, model: str) -> bytes:
        message: JSON = {
            "id": f"msg_{uuid.uuid4().hex}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": _usage(None),
        }
        return _event("message_start", {"message": message})

    def _open(self, block: JSON) -> list[bytes]:
        out = self._close()
        self.open, self.blocks = self.blocks, self.blocks + 1
        return [*out, _event("content_block_start", {"index": self.open, "content_block": block})]

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        index, self.open, self.text_block = self.open, None, None
        return [_event("content_block_stop", {"index": index})]

    def feed(self, ev: StreamEvent) -> list[bytes]:
        if isinstance(ev, TextDelta):
            return self._text(ev.text) if ev.text else []
        if isinstance(ev, ToolCallDelta):
            return self._tool(ev)
        if isinstance(ev, StreamEnd):
            return self._end(ev)
        return []  # log probabilities: completion streams only

    def _text(self, text: str) -> list[bytes]:
        out = [] if self.text_block is not None else self._open({"type": "text", "text": ""})
        self.text_block = self.open
        delta = {"type": "text_delta", "text": text}
        return [*out, _event("content_block_delta", {"index": self.open, "delta": delta})]

    def _tool(self, ev: ToolCallDelta) -> list[bytes]:
        out = []
        if ev.index not in self.tools:
            out = self._open(
                {
                    "type": "tool_use",
                    "id": ev.id or f"toolu_{uuid.uuid4().hex}",
                    "name": ev.name or "",
                    "input": {},
                }
            )
            self.tools[ev.index] = self.blocks - 1
        if ev.arguments:
            delta = {"type": "input_json_delta", "partial_json": ev.arguments}
            out.append(
                _event("content_block_delta", {"index": self.tools[ev.index], "delta": delta})
            )
        return out

    def _end(self, ev: StreamEnd) -> list[bytes]:
        usage = _usage(ev.usage)
        delta: JSON = {"stop_reason": _STOP_REASONS[ev.finish_reason], "stop_sequence": None}
        return [
            *self._close(),
            _event("message_delta", {"delta": delta, "usage": usage}),
            _event("message_stop", {}),
        ]


def _message_response(resp: ChatResponse, info: CallInfo) -> JSONResponse:
    return JSONResponse(render_message(resp), raw_headers=info.raw_headers())


class AnthropicService:
    def __init__(
        self,
        auth: Authenticator,
        gateway: Gateway,
        limits: ServerConfig,
        disconnects: DisconnectWatch | None = None,
    ) -> None:
        self.auth = auth
        self.gateway = gateway
        self.limits = limits
        self.door = FrontDoor(ANTHROPIC, self._authenticate, limits.max_body_bytes, disconnects)

    async def _authenticate(self, request: Request) -> Principal:
        """The key as `x-api-key` (the Messages API's header) or `Authorization: Bearer`."""
        key = request.headers.get("x-api-key", "").strip()
        if key:
            return await self.auth.check_token(key)
        if request.headers.get("authorization"):
            return await self.auth.authenticate(request.headers["authorization"])
        raise AuthenticationFailed(
            "Missing API key: send it as 'x-api-key: <key>' or 'Authorization: Bearer <key>'.",
            code="missing_api_key",
        )

    async def messages(self, request: Request) -> Response:
        """POST /v1/messages: "Create a Message", streamed ("Streaming Messages") or not."""
        who, w = await self.door.accept(request, wire.MessagesRequest.model_validate_json)
        req = to_chat_request(w, self.limits.max_messages)
        if not req.stream:
            return await self.door.respond(
                request,
                lambda client, defer: self.gateway.chat(who, req, "messages", client, defer),
                _message_response,
            )
        return await self.door.stream(
            request,
            lambda client: self.gateway.stream(who, req, "messages", client),
            lambda stream: self._sse(stream.events(), req.model),
            "text/event-stream",
            sse_headers,
        )

    async def _sse(
        self, events: AsyncIterator[StreamEvent], model: str
    ) -> AsyncGenerator[bytes, None]:
        """The "Streaming Messages" event flow; a failure after the start is an `error`
        event (the door's)."""
        out = _MessageStream()
        yield out.start(model)
        ended = False
        async for ev in events:  # to its end: the metered stream records usage there
            for chunk in out.feed(ev):
                yield chunk
            ended = ended or isinstance(ev, StreamEnd)
        if not ended:
            raise UpstreamError("The upstream stream ended before it finished.")
