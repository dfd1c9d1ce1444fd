"""A minimal, fast OpenAI-compatible upstream for benchmarks.

A raw ASGI app (no framework) that answers POST /v1/chat/completions with one
fixed chat completion, served by uvicorn with httptools and uvloop, one
worker, access log off. It reads the request body (so the client's write is
real) but does not parse it: it only looks for `"stream": true` (then the same
completion comes as server-sent events, with usage) and for a model whose name
holds `judge` (then the answer is a judge's verdict, `{"label": "correct",
"score": 0.8}`, which eval graders read). POST /v1/embeddings answers one fixed
vector per input (the inputs are counted, the only parse).

    python bench/upstream.py --port 9001
"""

from __future__ import annotations

import argparse
import json
import re

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench0000000000000000000000",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-bench",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! How can I help you today?",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    },
    separators=(",", ":"),
).encode()

VERDICT = '{"label": "correct", "score": 0.8}'
JUDGED = COMPLETION.replace(b"Hello! How can I help you today?", json.dumps(VERDICT)[1:-1].encode())


def _sse(content: str) -> bytes:
    def chunk(delta: dict, finish: str | None) -> dict:  # type: ignore[type-arg]
        return {
            "id": "chatcmpl-bench0000000000000000000000",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "gpt-bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    events = [
        chunk({"role": "assistant", "content": content}, None),
        chunk({}, "stop"),
        {
            **chunk({}, None),
            "choices": [],
            "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
        },
    ]
    return (
        b"".join(
            b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n" for e in events
        )
        + b"data: [DONE]\n\n"
    )


STREAM = _sse("Hello! How can I help you today?")
STREAM_JUDGED = _sse(VERDICT)
_STREAM_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
_STREAMING = re.compile(rb'"stream"\s*:\s*true')
_JUDGE = re.compile(rb'"model"\s*:\s*"[^"]*judge')
_VECTOR = [0.1, 0.2, 0.3, 0.4]


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


_OK_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(COMPLETION)).encode()),
]
_NOT_FOUND = (
    b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}'
)
_NOT_FOUND_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_NOT_FOUND)).encode()),
]


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    parts = []
    while more:  # drain the body
        message = await receive()
        parts.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(parts)
    if scope["method"] == "POST" and scope["path"] == "/v1/chat/completions":
        judge = _JUDGE.search(body) is not None
        if _STREAMING.search(body):
            await send({"type": "http.response.start", "status": 200, "headers": _STREAM_HEADERS})
            await send({"type": "http.response.body", "body": STREAM_JUDGED if judge else STREAM})
            return
        if judge:
            await send(
                {"type": "http.response.start", "status": 200, "headers": _json_headers(JUDGED)}
            )
            await send({"type": "http.response.body", "body": JUDGED})
            return
        await send({"type": "http.response.start", "status": 200, "headers": _OK_HEADERS})
        await send({"type": "http.response.body", "body": COMPLETION})
    elif scope["method"] == "POST" and scope["path"] == "/v1/embeddings":
        inputs = json.loads(body).get("input")
        n = len(inputs) if isinstance(inputs, list) else 1
        out = json.dumps(
            {
                "object": "list",
                "model": "embed-bench",
                "data": [
                    {"object": "embedding", "index": i, "embedding": _VECTOR} for i in range(n)
                ],
                "usage": {"prompt_tokens": 4 * n, "total_tokens": 4 * n},
            }
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": _json_headers(out)})
        await send({"type": "http.response.body", "body": out})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": _NOT_FOUND_HEADERS})
        await send({"type": "http.response.body", "body": _NOT_FOUND})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
