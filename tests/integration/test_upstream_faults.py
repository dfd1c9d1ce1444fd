"""Upstream faults as a client of cumulo sees them, and as its usage records show them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from fakes import FakeOpenAIUpstream
from support import ApiKey, CumuloServer, wait_until

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture
def client(cumulo: CumuloServer, caller_key: ApiKey) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=cumulo.url + "/v1", api_key=caller_key.token, max_retries=0, timeout=30
    ) as c:
        yield c


@pytest.fixture
def http(cumulo: CumuloServer, caller_key: ApiKey) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=cumulo.url, timeout=30, headers={"Authorization": f"Bearer {caller_key.token}"}
    ) as c:
        yield c


def assert_openai_error(resp: httpx.Response, status: int, type_: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == type_
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


def test_slow_first_byte_still_streams(client: openai.OpenAI, marker: str) -> None:
    chunks = list(
        client.chat.completions.create(
            model="chat-slow", messages=[{"role": "user", "content": marker}], stream=True
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"echo: {marker}"
    )


def test_disconnect_mid_stream_is_an_error_event_and_an_error_record(
    client: openai.OpenAI, cumulo: CumuloServer, caller_key: ApiKey
) -> None:
    stream = client.chat.completions.create(
        model="chat-disconnect",
        messages=[{"role": "user", "content": "one two three four"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    received: list[str] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            received.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(received) == "echo: one "  # what arrived before the upstream dropped
    assert info.value.body["type"] == "upstream_error"  # type: ignore[index]
    [row] = cumulo.usage_rows(caller_key.id)
    assert row["stream"] == 1
    assert row["status"] >= 500 and row["error_type"] == "upstream_error"


def test_disconnect_mid_stream_raw_sse(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "one two three four"}]
    resp = http.post(
        "/v1/chat/completions",
        json={"model": "chat-disconnect", "messages": messages, "stream": True},
    )
    assert resp.status_code == 200  # headers were sent before the upstream failed
    events = [line.removeprefix("data: ") for line in resp.text.splitlines() if line]
    assert events[-1] == "[DONE]"
    assert '"error"' in events[-2] and 'finish_reason":"stop' not in resp.text


@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
@pytest.mark.parametrize(
    ("model", "status", "error_type"),
    [
        ("chat-500", 502, "upstream_error"),
        ("chat-malformed", 502, "upstream_error"),
        ("chat-down", 502, "upstream_error"),
        ("chat-timeout", 504, "timeout_error"),
        ("chat-upstream-400", 400, "invalid_request_error"),
    ],
)
def test_upstream_failure_status(
    http: httpx.Client,
    cumulo: CumuloServer,
    caller_key: ApiKey,
    model: str,
    status: int,
    error_type: str,
    stream: bool,
) -> None:
    resp = http.post(
        "/v1/chat/completions", json={"model": model, "messages": HELLO, "stream": stream}
    )
    assert_openai_error(resp, status, error_type)
    [row] = cumulo.usage_rows(caller_key.id)
    assert (row["model"], row["status"], row["error_type"]) == (model, status, error_type)
    assert row["stream"] == int(stream)


def test_upstream_500_through_the_sdk(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="chat-500", messages=HELLO)  # type: ignore[arg-type]
    assert info.value.status_code == 502
    assert "500" in info.value.message


def test_timeout_is_504_and_takes_the_deployment_timeout(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={"model": "chat-timeout", "messages": HELLO})
    assert_openai_error(resp, 504, "timeout_error")
    # timeout_s is 0.5 and the upstream takes 5 s: cumulo gave up at its own deadline.
    assert resp.elapsed.total_seconds() < 4


def test_upstream_429_keeps_retry_after(http: httpx.Client, client: openai.OpenAI) -> None:
    for stream in (False, True):
        resp = http.post(
            "/v1/chat/completions", json={"model": "chat-429", "messages": HELLO, "stream": stream}
        )
        assert_openai_error(resp, 429, "rate_limit_error")
        assert resp.headers["retry-after"] == "7"
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="chat-429", messages=HELLO)  # type: ignore[arg-type]
    assert info.value.response.headers["retry-after"] == "7"


def test_client_going_away_mid_stream_is_recorded_as_499(
    cumulo: CumuloServer, caller_key: ApiKey, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    try:
        body = {
            "model": "chat-hold",
            "messages": [{"role": "user", "content": f"a b {marker}"}],
            "stream": True,
        }
        with (
            httpx.Client(
                base_url=cumulo.url,
                timeout=5,
                headers={"Authorization": f"Bearer {caller_key.token}"},
            ) as http,
            http.stream("POST", "/v1/chat/completions", json=body) as resp,
        ):
            assert any("echo: " in line for line in resp.iter_lines())
        # Leaving the block closed the connection while the upstream still held the stream.
        [row] = cumulo.usage_rows(caller_key.id)
        assert (row["status"], row["error_type"], row["stream"]) == (499, "client_closed", 1)
    finally:
        upstream.release()


def test_usage_summary_counts_errors(
    cumulo: CumuloServer, http: httpx.Client, caller_key: ApiKey
) -> None:
    http.post("/v1/chat/completions", json={"model": "chat-500", "messages": HELLO})
    http.post("/v1/chat/completions", json={"model": "chat-echo", "messages": HELLO})
    with cumulo.admin() as admin:
        assert wait_until(
            lambda: any(
                r["key"] == caller_key.id for r in admin.get("/admin/usage").json()["by_key"]
            )
        )
        summary = admin.get("/admin/usage").json()
    [mine] = [r for r in summary["by_key"] if r["key"] == caller_key.id]
    assert (mine["requests"], mine["errors"]) == (2, 1)
