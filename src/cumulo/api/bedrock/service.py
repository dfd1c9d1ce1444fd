"""Bedrock front door: Converse wire ⇄ canonical translation and the endpoint logic.

Implements the Amazon Bedrock Runtime API reference
(https://docs.aws.amazon.com/bedrock/latest/APIReference/): `Converse` and
`ConverseStream`, the latter framed as AWS's binary event stream. The model id
in the path is a cumulo model name. Callers authenticate as with Bedrock:
AWS Signature V4 with access key id = cumulo key id and secret = the key's
secret (`governance.identity.sigv4`), or a key as `Authorization: Bearer`.

Translation notes: text blocks of one message are concatenated; a
`toolResult` with `status: error` reaches the model as text prefixed `Error: `
(the canonical tool message has no status); a `cachePoint` block (in `system`, a
message's content or the tools) marks a prompt-cache breakpoint after the canonical
message or tool it follows (`cache_point`); image, document and other block kinds are
refused with a ValidationException. Usage reports prompt-cache reads as
`cacheReadInputTokens` (and a provider's cache writes as `cacheWriteInputTokens`), which
`inputTokens` leaves out, as Bedrock does.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from cumulo import eventstream as es
from cumulo.api.bedrock import protocol as wire
from cumulo.api.http import (
    DisconnectWatch,
    FrontDoor,
    Identify,
    JSONResponse,
    WireFormat,
    read_body,
)
from cumulo.config import ServerConfig
from cumulo.errors import (
    AuthenticationFailed,
    CumuloError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from cumulo.governance.identity import sigv4
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.request.gateway import Gateway
from cumulo.request.metering import BlockedStream, CallInfo, MeteredStream
from cumulo.types import (
    JSON,
    ChatRequest,
    ChatResponse,
    FinishReason,
    Message,
    SamplingParams,
    StreamEnd,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)

log = logging.getLogger(__name__)
SIGNING_SERVICE = "bedrock"
_STOP: dict[FinishReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "content_filtered",
}
_AUTH_CODES = {
    "missing_api_key": "MissingAuthenticationTokenException",
    "invalid_signature": "InvalidSignatureException",
    "signature_expired": "InvalidSignatureException",
    "incomplete_signature": "IncompleteSignatureException",
}

# -- errors -------------------------------------------------------------------------


def error_type(exc: CumuloError) -> tuple[str, int]:
    """The Bedrock exception name and HTTP status for a cumulo error."""
    if isinstance(exc, AuthenticationFailed):
        return _AUTH_CODES.get(exc.code or "", "UnrecognizedClientException"), 403
    if isinstance(exc, UpstreamTimeout):
        return "ModelTimeoutException", 408
    for cls, name, status in (
        (InvalidRequest, "ValidationException", 400),
        (PayloadTooLarge, "ValidationException", 413),
        (PermissionDenied, "AccessDeniedException", 403),
        (NotFound, "ResourceNotFoundException", 404),
        (RateLimited, "ThrottlingException", 429),
        (Unavailable, "ServiceUnavailableException", 503),
        (UpstreamError, "ModelErrorException", 424),
    ):
        if isinstance(exc, cls):
            return name, status
    return "InternalServerException", 500


def _error(exc: CumuloError) -> tuple[JSON, int, dict[str, str]]:
    name, status = error_type(exc)
    return (
        {"message": exc.message},
        status,
        {"x-amzn-errortype": name, "x-amzn-requestid": str(uuid.uuid4())},
    )


def stream_exception(exc: CumuloError) -> bytes:
    """An error after the stream started: an exception frame of ConverseStreamOutput."""
    name, _ = error_type(exc)
    if name in ("ModelTimeoutException", "ModelErrorException"):
        name = "ModelStreamErrorException"
    elif name not in ("ValidationException", "ThrottlingException", "ServiceUnavailableException"):
        name = "InternalServerException"
    return es.exception(name[0].lower() + name[1:], exc.message)


def validation_error(exc: ValidationError) -> InvalidRequest:
    """The first validation error, worded as Bedrock's ValidationException."""
    err = exc.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    msg = f"Value at '{param}' failed to satisfy constraint: {err['msg']}."
    return InvalidRequest(msg if param else f"{err['msg']}.", param=param)


BEDROCK = WireFormat(
    error=_error,
    invalid=validation_error,
    stream_error=stream_exception,
    internal="The server had an error while streaming.",
)
"""Bedrock's error shape (`x-amzn-errortype`), and exception frames in a stream."""


# -- wire → canonical ---------------------------------------------------------------


def _kinds(block: wire.ContentBlock) -> list[str]:
    members = ("text", "toolUse", "toolResult", "cachePoint")
    known = [k for k in members if getattr(block, k) is not None]
    return known + list(block.model_extra or {})


def _result_text(result: wire.ToolResultBlock, param: str) -> str:
    parts = []
    for k, c in enumerate(result.content):
        if c.text is not None:
            parts.append(c.text)
        elif c.json_ is not None:
            parts.append(orjson.dumps(c.json_).decode())
        else:
            kind = next(iter(c.model_extra or {}), "empty")
            raise InvalidRequest(
                f"Tool result content of type '{kind}' is not supported; send text or json.",
                param=f"{param}.content.{k}",
            )
    text = "".join(parts)
    return f"Error: {text}" if result.status == "error" else text


def _message(m: wire.Message, i: int) -> list[Message]:
    texts: list[str] = []
    calls: list[ToolCall] = []
    results: list[Message] = []
    cached = False  # a cache point after text (or a tool call): on the message they make
    previous: str | None = None
    for j, block in enumerate(m.content):
        param = f"messages.{i}.content.{j}"
        kinds = _kinds(block)
        if len(kinds) != 1:
            raise InvalidRequest("A content block must have exactly one member.", param=param)
        if block.text is not None:
            texts.append(block.text)
        elif block.toolUse is not None:
            if m.role != "assistant":
                raise InvalidRequest("toolUse blocks belong to assistant messages.", param=param)
            use = block.toolUse
            args = orjson.dumps(use.input if use.input is not None else {}).decode()
            calls.append(ToolCall(use.toolUseId, use.name, args))
        elif block.toolResult is not None:
            if m.role != "user":
                raise InvalidRequest("toolResult blocks belong to user messages.", param=param)
            result = block.toolResult
            text = _result_text(result, f"{param}.toolResult")
            results.append(Message("tool", text, tool_call_id=result.toolUseId))
        elif block.cachePoint is not None:
            if previous == "toolResult":
                results[-1].cache_point = True
            elif previous is not None:
                cached = True
        else:
            raise InvalidRequest(
                f"Content block type '{kinds[0]}' is not supported; send text, toolUse or toolResult.",
                param=f"{param}.{kinds[0]}",
            )
        previous = kinds[0]
    if m.role == "assistant":
        content = "".join(texts) or None
        return [Message("assistant", content, tool_calls=calls or None, cache_point=cached)]
    if texts or not results:
        return [*results, Message("user", "".join(texts), cache_point=cached)]
    return results


def to_chat_request(
    model: str, w: wire.ConverseRequest, stream: bool, max_messages: int
) -> ChatRequest:
    if len(w.messages) > max_messages:
        raise InvalidRequest(
            f"Too many messages: {len(w.messages)}; the limit is {max_messages}.", param="messages"
        )
    messages: list[Message] = []
    for s in w.system or ():
        if s.text is not None:
            messages.append(Message("system", s.text))
        elif s.cachePoint is not None and messages:
            messages[-1].cache_point = True
    for i, m in enumerate(w.messages):
        messages.extend(_message(m, i))
    tools: list[Tool] = []
    tool_choice = None
    if w.toolConfig is not None:
        for t in w.toolConfig.tools:
            if t.toolSpec is not None:
                spec = t.toolSpec
                tools.append(Tool(spec.name, spec.description, spec.inputSchema.json_))
            elif t.cachePoint is not None and tools:
                tools[-1].cache_point = True
        choice = w.toolConfig.toolChoice
        if choice is not None and choice.tool is not None:
            tool_choice = ToolChoice("tool", choice.tool.name)
        elif choice is not None and choice.any is not None:
            tool_choice = ToolChoice("required")
        elif choice is not None and choice.auto is not None:
            tool_choice = ToolChoice("auto")
    cfg = w.inferenceConfig or wire.InferenceConfiguration()
    return ChatRequest(
        model=model,
        messages=messages,
        params=SamplingParams(
            temperature=cfg.temperature,
            top_p=cfg.topP,
            max_tokens=cfg.maxTokens,
            stop=[s for s in cfg.stopSequences or () if s],
        ),
        tools=tools or None,
        tool_choice=tool_choice,
        stream=stream,
    )


# -- canonical → wire ---------------------------------------------------------------


def _tool_input(arguments: str) -> Any:
    if not arguments.strip():
        return {}
    try:
        return orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments  # not JSON: passed on as a JSON string rather than dropped


def _usage(u: Usage | None) -> JSON:
    """Converse usage: `inputTokens` counts the prompt tokens neither read from nor written
    to a prompt cache (`cacheReadInputTokens`, `cacheWriteInputTokens`); `totalTokens` all."""
    u = u or Usage()
    fresh = max(0, u.prompt_tokens - u.cached_tokens - u.cache_write_tokens)
    return {
        "inputTokens": fresh,
        "outputTokens": u.completion_tokens,
        "totalTokens": u.prompt_tokens + u.completion_tokens,
        "cacheReadInputTokens": u.cached_tokens,
        "cacheWriteInputTokens": u.cache_write_tokens,
    }


def render_converse(resp: ChatResponse, latency_ms: int) -> JSON:
    content: list[JSON] = [{"text": resp.message.content}] if resp.message.content else []
    for call in resp.message.tool_calls or ():
        use = {"toolUseId": call.id, "name": call.name, "input": _tool_input(call.arguments)}
        content.append({"toolUse": use})
    return {
        "output": {"message": {"role": "assistant", "content": content or [{"text": ""}]}},
        "stopReason": _STOP[resp.finish_reason],
        "usage": _usage(resp.usage),
        "metrics": {"latencyMs": latency_ms},
    }


def _headers(info: CallInfo) -> dict[str, str]:
    return {"x-amzn-requestid": str(uuid.uuid4()), **info.headers()}


def sigv4_or_bearer(auth: Authenticator) -> Identify:
    """The caller, by AWS SigV4 (service `bedrock`) or a bearer key, and the request body:
    a signature covers the body, so it is read first."""

    async def identify(request: Request, limit: int) -> tuple[Principal, bytes]:
        authorization = request.headers.get("authorization")
        if sigv4.is_sigv4(authorization):
            body = await read_body(request, limit)
            signed = sigv4.SignedRequest(
                request.method,
                request.scope["raw_path"].decode("latin-1"),
                request.scope["query_string"].decode("latin-1"),
                list(request.headers.items()),
                body,
            )
            return await auth.authenticate_sigv4(signed, SIGNING_SERVICE), body
        who = await auth.authenticate(authorization)
        return who, await read_body(request, limit)

    return identify


def bedrock_door(
    auth: Authenticator, max_body_bytes: int, disconnects: DisconnectWatch | None = None
) -> FrontDoor:
    """The Bedrock runtime's door: SigV4 or bearer, Bedrock's errors."""
    return FrontDoor(
        BEDROCK,
        lambda request: auth.authenticate(request.headers.get("authorization")),
        max_body_bytes,
        disconnects,
        identify=sigv4_or_bearer(auth),
    )


class BedrockService:
    def __init__(
        self,
        auth: Authenticator,
        gateway: Gateway,
        limits: ServerConfig,
        disconnects: DisconnectWatch | None = None,
    ) -> None:
        self.gateway = gateway
        self.limits = limits
        self.door = bedrock_door(auth, limits.max_body_bytes, disconnects)

    async def _request(self, request: Request, stream: bool) -> tuple[Principal, ChatRequest]:
        """Authenticate (SigV4 or bearer), read and translate the body."""
        who, w = await self.door.accept(request, wire.ConverseRequest.model_validate_json)
        model = request.path_params["model_id"]
        return who, to_chat_request(model, w, stream, self.limits.max_messages)

    async def converse(self, request: Request) -> Response:
        """POST /model/{modelId}/converse: API_runtime_Converse."""
        started = time.perf_counter()
        who, req = await self._request(request, stream=False)

        def render(resp: ChatResponse, info: CallInfo) -> JSONResponse:
            latency = round((time.perf_counter() - started) * 1000)
            return JSONResponse(render_converse(resp, latency), headers=_headers(info))

        return await self.door.respond(
            request,
            lambda client, defer: self.gateway.chat(who, req, "bedrock.converse", client, defer),
            render,
        )

    async def converse_stream(self, request: Request) -> Response:
        """POST /model/{modelId}/converse-stream: API_runtime_ConverseStream."""
        started = time.perf_counter()
        who, req = await self._request(request, stream=True)
        return await self.door.stream(
            request,
            lambda client: self.gateway.stream(who, req, "bedrock.converse_stream", client),
            lambda stream: self._events(stream, started),
            es.CONTENT_TYPE,
            _headers,
        )

    async def _events(
        self, stream: MeteredStream | BlockedStream, started: float
    ) -> AsyncGenerator[bytes, None]:
        """ConverseStreamOutput events: messageStart, content blocks, messageStop, metadata
        (an error after the start is the door's exception frame)."""
        yield es.event("messageStart", {"role": "assistant"})
        blocks = 0  # content blocks opened so far
        current: int | None = None  # the open block
        text_block: int | None = None
        tool_blocks: dict[int, int] = {}  # canonical tool-call index → block index

        def stop(index: int | None) -> list[bytes]:
            return (
                []
                if index is None
                else [es.event("contentBlockStop", {"contentBlockIndex": index})]
            )

        async for ev in stream.events():
            if isinstance(ev, TextDelta):
                if text_block is None or current != text_block:
                    for frame in stop(current):
                        yield frame
                    text_block = current = blocks
                    blocks += 1
                delta = {"delta": {"text": ev.text}, "contentBlockIndex": text_block}
                yield es.event("contentBlockDelta", delta)
            elif isinstance(ev, StreamEnd):
                for frame in stop(current):
                    yield frame
                yield es.event("messageStop", {"stopReason": _STOP[ev.finish_reason]})
                yield es.event(
                    "metadata",
                    {
                        "usage": _usage(ev.usage),
                        "metrics": {"latencyMs": round((time.perf_counter() - started) * 1000)},
                    },
                )
            elif isinstance(ev, ToolCallDelta):
                index = tool_blocks.get(ev.index)
                if index is None:
                    for frame in stop(current):
                        yield frame
                    index = tool_blocks[ev.index] = current = blocks
                    blocks += 1
                    use = {
                        "toolUseId": ev.id or f"tooluse_{uuid.uuid4().hex[:22]}",
                        "name": ev.name or "",
                    }
                    start = {"start": {"toolUse": use}, "contentBlockIndex": index}
                    yield es.event("contentBlockStart", start)
                if ev.arguments:
                    delta = {
                        "delta": {"toolUse": {"input": ev.arguments}},
                        "contentBlockIndex": index,
                    }
                    yield es.event("contentBlockDelta", delta)
