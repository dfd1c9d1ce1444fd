"""`openai`: any upstream speaking OpenAI's chat-completions and embeddings API.

Text completions (`/v1/completions`, OpenAI's legacy API) pass through to upstreams that
serve them (vLLM, OpenAI's instruct models ...); an upstream without the endpoint (404 or
405) is a 400 naming the model.

OpenAI itself, Azure OpenAI (`auth_header: api-key` and `api_version`; the
`base_url` is the deployment's URL), vLLM, Ollama, TGI and other compatible
servers. Spec: https://platform.openai.com/docs/api-reference/chat

Streams are passed through line by line as the upstream sends them; the
upstream is always asked for a final usage chunk so that usage is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cached_property
from typing import Any

import aiohttp
import orjson
import yarl
from multidict import CIMultiDict

from cumulo.errors import (
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
)
from cumulo.providers.base import Provider, shown_url
from cumulo.providers.http import read_body, retry_after, status_error
from cumulo.types import (
    JSON,
    ChatRequest,
    ChatResponse,
    ChatStream,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    FinishReason,
    LogprobsDelta,
    Message,
    StreamEnd,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class OpenAIProvider(Provider):
    def describe(self) -> str:
        d = self.deployment
        return f"openai-compatible {d.model} at {shown_url(d.base_url or '')}"

    # -- request building ----------------------------------------------------

    def _url(self, path: str) -> yarl.URL:
        url = self._urls.get(path)
        if url is None:
            text = f"{(self.deployment.base_url or '').rstrip('/')}/{path}"
            if self.deployment.api_version:
                text += f"?api-version={self.deployment.api_version}"
            url = self._urls[path] = yarl.URL(text)
        return url

    @cached_property
    def _urls(self) -> dict[str, yarl.URL]:
        """Each path's URL, built and parsed once (the deployment is immutable)."""
        return {}

    # Built once: the deployment is immutable and a process's environment does not change.
    @cached_property
    def _headers(self) -> CIMultiDict[str]:
        # As the client's own type, which it would otherwise build from a dict per call.
        headers = CIMultiDict({"Content-Type": "application/json", **self.deployment.headers})
        key = self.deployment.api_key()
        if key:
            if self.deployment.auth_header == "api-key":
                headers["api-key"] = key
            else:
                headers["Authorization"] = f"Bearer {key}"
        return headers

    @cached_property
    def _timeout(self) -> aiohttp.ClientTimeout:
        """A stream's: the whole stream within `timeout_s`."""
        d = self.deployment
        return aiohttp.ClientTimeout(total=d.timeout_s, sock_connect=d.connect_timeout_s)

    @cached_property
    def _connect_timeout(self) -> aiohttp.ClientTimeout:
        """A single call's: the router ends it at `timeout_s` (no event-loop timer each)."""
        return aiohttp.ClientTimeout(total=None, sock_connect=self.deployment.connect_timeout_s)

    def _chat_body(self, req: ChatRequest, stream: bool) -> JSON:
        p = req.params
        body: JSON = {
            "model": self.deployment.model,
            "messages": [_message(m) for m in req.messages],
        }
        for key, value in (
            ("temperature", p.temperature),
            ("top_p", p.top_p),
            ("max_tokens", p.max_tokens),
            ("seed", p.seed),
            ("presence_penalty", p.presence_penalty),
            ("frequency_penalty", p.frequency_penalty),
            ("stop", p.stop or None),
            ("response_format", req.response_format),
            ("user", req.user),
        ):
            if value is not None:
                body[key] = value
        if req.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        k: v
                        for k, v in (
                            ("name", t.name),
                            ("description", t.description),
                            ("parameters", t.parameters),
                        )
                        if v is not None
                    },
                }
                for t in req.tools
            ]
        if req.tool_choice:
            tc = req.tool_choice
            body["tool_choice"] = (
                {"type": "function", "function": {"name": tc.name}}
                if tc.mode == "tool"
                else tc.mode
            )
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    # -- calls -----------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        data = await self._post_json("chat/completions", self._chat_body(request, stream=False))
        try:
            choice = data["choices"][0]
            msg = choice["message"]
            tool_calls = [
                ToolCall(tc["id"], tc["function"]["name"], tc["function"].get("arguments") or "")
                for tc in msg.get("tool_calls") or ()
            ]
            return ChatResponse(
                id=str(data.get("id") or ""),
                model=request.model,
                created=int(data.get("created") or 0),
                message=Message("assistant", msg.get("content"), tool_calls=tool_calls or None),
                finish_reason=_FINISH.get(choice.get("finish_reason") or "stop", "stop"),
                usage=_usage(data.get("usage")),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UpstreamError("Upstream returned a malformed chat completion.") from exc

    async def stream(self, request: ChatRequest) -> ChatStream:
        body = self._chat_body(request, stream=True)
        finish: FinishReason | None = None
        usage: Usage | None = None
        async with self._request("chat/completions", body) as resp:
            with _stream_errors():
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        yield StreamEnd(finish or "stop", usage)
                        return
                    chunk = orjson.loads(payload)
                    if chunk.get("error"):
                        raise status_error(self, 0, _error_message(chunk))
                    if chunk.get("usage"):
                        usage = _usage(chunk["usage"])
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        if delta.get("content"):
                            yield TextDelta(delta["content"])
                        for tc in delta.get("tool_calls") or ():
                            fn = tc.get("function") or {}
                            yield ToolCallDelta(
                                index=int(tc.get("index", 0)),
                                id=tc.get("id"),
                                name=fn.get("name"),
                                arguments=fn.get("arguments") or "",
                            )
                        if choice.get("finish_reason"):
                            finish = _FINISH.get(choice["finish_reason"], "stop")
        if finish is None:
            raise UpstreamError("Upstream closed the stream before it finished.")
        yield StreamEnd(finish, usage)

    def _completion_body(self, req: CompletionRequest, stream: bool) -> JSON:
        p = req.params
        prompts = req.prompts
        body: JSON = {
            "model": self.deployment.model,
            "prompt": prompts[0] if len(prompts) == 1 and isinstance(prompts[0], str) else prompts,
        }
        for key, value in (
            ("max_tokens", p.max_tokens),
            ("temperature", p.temperature),
            ("top_p", p.top_p),
            ("seed", p.seed),
            ("presence_penalty", p.presence_penalty),
            ("frequency_penalty", p.frequency_penalty),
            ("stop", p.stop or None),
            ("logprobs", req.logprobs),
            ("echo", req.echo or None),
            ("user", req.user),
        ):
            if value is not None:
                body[key] = value
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        try:
            data = await self._post_json("completions", self._completion_body(request, False))
        except _NoEndpoint as exc:
            raise self.no_completions(request.model) from exc
        try:
            choices = sorted(data["choices"], key=lambda c: int(c.get("index", 0)))
            return CompletionResponse(
                id=str(data.get("id") or ""),
                model=request.model,
                created=int(data.get("created") or 0),
                choices=[
                    CompletionChoice(
                        str(c.get("text") or ""),
                        _FINISH.get(c.get("finish_reason") or "stop", "stop"),
                        _logprobs(c.get("logprobs")),
                    )
                    for c in choices
                ],
                usage=_usage(data.get("usage")),
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise UpstreamError("Upstream returned a malformed completion.") from exc

    async def stream_complete(self, request: CompletionRequest) -> ChatStream:
        body = self._completion_body(request, stream=True)
        finish: FinishReason | None = None
        usage: Usage | None = None
        try:
            async with self._request("completions", body) as resp:
                with _stream_errors():
                    async for raw in resp.content:
                        line = raw.strip()
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            break
                        chunk = orjson.loads(payload)
                        if chunk.get("error"):
                            raise status_error(self, 0, _error_message(chunk))
                        if chunk.get("usage"):
                            usage = _usage(chunk["usage"])
                        for choice in chunk.get("choices") or ():
                            tokens = _logprobs(choice.get("logprobs"))
                            if tokens:
                                yield LogprobsDelta(tokens)
                            if choice.get("text"):
                                yield TextDelta(choice["text"])
                            if choice.get("finish_reason"):
                                finish = _FINISH.get(choice["finish_reason"], "stop")
        except _NoEndpoint as exc:
            raise self.no_completions(request.model) from exc
        if finish is None:
            raise UpstreamError("Upstream closed the stream before it finished.")
        yield StreamEnd(finish, usage)

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        body: JSON = {
            "model": self.deployment.model,
            "input": request.inputs,
            "encoding_format": "float",
        }
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user:
            body["user"] = request.user
        data = await self._post_json("embeddings", body)
        try:
            items = sorted(data["data"], key=lambda d: d.get("index", 0))
            vectors = [[float(x) for x in item["embedding"]] for item in items]
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError("Upstream returned malformed embeddings.") from exc
        return EmbeddingResponse(
            model=request.model, vectors=vectors, usage=_usage(data.get("usage"))
        )

    # -- transport -------------------------------------------------------------

    def _request(self, path: str, body: JSON) -> _Call:
        """A streamed call (the whole stream within `timeout_s`)."""
        return _Call(self, path, body, self._timeout)

    async def _post_json(self, path: str, body: JSON) -> Any:
        """POST and parse the JSON answer (the router ends the call at `timeout_s`)."""
        resp = await _send(self, path, body, self._connect_timeout)
        raw = await read_body(resp)
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("Upstream returned malformed JSON.") from exc


async def _send(
    p: OpenAIProvider, path: str, body: JSON, limits: aiohttp.ClientTimeout
) -> aiohttp.ClientResponse:
    """POST to the upstream; raises a cumulo error unless the status is 2xx (the response
    is then released). The caller releases a response it gets."""
    try:
        data = orjson.dumps(body)
    except orjson.JSONEncodeError as exc:  # e.g. an integer beyond 64 bits in `tools`
        raise InvalidRequest(f"The request cannot be encoded as JSON: {exc}.") from exc
    try:
        resp = await p.ctx.http.post(p._url(path), data=data, headers=p._headers, timeout=limits)
    except TimeoutError as exc:
        raise UpstreamTimeout("Upstream did not answer in time.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"Cannot reach upstream: {type(exc).__name__}.") from exc
    if resp.status >= 300:
        try:
            if path == "completions" and resp.status in (404, 405):
                raise _NoEndpoint
            await _raise_for_status(p, resp)
        finally:
            resp.release()
    return resp


class _NoEndpoint(Exception):
    """The upstream does not serve this path (404 or 405)."""


class _Call:
    """`async with`: a streamed call's response (`_send`), released at the end."""

    def __init__(
        self, provider: OpenAIProvider, path: str, body: JSON, timeout: aiohttp.ClientTimeout
    ) -> None:
        self.provider = provider
        self.path = path
        self.body = body
        self.timeout = timeout
        self._resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        self._resp = await _send(self.provider, self.path, self.body, self.timeout)
        return self._resp

    async def __aexit__(self, *exc: object) -> None:
        if self._resp is not None:
            self._resp.release()


@contextlib.contextmanager
def _stream_errors() -> Iterator[None]:
    """Failures while reading an upstream stream, as cumulo's errors (every streamed call)."""
    try:
        yield
    except TimeoutError as exc:
        raise UpstreamTimeout("Upstream timed out during the stream.") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(
            f"Upstream connection failed mid-stream: {type(exc).__name__}."
        ) from exc
    except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError) as exc:
        raise UpstreamError("Upstream sent a malformed stream chunk.") from exc


async def _raise_for_status(p: OpenAIProvider, resp: aiohttp.ClientResponse) -> None:
    code = None
    try:
        raw = await resp.read()
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    try:
        data = orjson.loads(raw)
        detail = _error_message(data) or raw.decode(errors="replace")
        code = _error_code(data)
    except orjson.JSONDecodeError:
        detail = raw.decode(errors="replace") or resp.reason or ""
    raise status_error(p, resp.status, detail, retry_after=retry_after(resp.headers), code=code)


def _error_message(data: Any) -> str:
    """The upstream's error message (for the server log only: `status_error`)."""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or "")
        if isinstance(err, str):
            return err
    return ""


def _error_code(data: Any) -> str | None:
    """OpenAI's error code, e.g. `context_length_exceeded` (drives context-window fallback)."""
    err = data.get("error") if isinstance(data, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


def _usage(data: Any) -> Usage:
    if not isinstance(data, dict):
        return Usage()
    details = data.get("prompt_tokens_details")
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    return Usage(
        int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0), cached
    )


def _logprobs(data: Any) -> list[TokenLogprob] | None:
    """OpenAI's completion `logprobs` object as canonical tokens."""
    if not isinstance(data, dict):
        return None
    tokens = data.get("tokens") or []
    values = data.get("token_logprobs") or []
    tops = data.get("top_logprobs") or []
    offsets = data.get("text_offset") or []
    out = []
    for i, token in enumerate(tokens):
        value = values[i] if i < len(values) else None
        top = tops[i] if i < len(tops) else None
        out.append(
            TokenLogprob(
                str(token),
                None if value is None else float(value),
                None if top is None else {str(k): float(v) for k, v in top.items()},
                int(offsets[i]) if i < len(offsets) else 0,
            )
        )
    return out


def _message(m: Message) -> JSON:
    out: JSON = {"role": m.role, "content": m.content}
    if m.name:
        out["name"] = m.name
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": tc.id,
                "type": "function",
                "function": {"name": tc.name, "arguments": tc.arguments},
            }
            for tc in m.tool_calls
        ]
    if m.tool_call_id:
        out["tool_call_id"] = m.tool_call_id
    return out
