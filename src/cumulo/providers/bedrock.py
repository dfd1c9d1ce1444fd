"""`bedrock`: Amazon Bedrock's runtime Converse API.

Spec: https://docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html
and `API_runtime_ConverseStream.html` (the stream is AWS's binary event stream,
decoded by `cumulo.eventstream`).

Requests are signed with Signature V4 (botocore's signer, service `bedrock`)
using the credentials named by `aws_access_key_id_env` / `aws_secret_access_key_env`
/ `aws_session_token_env`, else those of the standard AWS chain (env, profile,
container or instance role), resolved once at start. A deployment with
`api_key_env` sends a Bedrock API key as `Authorization: Bearer` instead.

Canonical ⇄ Converse: system messages become `system` blocks; tool results
become user messages with `toolResult` blocks; consecutive messages of one
role are merged (Converse wants them alternating). `top_k`, `seed`, penalties
and `response_format` have no Converse equivalent and are not sent; a
`tool_choice` of `none` sends the tools without a `toolChoice`. A canonical
`cache_point` becomes a `cachePoint` block after the message's content, the system
prompt's text or the tool's spec. Usage: `inputTokens` + `cacheReadInputTokens` +
`cacheWriteInputTokens` are the prompt tokens, the reads its `cached_tokens`.
"""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
import yarl
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.session import get_session

from cumulo.errors import (
    CumuloError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
)
from cumulo.eventstream import Decoder, FramingError
from cumulo.eventstream import Message as Frame
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
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

SERVICE = "bedrock"
_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_REGION_IN_HOST = re.compile(r"^bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")


class BedrockProvider(Provider):
    _bearer: str | None = None
    _credentials: Any = None  # botocore Credentials (maybe refreshable); None with a bearer key
    _region: str | None = None

    def describe(self) -> str:
        return f"bedrock {self.deployment.model} at {shown_url(self._base_url())}"

    def credentials(self) -> tuple[str, ...]:
        """Also the AWS access key id and session token sent with SigV4 (when they came
        from environment variables: refreshable credentials are not read here)."""
        creds = self._credentials
        sent = (creds.access_key, creds.token) if type(creds) is Credentials else ()
        return (*super().credentials(), *(v for v in sent if v))

    def _base_url(self) -> str:
        d = self.deployment
        return (d.base_url or f"https://bedrock-runtime.{d.region}.amazonaws.com").rstrip("/")

    async def start(self) -> None:
        """Resolve the credentials once: a bearer key, named env vars, or the AWS chain."""
        d = self.deployment
        if d.api_key_env:
            self._bearer = d.api_key()
            if not self._bearer:
                raise UpstreamError(f"environment variable {d.api_key_env} is not set")
            return
        host = urlsplit(self._base_url()).hostname or ""
        match = _REGION_IN_HOST.match(host)
        self._region = d.region or (match.group(1) if match else None)
        if not self._region:
            raise UpstreamError("a SigV4-signed bedrock deployment needs `region`")
        if d.aws_access_key_id_env and d.aws_secret_access_key_env:
            key_id = os.environ.get(d.aws_access_key_id_env)
            secret = os.environ.get(d.aws_secret_access_key_env)
            token = os.environ.get(d.aws_session_token_env) if d.aws_session_token_env else None
            if not (key_id and secret):
                raise UpstreamError("the AWS credentials' environment variables are not set")
            self._credentials = Credentials(key_id, secret, token)
        else:  # the chain may read files or ask the instance metadata service: off the loop
            self._credentials = await asyncio.to_thread(lambda: get_session().get_credentials())
            if self._credentials is None:
                raise UpstreamError("no AWS credentials found for the bedrock deployment")

    # -- requests --------------------------------------------------------------

    def _url(self, operation: str) -> str:
        return f"{self._base_url()}/model/{quote(self.deployment.model or '', safe='')}/{operation}"

    async def _headers(self, url: str, body: bytes, accept: str) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": accept, **self.deployment.headers}
        if self._bearer:
            return {**headers, "Authorization": f"Bearer {self._bearer}"}
        if self._credentials is None:
            raise UpstreamError("the bedrock deployment has no credentials (not started)")
        creds = self._credentials
        refresh_needed = getattr(creds, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():  # refreshing may do I/O
            frozen = await asyncio.to_thread(creds.get_frozen_credentials)
        else:
            frozen = creds.get_frozen_credentials()
        signed = AWSRequest(method="POST", url=url, data=body, headers=headers)
        SigV4Auth(frozen, SERVICE, self._region).add_auth(signed)
        return {str(k): str(v) for k, v in signed.headers.items()}

    async def _post(self, operation: str, req: ChatRequest, accept: str) -> aiohttp.ClientResponse:
        url = self._url(operation)
        body = orjson.dumps(converse_body(req))
        headers = await self._headers(url, body, accept)
        d = self.deployment
        timeout = aiohttp.ClientTimeout(total=d.timeout_s, sock_connect=d.connect_timeout_s)
        try:
            # encoded=True: send the path exactly as signed (the model id stays %-encoded).
            resp = await self.ctx.http.post(
                yarl.URL(url, encoded=True), data=body, headers=headers, timeout=timeout
            )
        except TimeoutError as exc:
            raise UpstreamTimeout("Upstream did not answer in time.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"Cannot reach upstream: {type(exc).__name__}.") from exc
        if resp.status >= 300:
            try:
                raise await _status_error(self, resp)
            finally:
                resp.release()
        return resp

    async def chat(self, request: ChatRequest) -> ChatResponse:
        resp = await self._post("converse", request, "application/json")
        raw = await read_body(resp)
        try:
            data = orjson.loads(raw)
            blocks = data["output"]["message"].get("content") or []
            texts = [b["text"] for b in blocks if "text" in b]
            calls = [
                ToolCall(b["toolUse"]["toolUseId"], b["toolUse"]["name"], _json(b["toolUse"]))
                for b in blocks
                if "toolUse" in b
            ]
            return ChatResponse(
                id="",
                model=request.model,
                created=0,
                message=Message(
                    "assistant",
                    "".join(texts) if texts or not calls else None,
                    tool_calls=calls or None,
                ),
                finish_reason=_FINISH.get(str(data.get("stopReason")), "stop"),
                usage=_usage(data.get("usage")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise UpstreamError("Upstream returned a malformed Converse response.") from exc

    async def stream(self, request: ChatRequest) -> ChatStream:
        resp = await self._post("converse-stream", request, "application/vnd.amazon.eventstream")
        decoder = Decoder()
        tools: dict[int, int] = {}  # contentBlockIndex → canonical tool-call index
        finish: FinishReason | None = None
        usage: Usage | None = None
        try:
            async for chunk in resp.content.iter_any():
                for message in decoder.feed(chunk):
                    kind = message.message_type
                    if kind != "event":
                        raise _stream_error(self, message)
                    name = message.header(":event-type")
                    data = orjson.loads(message.payload) if message.payload else {}
                    if name == "contentBlockStart":
                        start = (data.get("start") or {}).get("toolUse")
                        if start:
                            index = tools.setdefault(int(data["contentBlockIndex"]), len(tools))
                            yield ToolCallDelta(index, id=start["toolUseId"], name=start["name"])
                    elif name == "contentBlockDelta":
                        delta = data.get("delta") or {}
                        if delta.get("text"):
                            yield TextDelta(delta["text"])
                        elif "toolUse" in delta:
                            block = int(data["contentBlockIndex"])
                            index = tools.setdefault(block, len(tools))
                            yield ToolCallDelta(
                                index, arguments=delta["toolUse"].get("input") or ""
                            )
                    elif name == "messageStop":
                        finish = _FINISH.get(str(data.get("stopReason")), "stop")
                    elif name == "metadata":
                        usage = _usage(data.get("usage"))
                        if finish is not None:  # metadata is the last event
                            yield StreamEnd(finish, usage)
                            return
        except TimeoutError as exc:
            raise UpstreamTimeout("Upstream timed out during the stream.") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                f"Upstream connection failed mid-stream: {type(exc).__name__}."
            ) from exc
        except (FramingError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(
                f"Upstream sent a malformed event stream ({type(exc).__name__})."
            ) from exc
        finally:
            resp.release()
        if finish is None or decoder.pending:
            raise UpstreamError("Upstream closed the stream before it finished.")
        yield StreamEnd(finish, usage)


# -- canonical → Converse ------------------------------------------------------------


def _tool_input(call: ToolCall) -> Any:
    if not call.arguments.strip():
        return {}
    try:
        return orjson.loads(call.arguments)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"The arguments of tool call {call.id!r} are not valid JSON.", param="messages"
        ) from exc


_CACHE_POINT: JSON = {"cachePoint": {"type": "default"}}


def _blocks(m: Message) -> list[JSON]:
    blocks = _plain_blocks(m)
    return [*blocks, _CACHE_POINT] if m.cache_point else blocks


def _plain_blocks(m: Message) -> list[JSON]:
    if m.role == "tool":
        result: JSON = {"toolUseId": m.tool_call_id or "", "content": [{"text": m.content or ""}]}
        return [{"toolResult": result}]
    blocks: list[JSON] = [{"text": m.content}] if m.content else []
    for call in m.tool_calls or ():
        use = {"toolUseId": call.id, "name": call.name, "input": _tool_input(call)}
        blocks.append({"toolUse": use})
    return blocks or [{"text": m.content or ""}]


def converse_body(req: ChatRequest) -> JSON:
    """The Converse request body for `req` (the model id travels in the URL)."""
    system: list[JSON] = []
    messages: list[JSON] = []
    for m in req.messages:
        if m.role == "system":
            if m.content:
                system.append({"text": m.content})
                if m.cache_point:
                    system.append(_CACHE_POINT)
            continue
        role = "assistant" if m.role == "assistant" else "user"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(_blocks(m))
        else:
            messages.append({"role": role, "content": _blocks(m)})
    body: JSON = {"messages": messages}
    if system:
        body["system"] = system
    p = req.params
    config = {
        "maxTokens": p.max_tokens,
        "temperature": p.temperature,
        "topP": p.top_p,
        "stopSequences": p.stop or None,
    }
    config = {k: v for k, v in config.items() if v is not None}
    if config:
        body["inferenceConfig"] = config
    if req.tools:
        specs = []
        for t in req.tools:
            spec: JSON = {
                "name": t.name,
                "inputSchema": {"json": t.parameters or {"type": "object"}},
            }
            if t.description:
                spec["description"] = t.description
            specs.append({"toolSpec": spec})
            if t.cache_point:
                specs.append(_CACHE_POINT)
        tool_config: JSON = {"tools": specs}
        choice = req.tool_choice
        if choice is not None and choice.mode == "auto":
            tool_config["toolChoice"] = {"auto": {}}
        elif choice is not None and choice.mode == "required":
            tool_config["toolChoice"] = {"any": {}}
        elif choice is not None and choice.mode == "tool":
            tool_config["toolChoice"] = {"tool": {"name": choice.name}}
        body["toolConfig"] = tool_config
    return body


# -- Converse → canonical ------------------------------------------------------------


def _json(tool_use: JSON) -> str:
    return orjson.dumps(tool_use.get("input", {})).decode()


def _usage(data: Any) -> Usage:
    if not isinstance(data, dict):
        return Usage()
    read = int(data.get("cacheReadInputTokens") or 0)
    written = int(data.get("cacheWriteInputTokens") or 0)
    inputs = int(data.get("inputTokens") or 0) + read + written
    return Usage(inputs, int(data.get("outputTokens") or 0), read, written)


def _error(
    p: Provider, code: str, status: int, detail: str, retry_after: float | None = None
) -> CumuloError:
    """A Bedrock error type (or, failing that, HTTP status) as a cumulo error; `status` 0:
    an exception inside the stream. The upstream's text is only logged (`status_error`)."""
    code = code[:1].upper() + code[1:]  # stream exceptions are camelCase
    kind = {
        "ValidationException": 400,
        "ThrottlingException": 429,
        "ServiceQuotaExceededException": 429,
        "ModelTimeoutException": 408,
    }.get(code)
    logged = f"{code}: {detail}" if code else detail
    streamed = not status
    return status_error(p, kind or status, logged, streamed=streamed, retry_after=retry_after)


async def _status_error(p: Provider, resp: aiohttp.ClientResponse) -> CumuloError:
    code = resp.headers.get("x-amzn-errortype", "").split(":", 1)[0]
    try:
        raw = await resp.read()
    except (TimeoutError, aiohttp.ClientError):
        raw = b""
    try:
        data = orjson.loads(raw)
        detail = str(data.get("message") or data.get("Message") or "") or raw.decode(
            errors="replace"
        )
        code = code or str(data.get("__type") or "").rsplit("#", 1)[-1]
    except (orjson.JSONDecodeError, AttributeError):
        detail = raw.decode(errors="replace") or resp.reason or ""
    return _error(p, code, resp.status, detail, retry_after(resp.headers))


def _stream_error(p: Provider, message: Frame) -> CumuloError:
    """An `exception` or `error` message inside the stream."""
    if message.message_type == "exception":
        try:
            detail = str(orjson.loads(message.payload).get("message") or "")
        except (orjson.JSONDecodeError, AttributeError):
            detail = ""
        return _error(p, message.header(":exception-type") or "", 0, detail)
    if message.message_type == "error":
        code = message.header(":error-code") or ""
        return _error(p, code, 0, message.header(":error-message") or "")
    return UpstreamError(f"Unexpected event stream message type {message.message_type!r}.")
