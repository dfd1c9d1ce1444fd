"""A fake OpenAI-compatible upstream: a real aiohttp server on loopback, in a thread.

It speaks OpenAI's wire format (chat completions, streamed as server-sent
events ending with `data: [DONE]`, and embeddings) and records every request
it receives, so tests can assert what cumulo forwarded. The behaviour is
chosen by the upstream model id the request names (a deployment's `model`):

    echo              reply "echo: <last user text>" with usage; streams word by word
    tools             call the named tool_choice, else the first tool, with
                      arguments {"query": "<last user text>"}
    slow:<s>          like echo, but nothing is sent for <s> seconds
    hold              stream the first word, then wait for `release()` (or 10 s)
    disconnect:<n>    stream n content chunks, then drop the connection (no [DONE])
    status:<code>     answer <code> with an OpenAI error body
    reflect:<code>    answer <code> with an error whose message holds every request
                      header (as an upstream echoing what it was sent does)
    reflect-stream    stream one content chunk, then an error chunk holding every header
    ratelimit:<s>     429 with `Retry-After: <s>`
    ratelimit-once:<s>  429 with `Retry-After: <s>` the first time a prompt (last user
                      text) is seen, then like echo
    malformed         200 with a body that is not JSON (a broken chunk when streaming)
    embed             embeddings: a deterministic 8-float vector per input
    embed-reversed    the same, listed in reverse order (each item keeps its index)
    completions       text completions (`/completions`): each prompt's words, reversed,
                      with made-up log probabilities (-0.5 a word); streams word by word.
                      Any other model's `/completions` is a 404, as at an upstream that
                      serves chat only

Any path ending in `/chat/completions` or `/embeddings` is served, so Azure
style URLs (`/openai/deployments/<name>/chat/completions?api-version=…`) work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

CREATED = 1_700_000_000
EMBED_DIMS = 8


@dataclass(frozen=True)
class Recorded:
    """One request as the upstream received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: Any

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    def mentions(self, marker: str) -> bool:
        return marker in json.dumps(self.body)


def last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):
                return "".join(p.get("text") or "" for p in content)
            return str(content or "")
    return ""


def echo_reply(body: dict[str, Any]) -> str:
    return f"echo: {last_user_text(body)}"


def count_words(body: dict[str, Any]) -> int:
    return sum(len(str(m.get("content") or "").split()) for m in body.get("messages") or [])


def embedding_of(text: str) -> list[float]:
    """A deterministic vector whose floats are exact in float32 (multiples of 1/64)."""
    digest = hashlib.sha256(text.encode()).digest()
    return [(b - 128) / 64 for b in digest[:EMBED_DIMS]]


def tool_arguments(body: dict[str, Any]) -> str:
    return json.dumps({"query": last_user_text(body)})


def chosen_tool(body: dict[str, Any]) -> str:
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        return str(choice["function"]["name"])
    tools = body.get("tools") or []
    return str(tools[0]["function"]["name"]) if tools else "none"


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w + " " for w in words[:-1]] + [words[-1]]


class FakeOpenAIUpstream:
    """Start with `start()` (or as a context manager); `url` is the server root."""

    def __init__(self, port: int = 0) -> None:
        self.port = port  # 0: any free port; a fixed one lets a stopped upstream come back
        self.requests: list[Recorded] = []
        self._once: set[str] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._gate: asyncio.Event | None = None
        self.url = ""
        self.cached_prefixes: set[str] = set()  # prompt caching, for the fakes that have it

    def prompt_cache(self, items: list[tuple[Any, int, bool]]) -> tuple[int, int, int]:
        """(cached, read, written) words of a request whose prompt is `items` (item, its
        words, whether a cache mark ends it): the words up to the last mark are the cached
        prefix, written the first time that prefix is seen and read after."""
        last = max((i for i, (_, _, mark) in enumerate(items) if mark), default=-1)
        cached = sum(words for _, words, _ in items[: last + 1])
        if last < 0:
            return cached, 0, 0
        key = json.dumps([item for item, _, _ in items[: last + 1]], sort_keys=True)
        with self._lock:
            if key in self.cached_prefixes:
                return cached, cached, 0
            self.cached_prefixes.add(key)
        return cached, 0, cached

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakeOpenAIUpstream:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fake-openai-upstream", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        except BaseException:
            self.stop()
            raise
        return self

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._gate = asyncio.Event()
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        host, self.port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{self.port}"

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            self.release()
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()
        # Handlers still sleeping for clients that gave up (slow:<s>) end here.
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> FakeOpenAIUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use ----------------------------------------------------------

    def base_url(self, prefix: str = "/v1") -> str:
        return self.url + prefix

    def received(self, marker: str | None = None) -> list[Recorded]:
        """Requests received so far, optionally only those mentioning `marker`."""
        with self._lock:
            found = list(self.requests)
        return found if marker is None else [r for r in found if r.mentions(marker)]

    def one(self, marker: str) -> Recorded:
        """The single request mentioning `marker`."""
        found = self.received(marker)
        assert len(found) == 1, (
            f"expected one upstream request mentioning {marker!r}, got {len(found)}"
        )
        return found[0]

    def release(self) -> None:
        """Let the streams held so far (`hold`) finish; later ones are held again."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._open_gate)

    def _open_gate(self) -> None:
        assert self._gate is not None
        self._gate.set()
        self._gate = asyncio.Event()

    # -- handlers ----------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode(errors="replace")
        with self._lock:
            self.requests.append(
                Recorded(
                    method=request.method,
                    path=request.path,
                    query=dict(request.query),
                    headers={k.lower(): v for k, v in request.headers.items()},
                    body=body,
                )
            )
        if not isinstance(body, dict):
            return _error(400, "The body must be a JSON object.")
        behaviour, _, arg = str(body.get("model", "")).partition(":")
        if behaviour == "slow":
            await asyncio.sleep(float(arg))
        elif behaviour == "status":
            return _error(int(arg), f"fake upstream failure {arg}")
        elif behaviour == "reflect":
            return _error(int(arg), reflected(request))
        elif behaviour == "ratelimit":
            return _error(429, "Rate limit reached.", headers={"Retry-After": arg})
        elif behaviour == "ratelimit-once":
            prompt = last_user_text(body)
            with self._lock:
                first = prompt not in self._once
                self._once.add(prompt)
            if first:
                return _error(429, "Rate limit reached.", headers={"Retry-After": arg})
        if request.path.endswith("/embeddings"):
            return self._embeddings(body, behaviour)
        if request.path.endswith("/v1/completions") and behaviour == "completions":
            return await self._text_completion(request, body)
        if not request.path.endswith("/chat/completions"):
            return _error(404, f"Unknown path {request.path}.")
        if behaviour == "malformed" and not body.get("stream"):
            return web.Response(
                status=200, text="{this is not json", content_type="application/json"
            )
        if body.get("stream"):
            return await self._stream(request, body, behaviour, arg)
        resp = web.json_response(self._completion(body, behaviour))
        if behaviour == "cookie":  # as a stateful upstream (or a load balancer's affinity) does
            resp.set_cookie("session", "for-whoever-called-first")
        return resp

    def _completion(self, body: dict[str, Any], behaviour: str) -> dict[str, Any]:
        message: dict[str, Any]
        if behaviour == "tools":
            message = {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_fake0001",
                        "type": "function",
                        "function": {"name": chosen_tool(body), "arguments": tool_arguments(body)},
                    }
                ],
            }
            finish, completion = "tool_calls", 5
        else:
            content = echo_reply(body)
            message = {"role": "assistant", "content": content, "refusal": None}
            finish, completion = "stop", len(content.split())
        prompt = count_words(body)
        return {
            "id": "chatcmpl-fake0001",
            "object": "chat.completion",
            "created": CREATED,
            "model": body["model"],
            "system_fingerprint": "fp_fake",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }

    async def _stream(
        self, request: web.Request, body: dict[str, Any], behaviour: str, arg: str
    ) -> web.StreamResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        head = {
            "id": "chatcmpl-fake0002",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": body["model"],
            "system_fingerprint": "fp_fake",
        }

        def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk: dict[str, Any] = {
                **head,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                chunk["usage"] = None
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        if behaviour == "malformed":
            await resp.write(b'data: {"id": "chatcmpl-broken", "choices": [\n\n')
            await resp.write_eof()
            return resp
        if behaviour == "tools":
            args = tool_arguments(body)
            await resp.write(
                event(
                    {
                        "role": "assistant",
                        "content": None,
                        "refusal": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_fake0002",
                                "type": "function",
                                "function": {"name": chosen_tool(body), "arguments": ""},
                            }
                        ],
                    }
                )
            )
            for i in range(0, len(args), 7):
                await resp.write(
                    event(
                        {"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 7]}}]}
                    )
                )
            finish, completion = "tool_calls", 5
        else:
            content = echo_reply(body)
            await resp.write(event({"role": "assistant", "content": "", "refusal": None}))
            for n, piece in enumerate(_pieces(content)):
                if behaviour == "disconnect" and n == int(arg):
                    # Drop the connection mid-stream: no finish_reason, no [DONE]. The
                    # pause lets the chunks already sent be read first, as they would be
                    # from a real upstream that dies between tokens.
                    await asyncio.sleep(0.2)
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                await resp.write(event({"content": piece}))
                if behaviour == "reflect-stream":
                    error = {"error": {"message": reflected(request), "type": "server_error"}}
                    await resp.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                    await resp.write_eof()
                    return resp
                if behaviour == "hold" and n == 0:
                    assert self._gate is not None
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._gate.wait(), 10)
            finish, completion = "stop", len(content.split())
        await resp.write(event({}, finish))
        if include_usage:
            prompt = count_words(body)
            await resp.write(
                b"data: "
                + json.dumps(
                    {
                        **head,
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": completion,
                            "total_tokens": prompt + completion,
                        },
                    }
                ).encode()
                + b"\n\n"
            )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _text_completion(
        self, request: web.Request, body: dict[str, Any]
    ) -> web.StreamResponse:
        prompt = body.get("prompt")
        prompts = (
            [prompt]
            if isinstance(prompt, str)
            or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int))
            else list(prompt or [])
        )
        texts = [" ".join(reversed(str(p).split())) for p in prompts]

        def logprobs(text: str) -> dict[str, Any] | None:
            if body.get("logprobs") is None:
                return None
            words = _pieces(text)
            offsets = [sum(len(w) for w in words[:i]) for i in range(len(words))]
            return {
                "tokens": words,
                "token_logprobs": [-0.5] * len(words),
                "top_logprobs": [{w: -0.5} for w in words],
                "text_offset": offsets,
            }

        usage = {
            "prompt_tokens": sum(len(str(p).split()) for p in prompts),
            "completion_tokens": sum(len(t.split()) for t in texts),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        head = {
            "id": "cmpl-fake0001",
            "object": "text_completion",
            "created": CREATED,
            "model": body["model"],
        }
        if not body.get("stream"):
            return web.json_response(
                {
                    **head,
                    "usage": usage,
                    "choices": [
                        {"index": i, "text": t, "logprobs": logprobs(t), "finish_reason": "stop"}
                        for i, t in enumerate(texts)
                    ],
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for piece in _pieces(texts[0]):
            chunk = {
                **head,
                "choices": [
                    {"index": 0, "text": piece, "logprobs": logprobs(piece), "finish_reason": None}
                ],
            }
            await resp.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        end = {
            **head,
            "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}],
        }
        await resp.write(b"data: " + json.dumps(end).encode() + b"\n\n")
        await resp.write(
            b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n"
        )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _embeddings(self, body: dict[str, Any], behaviour: str) -> web.Response:
        if behaviour not in ("embed", "embed-reversed"):
            return _error(400, f"{body.get('model')} is not an embedding model.")
        inputs = body.get("input")
        texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_of(t)}
            for i, t in enumerate(texts)
        ]
        if behaviour == "embed-reversed":
            data.reverse()
        tokens = sum(len(str(t).split()) for t in texts)
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )


def reflected(request: web.Request) -> str:
    """An error text that echoes every request header, credentials included."""
    return "bad request, you sent: " + json.dumps(dict(request.headers))


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    kind = (
        "rate_limit_error"
        if status == 429
        else "server_error"
        if status >= 500
        else "invalid_request_error"
    )
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}},
        status=status,
        headers=headers,
    )
