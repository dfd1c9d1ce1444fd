"""A fake Bedrock runtime: a real aiohttp server on loopback speaking Converse.

`POST /model/{modelId}/converse` answers JSON; `/converse-stream` answers AWS's
binary event stream, framed here by a few lines written from the spec (not
cumulo's codec), each frame written in two pieces so that readers must
reassemble them. Every request must be SigV4-signed (service `bedrock`) with
ACCESS_KEY_ID/SECRET_KEY, checked by an independent implementation of the
signing spec below, or carry `Authorization: Bearer API_KEY`; else 403 as
AWS answers. Requests are recorded with how they authenticated.

The behaviour comes from the model id (%-decoded) up to its first `:`:

    echo              "echo: <last user text>"; streamed word by word
    tools             a toolUse of toolChoice.tool (else the first tool) with
                      input {"query": "<last user text>"}; streamed in pieces
    status:<code>     that HTTP status with Bedrock's error body and x-amzn-errortype
    stream-error:<t>  stream one text delta, then an exception frame of type <t>
    reflect:<code>    that HTTP status, with a message holding every request header
    reflect-stream    stream one text delta, then an exception frame holding every header
    corrupt           stream one good frame, then one with a bad message CRC
    truncated         stream messageStart and a delta, then end the body
    slow:<s>          like echo, after <s> seconds
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from fakes.openai_upstream import FakeOpenAIUpstream, reflected

ACCESS_KEY_ID = "AKIDFAKEBEDROCK0001"
SECRET_KEY = "fake/bedrock+secret0001"
SESSION_TOKEN = "fake-session-token-0001"
API_KEY = "bedrock-api-key-fake-0001"
REGION = "us-east-1"
ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_PATH = re.compile(r"^/model/([^/]+)/(converse|converse-stream)$")
_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
    r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$"
)


@dataclass(frozen=True)
class BedrockRecorded:
    """One request as the fake received it."""

    path: str  # raw, still %-encoded
    model_id: str
    operation: str
    headers: dict[str, str]  # lower-cased names
    body: Any
    auth: str  # "sigv4" or "bearer"

    def mentions(self, marker: str) -> bool:
        return marker in json.dumps(self.body)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def check_sigv4(method: str, raw_path: str, headers: dict[str, str], body: bytes) -> str | None:
    """Why the signature is wrong (None if it is right), from the SigV4 spec."""
    m = _AUTH.match(headers.get("authorization", ""))
    if m is None:
        return "malformed Authorization"
    key_id, date, region, service, signed, signature = m.groups()
    if (key_id, region, service) != (ACCESS_KEY_ID, REGION, "bedrock"):
        return f"wrong credential scope {key_id}/{region}/{service}"
    if headers.get("x-amz-security-token", SESSION_TOKEN) != SESSION_TOKEN:
        return "wrong session token"
    names = signed.split(";")
    canonical = "\n".join(
        [
            method,
            quote(raw_path, safe="/~"),  # non-S3 services: each segment encoded twice in total
            "",
            "".join(f"{n}:{' '.join(headers.get(n, '').split())}\n" for n in names),
            signed,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    amz_date = headers.get("x-amz-date", "")
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{SECRET_KEY}".encode(), date), region), service), "aws4_request"
    )
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(expected, signature) else "signature mismatch"


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (spec: prelude, headers, payload, CRCs)."""
    raw = b"".join(
        bytes([len(k)]) + k.encode() + b"\x07" + struct.pack(">H", len(v.encode())) + v.encode()
        for k, v in headers.items()
    )
    prelude = struct.pack(">II", 16 + len(raw) + len(payload), len(raw))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    message = prelude + raw + payload
    return message + struct.pack(">I", zlib.crc32(message))


def event(name: str, body: dict[str, Any]) -> bytes:
    headers = {":event-type": name, ":content-type": "application/json", ":message-type": "event"}
    return frame(headers, json.dumps({**body, "p": "abcdefgh"}).encode())  # AWS pads with "p"


def _texts(content: list[dict[str, Any]]) -> str:
    return "".join(str(b["text"]) for b in content if "text" in b)


def last_user_text(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user" and _texts(m.get("content") or []):
            return _texts(m["content"])
    return ""


def count_words(body: dict[str, Any]) -> int:
    blocks = [b for m in body.get("messages") or [] for b in m.get("content") or []]
    return sum(len(_texts([b]).split()) for b in blocks + list(body.get("system") or []))


def chosen_tool(body: dict[str, Any]) -> str:
    config = body.get("toolConfig") or {}
    choice = config.get("toolChoice") or {}
    if "tool" in choice:
        return str(choice["tool"]["name"])
    tools = config.get("tools") or []
    return str(tools[0]["toolSpec"]["name"]) if tools else "none"


def _error(status: int, message: str, kind: str | None = None) -> web.Response:
    kind = kind or ERROR_TYPES.get(status, "InternalServerException")
    return web.json_response(
        {"message": message},
        status=status,
        headers={"x-amzn-errortype": f"{kind}:http://internal.amazon.com/"},
    )


def _cache_items(body: dict[str, Any]) -> list[tuple[Any, int, bool]]:
    """The prompt in order (tools, system, message blocks): (item, words, cache point)."""
    items: list[tuple[Any, int, bool]] = []
    blocks = list((body.get("toolConfig") or {}).get("tools") or ())
    blocks += list(body.get("system") or ())
    for m in body.get("messages") or ():
        blocks += [[m["role"], b] for b in m.get("content") or ()]
    for item in blocks:
        block = item[1] if isinstance(item, list) else item
        items.append((item, len(_texts([block]).split()), "cachePoint" in block))
    return items


class FakeBedrockUpstream(FakeOpenAIUpstream):
    """Start with `start()` (or as a context manager); `url` is the endpoint root.

    Prompt caching is simulated: the words before the last `cachePoint` (in the tools,
    `system` or the messages) are the cached prefix; the first request with a prefix
    reports them as `cacheWriteInputTokens`, later ones as `cacheReadInputTokens`, and
    `inputTokens` counts the words after it."""

    def usage(self, body: dict[str, Any], output: int) -> dict[str, int]:
        cached, read, written = self.prompt_cache(_cache_items(body))
        prompt = count_words(body)
        return {
            "inputTokens": prompt - cached,
            "outputTokens": output,
            "totalTokens": prompt + output,
            "cacheReadInputTokens": read,
            "cacheWriteInputTokens": written,
        }

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        match = _PATH.match(request.raw_path)
        if match is None:
            return _error(404, f"Unknown path {request.raw_path}.", "UnknownOperationException")
        authorization = headers.get("authorization", "")
        if authorization.startswith("Bearer "):
            if authorization != f"Bearer {API_KEY}":
                return _error(403, "Invalid API key.", "AccessDeniedException")
            auth = "bearer"
        else:
            problem = check_sigv4(request.method, request.raw_path, headers, raw)
            if problem:
                return _error(
                    403,
                    f"The request signature is invalid: {problem}.",
                    "InvalidSignatureException",
                )
            auth = "sigv4"
        model_id, operation = unquote(match.group(1)), match.group(2)
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "The body is not JSON.")
        with self._lock:
            self.requests.append(
                BedrockRecorded(  # type: ignore[arg-type]
                    request.raw_path, model_id, operation, headers, body, auth
                )
            )
        behaviour, _, arg = model_id.partition(":")
        if behaviour == "slow":
            await asyncio.sleep(float(arg))
        elif behaviour == "status":
            return _error(int(arg), f"fake bedrock failure {arg}")
        elif behaviour == "reflect":
            return _error(int(arg), reflected(request))
        if operation == "converse":
            return web.json_response(self._converse(body, behaviour))
        return await self._stream(request, body, behaviour, arg)

    def _converse(self, body: dict[str, Any], behaviour: str) -> dict[str, Any]:
        if behaviour == "tools":
            content = [
                {
                    "toolUse": {
                        "toolUseId": "tooluse_fake0001",
                        "name": chosen_tool(body),
                        "input": {"query": last_user_text(body)},
                    }
                }
            ]
            stop, output = "tool_use", 5
        else:
            text = f"echo: {last_user_text(body)}"
            content, stop, output = [{"text": text}], "end_turn", len(text.split())
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop,
            "usage": self.usage(body, output),
            "metrics": {"latencyMs": 12},
        }

    async def _stream(
        self, request: web.Request, body: dict[str, Any], behaviour: str, arg: str
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await resp.prepare(request)

        async def send(data: bytes) -> None:
            half = len(data) // 2
            await resp.write(data[:half])
            await resp.write(data[half:])

        await send(event("messageStart", {"role": "assistant"}))
        if behaviour == "tools":
            args = json.dumps({"query": last_user_text(body)})
            await send(
                event(
                    "contentBlockStart",
                    {
                        "contentBlockIndex": 0,
                        "start": {
                            "toolUse": {"toolUseId": "tooluse_fake0002", "name": chosen_tool(body)}
                        },
                    },
                )
            )
            for i in range(0, len(args), 7):
                await send(
                    event(
                        "contentBlockDelta",
                        {"contentBlockIndex": 0, "delta": {"toolUse": {"input": args[i : i + 7]}}},
                    )
                )
            stop, output = "tool_use", 5
        else:
            words = f"echo: {last_user_text(body)}".split(" ")
            for n, word in enumerate(words):
                piece = word + (" " if n < len(words) - 1 else "")
                await send(
                    event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": piece}})
                )
                if behaviour in ("stream-error", "reflect-stream"):
                    kind, message = (
                        (arg, f"fake {arg}")
                        if behaviour == "stream-error"
                        else ("modelStreamErrorException", reflected(request))
                    )
                    await send(
                        frame(
                            {
                                ":exception-type": kind,
                                ":content-type": "application/json",
                                ":message-type": "exception",
                            },
                            json.dumps({"message": message}).encode(),
                        )
                    )
                    await resp.write_eof()
                    return resp
                if behaviour == "corrupt":
                    broken = bytearray(
                        event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}})
                    )
                    broken[-5] ^= 0xFF
                    await send(bytes(broken))
                    await resp.write_eof()
                    return resp
                if behaviour == "truncated":
                    await resp.write_eof()
                    return resp
            stop, output = "end_turn", len(words)
        await send(event("contentBlockStop", {"contentBlockIndex": 0}))
        await send(event("messageStop", {"stopReason": stop}))
        await send(
            event(
                "metadata",
                {
                    "usage": self.usage(body, output),
                    "metrics": {"latencyMs": 12},
                },
            )
        )
        await resp.write_eof()
        return resp
