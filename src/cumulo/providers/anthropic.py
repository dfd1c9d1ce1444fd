"""`anthropic`: Anthropic's Messages API (https://docs.anthropic.com/en/api/messages).

`POST {base_url}/v1/messages` (default base URL https://api.anthropic.com) with
the key from `api_key_env` as `x-api-key` and `anthropic-version: 2023-06-01`;
a deployment's `headers` are sent too (e.g. `anthropic-beta`) and may override
the version.

Canonical → Anthropic: system messages become the top-level `system`; an
assistant's tool calls become `tool_use` blocks (`input` is the parsed
arguments); tool messages become `tool_result` blocks in a user message;
consecutive messages of one role are merged, tool results first, as the API
requires. `max_tokens` is required upstream: 4096 unless the request sets it.
Seed, penalties and `response_format` have no Anthropic equivalent and are not
sent. A canonical `cache_point` becomes `cache_control: {"type": "ephemeral"}` on the
message's last block (the system prompt is then sent as text blocks) or on the tool
definition. Prompt tokens count cached input too (`input_tokens` +
`cache_creation_input_tokens` + `cache_read_input_tokens`); the reads are the usage's
`cached_tokens`, the creations its `cache_write_tokens`.

Streams ("Streaming Messages") are translated event by event as they arrive:
`text_delta` → TextDelta, `tool_use` blocks and their `input_json_delta`s →
ToolCallDelta (index = the tool's ordinal among the message's tool calls),
`message_stop` → StreamEnd; an `error` event raises UpstreamError.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from cumulo.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from cumulo.providers.base import Provider, shown_url
from cumulo.providers.http import read_body, retry_after, status_error
from cumulo.types import (
    JSON,
    ChatRequest,
    ChatResponse,
    ChatStream,
    FinishReason,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096

_STOP: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
_TOOL_CHOICE = {"auto": "auto", "required": "any", "none": "none", "tool": "tool"}


class AnthropicProvider(Provider):
    def describe(self) -> str:
        return f"anthropic {self.deployment.model} at {shown_url(self._base_url())}"

    def _base_url(self) -> str:
        return (self.deployment.base_url or DEFAULT_BASE_URL).rstrip("/")

    def _headers(self) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
            **self.deployment.headers,
        }
        key = self.deployment.api_key()
        if key:
            headers["x-api-key"] = key
        return headers

    # -- calls -----------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        async with self._post(messages_body(request, self.deployment.model or "", False)) as resp:
            raw = await read_body(resp)
        try:
            return chat_response(orjson.loads(raw), request.model)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError("Upstream returned a malformed message.") from exc

    async def stream(self, request: ChatRequest) -> ChatStream:
        state = _StreamState(self)
        async with self._post(messages_body(request, self.deployment.model or "", True)) as resp:
            data: list[bytes] = []
            try:
                async for raw in resp.content:
                    line = raw.rstrip(b"\r\n")
                    if line.startswith(b"data:"):
                        data.append(line[5:].strip())
                    elif not line and data:  # a blank line ends an event
                        event, data = orjson.loads(b"\n".join(data)), []
                        for out in state.feed(event):
                            yield out
                            if isinstance(out, StreamEnd):
                                return
            except TimeoutError as exc:
                raise UpstreamTimeout("Upstream timed out during the stream.") from exc
            except aiohttp.ClientError as exc:
                raise UpstreamError(
                    f"Upstream connection failed mid-stream: {type(exc).__name__}."
                ) from exc
            except (orjson.JSONDecodeError, KeyError, AttributeError, TypeError, ValueError) as exc:
                raise UpstreamError("Upstream sent a malformed stream event.") from exc
        raise UpstreamError("Upstream closed the stream before it finished.")

    # -- transport -------------------------------------------------------------

    @asynccontextmanager
    async def _post(self, body: JSON) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST /v1/messages; raises a cumulo error unless the status is 2xx."""
        d = self.deployment
        try:
            data = orjson.dumps(body)
        except orjson.JSONEncodeError as exc:
            raise InvalidRequest(f"The request cannot be encoded as JSON: {exc}.") from exc
        try:
            resp = await self.ctx.http.post(
                f"{self._base_url()}/v1/messages",
                data=data,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=d.timeout_s, sock_connect=d.connect_timeout_s),
            )
        except TimeoutError as exc:
            raise UpstreamTimeout("Upstream did not answer in time.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Cannot reach upstream: {type(exc).__name__}.") from exc
        try:
            if resp.status >= 300:
                await _raise_for_status(self, resp)
            yield resp
        finally:
            resp.release()


# -- canonical → Anthropic ------------------------------------------------------


def messages_body(req: ChatRequest, model: str, stream: bool) -> JSON:
    """The Messages API request body for `req`, sent as the upstream `model`."""
    p = req.params
    system, messages = _messages(req.messages)
    body: JSON = {
        "model": model,
        "messages": messages,
        "max_tokens": p.max_tokens or DEFAULT_MAX_TOKENS,
    }
    optional = {
        "system": system,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "stop_sequences": p.stop or None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if req.tools:
        body["tools"] = [
            {
                "name": t.name,
                **({"description": t.description} if t.description else {}),
                "input_schema": t.parameters or {"type": "object", "properties": {}},
                **({"cache_control": _EPHEMERAL} if t.cache_point else {}),
            }
            for t in req.tools
        ]
    if req.tool_choice:
        tc = req.tool_choice
        body["tool_choice"] = {"type": _TOOL_CHOICE[tc.mode]}
        if tc.mode == "tool":
            body["tool_choice"]["name"] = tc.name
    if stream:
        body["stream"] = True
    return body


_EPHEMERAL: JSON = {"type": "ephemeral"}


def _messages(messages: list[Message]) -> tuple[str | list[JSON] | None, list[JSON]]:
    """The top-level `system` (text blocks when one has a cache breakpoint) and the
    alternating user/assistant messages."""
    system: list[Message] = []
    out: list[JSON] = []
    for m in messages:
        if m.role == "system":
            if m.content:
                system.append(m)
            continue
        role = "assistant" if m.role == "assistant" else "user"
        blocks = _blocks(m)
        if out and out[-1]["role"] == role:
            merged = out[-1]["content"] + blocks
            # Tool results must open a user message; any text follows them.
            out[-1]["content"] = [b for b in merged if b["type"] == "tool_result"] + [
                b for b in merged if b["type"] != "tool_result"
            ]
        else:
            out.append({"role": role, "content": blocks})
    if any(m.cache_point for m in system):
        text_blocks = []
        for m in system:
            block: JSON = {"type": "text", "text": m.content}
            if m.cache_point:
                block["cache_control"] = _EPHEMERAL
            text_blocks.append(block)
        return text_blocks, out
    return ("\n\n".join(m.content or "" for m in system) or None), out


def _blocks(m: Message) -> list[JSON]:
    blocks = _plain_blocks(m)
    if m.cache_point:
        blocks[-1]["cache_control"] = _EPHEMERAL
    return blocks


def _plain_blocks(m: Message) -> list[JSON]:
    if m.role == "tool":
        block: JSON = {"type": "tool_result", "tool_use_id": m.tool_call_id or ""}
        if m.content:
            block["content"] = m.content
        return [block]
    blocks: list[JSON] = []
    if m.content or not m.tool_calls:
        blocks.append({"type": "text", "text": m.content or ""})
    for call in m.tool_calls or ():
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _arguments(call)}
        )
    return blocks


def _arguments(call: ToolCall) -> JSON:
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"The arguments of tool call {call.id!r} must be a JSON object for this model."
        )
    return value


# -- Anthropic → canonical ------------------------------------------------------


def chat_response(data: Any, model: str) -> ChatResponse:
    """A canonical response from a Messages API `message` object."""
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in data["content"]:
        if block["type"] == "text":
            texts.append(block["text"])
        elif block["type"] == "tool_use":
            calls.append(ToolCall(block["id"], block["name"], json.dumps(block.get("input") or {})))
    return ChatResponse(
        id=str(data.get("id") or ""),
        model=model,
        created=0,
        message=Message("assistant", "".join(texts) if texts else None, tool_calls=calls or None),
        finish_reason=_STOP.get(data.get("stop_reason") or "end_turn", "stop"),
        usage=_usage(data.get("usage")) or Usage(),
    )


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, dict):
        return None
    written = int(data.get("cache_creation_input_tokens") or 0)
    read = int(data.get("cache_read_input_tokens") or 0)
    inputs = int(data.get("input_tokens") or 0)
    return Usage(inputs + written + read, int(data.get("output_tokens") or 0), read, written)


def _delta_usage(data: Any, before: Usage) -> Usage:
    """A `message_delta`'s usage over `message_start`'s: the output count, and the input
    counts only when it repeats them."""
    if not isinstance(data, dict):
        return before
    if data.get("input_tokens") is None:
        out = int(data.get("output_tokens") or 0)
        return Usage(before.prompt_tokens, out, before.cached_tokens, before.cache_write_tokens)
    return _usage(data) or before


class _StreamState:
    """Turns the Messages API's stream events into canonical events, in order."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider  # names the deployment in an error event's error
        self.tools: dict[int, int] = {}  # content block index → tool ordinal
        self.with_arguments: set[int] = set()
        self.finish: FinishReason = "stop"
        self.usage = Usage()

    def feed(self, event: JSON) -> Iterator[StreamEvent]:
        kind = event.get("type")
        if kind == "message_start":
            self.usage = _usage(event["message"].get("usage")) or Usage()
        elif kind == "content_block_start":
            block = event["content_block"]
            if block["type"] == "text" and block.get("text"):
                yield TextDelta(block["text"])
            elif block["type"] == "tool_use":
                ordinal = self.tools[int(event["index"])] = len(self.tools)
                arguments = json.dumps(block["input"]) if block.get("input") else ""
                if arguments:
                    self.with_arguments.add(ordinal)
                yield ToolCallDelta(
                    ordinal, id=block["id"], name=block["name"], arguments=arguments
                )
        elif kind == "content_block_delta":
            delta = event["delta"]
            if delta["type"] == "text_delta" and delta["text"]:
                yield TextDelta(delta["text"])
            elif delta["type"] == "input_json_delta" and delta["partial_json"]:
                ordinal = self.tools[int(event["index"])]
                self.with_arguments.add(ordinal)
                yield ToolCallDelta(ordinal, arguments=delta["partial_json"])
        elif kind == "content_block_stop":
            stopped = self.tools.get(int(event["index"]))
            if stopped is not None and stopped not in self.with_arguments:
                yield ToolCallDelta(stopped, arguments="{}")  # a tool called without input
        elif kind == "message_delta":
            stop = (event.get("delta") or {}).get("stop_reason")
            if stop:
                self.finish = _STOP.get(stop, "stop")
            self.usage = _delta_usage(event.get("usage"), self.usage)
        elif kind == "message_stop":
            yield StreamEnd(self.finish, self.usage)
        elif kind == "error":
            raise status_error(self.provider, 0, _error_message(event))


# -- errors ---------------------------------------------------------------------


async def _raise_for_status(p: Provider, resp: aiohttp.ClientResponse) -> None:
    """Anthropic's error statuses as cumulo errors (https://docs.anthropic.com/en/api/errors)."""
    try:
        raw = await resp.read()
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    try:
        detail = _error_message(orjson.loads(raw)) or raw.decode(errors="replace")
    except orjson.JSONDecodeError:
        detail = raw.decode(errors="replace") or resp.reason or ""
    raise status_error(p, resp.status, detail, retry_after=retry_after(resp.headers))


def _error_message(data: Any) -> str:
    """The upstream's error, for the server log only (`status_error`)."""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        kind, message = err.get("type"), str(err.get("message") or "")
        return f"{kind}: {message}" if kind else message
    return ""
