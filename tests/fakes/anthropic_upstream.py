"""A fake Anthropic Messages API upstream: a real aiohttp server on loopback, in a thread.

It serves `POST /v1/messages` (https://docs.anthropic.com/en/api/messages), as
a message or as the "Streaming Messages" event flow, and records every request.
It enforces the rules of the real API that a translation can break, answering
400 `invalid_request_error` when they are broken: `x-api-key` and
`anthropic-version` headers, `max_tokens`, user/assistant roles alternating,
non-empty text blocks, tool results first in their user message and each
answering a `tool_use` of the assistant message before it, `input` objects.

The behaviour is chosen by the upstream model id the request names:

    echo              reply "echo: <last user text>" (the tool results, if it has no
                      text); honours `stop_sequences` and `max_tokens` (in words)
    tools             if the last user message holds tool results, reply
                      "result: <their text>"; else "Let me check." and a `tool_use`
                      per tool (only the named one for tool_choice `tool`), with
                      input {"query": <last user text>} when the tool's schema has
                      a `query` property, else {} (streamed with no input delta)
    hold              stream the first text delta, then wait for `release()` (or 10 s)
    disconnect:<n>    stream n text deltas, then drop the connection
    stream-error:<n>  stream n text deltas, then an `error` event (overloaded_error)
    status:<code>     answer <code> with an Anthropic error body (529: overloaded_error)
    reflect:<code>    answer <code> with an error whose message holds every request header
    reflect-stream:<n>  stream n text deltas, then an `error` event holding every header
    ratelimit:<s>     429 rate_limit_error with `retry-after: <s>`
    slow:<s>          like echo, after <s> seconds
    malformed         200 with a body that is not JSON (a broken event when streaming)

Prompt caching is simulated for every behaviour: the words up to the last block (or
tool) carrying `cache_control` are the cached prefix; the first request with a prefix
reports them as `cache_creation_input_tokens`, later ones as `cache_read_input_tokens`,
and `input_tokens` counts the words after it.

The server lifecycle (`start`, `stop`, `url`, `received`, `one`, `release`) is
the fake OpenAI upstream's; only the request handler differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from aiohttp import web

from fakes.openai_upstream import FakeOpenAIUpstream, Recorded, reflected

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _text_of(content: Any, kind: str = "text") -> str:
    """The text of a message's content: its text blocks, or its tool results' text."""
    if isinstance(content, str):
        return content if kind == "text" else ""
    parts = []
    for block in content:
        if block.get("type") == kind == "text":
            parts.append(block["text"])
        elif block.get("type") == kind == "tool_result":
            parts.append(_text_of(block.get("content") or ""))
    return "".join(parts)


def last_user(body: dict[str, Any]) -> dict[str, Any]:
    return next((m for m in reversed(body["messages"]) if m["role"] == "user"), {"content": ""})


def count_words(body: dict[str, Any]) -> int:
    system = body.get("system") or ""
    words = len((system if isinstance(system, str) else _text_of(system)).split())
    for m in body["messages"]:
        words += len((_text_of(m["content"]) + " " + _text_of(m["content"], "tool_result")).split())
    return words


def check(body: Any) -> str | None:
    """What the real API would reject in `body`, or None."""
    if not isinstance(body, dict):
        return "The body must be a JSON object."
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous: dict[str, Any] | None = None
    for i, m in enumerate(messages):
        if m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: must be 'user' or 'assistant'"
        if previous is not None and previous["role"] == m["role"]:
            return 'messages: roles must alternate between "user" and "assistant"'
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        asked = {
            b["id"]
            for b in (previous or {}).get("content") or ()
            if isinstance(b, dict) and b.get("type") == "tool_use"
        }
        seen_other = False
        for j, b in enumerate(blocks):
            kind = b.get("type")
            if kind == "text" and not b.get("text"):
                return f"messages.{i}.content.{j}: text content blocks must be non-empty"
            if kind == "tool_use" and not isinstance(b.get("input"), dict):
                return f"messages.{i}.content.{j}.input: Input should be a valid dictionary"
            if kind == "tool_result":
                if seen_other:
                    return f"messages.{i}: tool_result blocks must come first in the content"
                if b.get("tool_use_id") not in asked:
                    return (
                        f"messages.{i}.content.{j}: unexpected tool_use_id {b.get('tool_use_id')!r}"
                    )
            else:
                seen_other = True
        previous = m
    for k, tool in enumerate(body.get("tools") or ()):
        if not tool.get("name") or not isinstance(tool.get("input_schema"), dict):
            return f"tools.{k}: `name` and `input_schema` are required"
    choice = body.get("tool_choice")
    if choice is not None and choice.get("type") not in ("auto", "any", "tool", "none"):
        return "tool_choice.type: must be auto, any, tool or none"
    if (body.get("temperature") or 0) > 1:
        return "temperature: Input should be less than or equal to 1"
    return None


def reply(body: dict[str, Any], behaviour: str) -> tuple[list[dict[str, Any]], str, str | None]:
    """The content blocks, stop_reason and stop_sequence of the reply to `body`."""
    content = last_user(body)["content"]
    results = _text_of(content, "tool_result")
    if behaviour == "tools" and body.get("tools") and not results:
        choice = body.get("tool_choice") or {}
        tools = [
            t for t in body["tools"] if choice.get("type") != "tool" or t["name"] == choice["name"]
        ]
        blocks: list[dict[str, Any]] = [{"type": "text", "text": "Let me check."}]
        for n, tool in enumerate(tools, 1):
            wants_query = "query" in (tool["input_schema"].get("properties") or {})
            blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{n:02}",
                    "name": tool["name"],
                    "input": {"query": _text_of(content)} if wants_query else {},
                }
            )
        return blocks, "tool_use", None
    text = f"result: {results}" if behaviour == "tools" else f"echo: {_text_of(content) or results}"
    stop, sequence = "end_turn", None
    for s in body.get("stop_sequences") or ():
        if s in text:
            text, stop, sequence = text[: text.index(s)], "stop_sequence", s
    words = text.split(" ")
    if len(words) > body["max_tokens"]:
        text, stop, sequence = " ".join(words[: body["max_tokens"]]), "max_tokens", None
    return [{"type": "text", "text": text}], stop, sequence


def output_tokens(blocks: list[dict[str, Any]]) -> int:
    return sum(len(b["text"].split()) if b["type"] == "text" else 5 for b in blocks)


def _event(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = _ERROR_TYPES.get(status, "api_error")
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}},
        status=status,
        headers=headers,
    )


def _cache_items(body: dict[str, Any]) -> list[tuple[Any, int, bool]]:
    """The prompt in order (tools, system, message blocks): (item, words, breakpoint)."""
    items: list[tuple[Any, int, bool]] = []
    for tool in body.get("tools") or ():
        items.append((tool, 0, "cache_control" in tool))
    system = body.get("system")
    if isinstance(system, str):
        items.append((system, len(system.split()), False))
    for block in system or () if isinstance(system, list) else ():
        items.append((block, len(block.get("text", "").split()), "cache_control" in block))
    for m in body.get("messages") or ():
        content = m.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks or ():
            words = len((_text_of([block]) + " " + _text_of([block], "tool_result")).split())
            items.append(([m["role"], block], words, "cache_control" in block))
    return items


class FakeAnthropicUpstream(FakeOpenAIUpstream):
    """Start with `start()` (or as a context manager); `url` is the API root (no /v1)."""

    def usage(self, body: dict[str, Any], output: int) -> dict[str, int]:
        """The request's usage, prompt cache included (see the module doc)."""
        cached, read, written = self.prompt_cache(_cache_items(body))
        return {
            "input_tokens": count_words(body) - cached,
            "output_tokens": output,
            "cache_creation_input_tokens": written,
            "cache_read_input_tokens": read,
        }

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        headers = {k.lower(): v for k, v in request.headers.items()}
        with self._lock:
            self.requests.append(
                Recorded(request.method, request.path, dict(request.query), headers, body)
            )
        if request.path != "/v1/messages":
            return error(404, f"Unknown path {request.path}.")
        if not headers.get("x-api-key"):
            return error(401, "x-api-key header is required")
        if not headers.get("anthropic-version"):
            return error(400, "anthropic-version header is required")
        problem = check(body)
        if problem:
            return error(400, problem)
        behaviour, _, arg = str(body.get("model", "")).partition(":")
        if behaviour == "slow":
            await asyncio.sleep(float(arg))
        elif behaviour == "status":
            return error(int(arg), f"fake upstream failure {arg}")
        elif behaviour == "reflect":
            return error(int(arg), reflected(request))
        elif behaviour == "ratelimit":
            return error(429, "Rate limit reached.", headers={"retry-after": arg})
        if behaviour == "malformed" and not body.get("stream"):
            return web.Response(
                status=200, text="{this is not json", content_type="application/json"
            )
        blocks, stop, sequence = reply(body, behaviour)
        if body.get("stream"):
            return await self._stream_reply(request, body, behaviour, arg, (blocks, stop, sequence))
        return web.json_response(
            {
                "id": "msg_fake0001",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": blocks,
                "stop_reason": stop,
                "stop_sequence": sequence,
                "usage": self.usage(body, output_tokens(blocks)),
            }
        )

    async def _stream_reply(
        self,
        request: web.Request,
        body: dict[str, Any],
        behaviour: str,
        arg: str,
        answer: tuple[list[dict[str, Any]], str, str | None],
    ) -> web.StreamResponse:
        blocks, stop, sequence = answer
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(
            _event(
                "message_start",
                message={
                    "id": "msg_fake0002",
                    "type": "message",
                    "role": "assistant",
                    "model": body["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": self.usage(body, 1),
                },
            )
        )
        await resp.write(_event("ping"))
        if behaviour == "malformed":
            await resp.write(b'event: content_block_start\ndata: {"type": "content_block_st\n\n')
            await resp.write_eof()
            return resp
        sent = 0
        for index, block in enumerate(blocks):
            if block["type"] == "text":
                await resp.write(
                    _event(
                        "content_block_start",
                        index=index,
                        content_block={"type": "text", "text": ""},
                    )
                )
                for piece in _pieces(block["text"]):
                    if behaviour in (
                        "disconnect",
                        "stream-error",
                        "reflect-stream",
                    ) and sent == int(arg):
                        return await self._fail(request, resp, behaviour)
                    await resp.write(
                        _event(
                            "content_block_delta",
                            index=index,
                            delta={"type": "text_delta", "text": piece},
                        )
                    )
                    sent += 1
                    if behaviour == "hold" and sent == 1:
                        assert self._gate is not None
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._gate.wait(), 10)
            else:
                await resp.write(
                    _event(
                        "content_block_start",
                        index=index,
                        content_block={
                            "type": "tool_use",
                            "id": block["id"],
                            "name": block["name"],
                            "input": {},
                        },
                    )
                )
                args = json.dumps(block["input"]) if block["input"] else ""
                for i in range(0, len(args), 7):
                    await resp.write(
                        _event(
                            "content_block_delta",
                            index=index,
                            delta={"type": "input_json_delta", "partial_json": args[i : i + 7]},
                        )
                    )
            await resp.write(_event("content_block_stop", index=index))
        await resp.write(
            _event(
                "message_delta",
                delta={"stop_reason": stop, "stop_sequence": sequence},
                usage={"output_tokens": output_tokens(blocks)},
            )
        )
        await resp.write(_event("message_stop"))
        await resp.write_eof()
        return resp

    async def _fail(
        self, request: web.Request, resp: web.StreamResponse, behaviour: str
    ) -> web.StreamResponse:
        if behaviour == "disconnect":
            assert request.transport is not None
            request.transport.abort()
            return resp
        message = reflected(request) if behaviour == "reflect-stream" else "Overloaded"
        await resp.write(_event("error", error={"type": "overloaded_error", "message": message}))
        await resp.write_eof()
        return resp
