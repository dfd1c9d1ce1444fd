"""SIGTERM while upstreams hang: after `server.shutdown_timeout_s`, every request still in
flight ends in its own wire format (a 503 error, or an error event once the stream has
started), usage records each one as 503, and the process exits well before an
orchestrator's grace period.
"""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from cumulo.eventstream import Decoder
from fakes import FakeOpenAIUpstream
from support import UPSTREAM_KEY, openai_deployment, start_cumulo, wait_until

SHUTDOWN_TIMEOUT_S = 1.0
# The clients' own timeout: the shutdown timeout and a margin, far below the 60 s the
# upstream would hang for.
CLIENT_TIMEOUT_S = SHUTDOWN_TIMEOUT_S + 10


def ask(marker: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"wait {marker}"}]


def bedrock_ask(marker: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"text": f"wait {marker}"}]}]


def test_sigterm_ends_hanging_requests_in_their_wire_format(
    upstream: FakeOpenAIUpstream, tmp_path: Path
) -> None:
    config = {
        "server": {"shutdown_timeout_s": SHUTDOWN_TIMEOUT_S},
        "usage": {"flush_interval_s": 60},  # recorded at shutdown, by the final flush
        "models": [
            {
                "name": "hang",
                "routing": {"retries": 0},
                "deployments": [openai_deployment(upstream, "slow:60", timeout_s=120)],
            },
            {
                "name": "hang-stream",
                "routing": {"retries": 0, "ttft_timeout_s": 60},
                "deployments": [openai_deployment(upstream, "hold", timeout_s=120)],
            },
        ],
    }
    server = start_cumulo(config, tmp_path, FAKE_UPSTREAM_KEY=UPSTREAM_KEY)
    key = server.create_key("shutdown")
    auth = {"Authorization": f"Bearer {key.token}"}
    results: dict[str, Any] = {}

    def openai() -> None:
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as http:
            resp = http.post(
                "/v1/chat/completions", headers=auth, json={"model": "hang", "messages": ask("oa")}
            )
            results["openai"] = (resp.status_code, resp.json())

    def openai_stream() -> None:
        with (
            httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                headers=auth,
                json={"model": "hang-stream", "messages": ask("oa-stream"), "stream": True},
            ) as resp,
        ):
            results["openai_stream"] = (resp.status_code, list(resp.iter_lines()))

    def anthropic() -> None:
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as http:
            resp = http.post(
                "/v1/messages",
                headers={"x-api-key": key.token},
                json={"model": "hang", "max_tokens": 16, "messages": ask("an")},
            )
            results["anthropic"] = (resp.status_code, resp.json())

    def anthropic_stream() -> None:
        with (
            httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as http,
            http.stream(
                "POST",
                "/v1/messages",
                headers={"x-api-key": key.token},
                json={
                    "model": "hang-stream",
                    "max_tokens": 16,
                    "messages": ask("an-stream"),
                    "stream": True,
                },
            ) as resp,
        ):
            results["anthropic_stream"] = (resp.status_code, list(resp.iter_lines()))

    def bedrock() -> None:
        with httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as http:
            resp = http.post(
                "/model/hang/converse", headers=auth, json={"messages": bedrock_ask("br")}
            )
            results["bedrock"] = (
                resp.status_code,
                resp.headers.get("x-amzn-errortype"),
                resp.json(),
            )

    def bedrock_stream() -> None:
        with (
            httpx.Client(base_url=server.url, timeout=CLIENT_TIMEOUT_S) as http,
            http.stream(
                "POST",
                "/model/hang-stream/converse-stream",
                headers=auth,
                json={"messages": bedrock_ask("br-stream")},
            ) as resp,
        ):
            decoder = Decoder()
            frames = [m for chunk in resp.iter_bytes() for m in decoder.feed(chunk)]
            results["bedrock_stream"] = (resp.status_code, frames)

    clients: list[Callable[[], None]] = [
        openai,
        openai_stream,
        anthropic,
        anthropic_stream,
        bedrock,
        bedrock_stream,
    ]
    threads = [threading.Thread(target=c) for c in clients]
    for t in threads:
        t.start()
    wait_until(
        lambda: (
            len(upstream.received("wait")) >= len(clients)
            and all(upstream.received(m) for m in ("oa-stream", "an-stream", "br-stream"))
        ),
        timeout=10,
    )
    server.process.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(CLIENT_TIMEOUT_S + 5)
    # uvicorn ends a graceful shutdown by re-raising the signal it caught.
    assert server.process.wait(CLIENT_TIMEOUT_S) in (0, -signal.SIGTERM), server.output()

    status, body = results["openai"]
    assert status == 503 and body["error"]["type"] == "service_unavailable", body
    status, lines = results["openai_stream"]
    data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    assert status == 200 and data[-1] == "[DONE]", lines
    assert json.loads(data[-2])["error"]["type"] == "service_unavailable", lines

    status, body = results["anthropic"]
    assert status == 503 and body["type"] == "error", body
    status, lines = results["anthropic_stream"]
    assert status == 200 and "event: error" in lines, lines
    error = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))
    assert error["type"] == "error" and "shutting down" in error["error"]["message"], error

    status, error_type, body = results["bedrock"]
    assert (status, error_type) == (503, "ServiceUnavailableException"), body
    status, frames = results["bedrock_stream"]
    assert status == 200 and frames[-1].message_type == "exception", frames
    assert frames[-1].header(":exception-type") == "serviceUnavailableException"

    rows = server.usage_rows(key.id, expect=len(clients))
    assert len(rows) == len(clients)
    assert {(r["status"], r["error_type"]) for r in rows} == {(503, "service_unavailable")}, rows
    assert "ending 6 request(s) still in flight" in server.output()
