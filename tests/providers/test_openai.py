"""The `openai` provider against a fake OpenAI upstream over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from cumulo.config import DeploymentConfig
from cumulo.errors import (
    CumuloError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
)
from cumulo.providers.base import ProviderContext
from cumulo.providers.openai import OpenAIProvider
from cumulo.types import (
    ChatRequest,
    EmbeddingRequest,
    Message,
    SamplingParams,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)
from fakes import FakeOpenAIUpstream, embedding_of

T = TypeVar("T")
KEY = "sk-provider-test-key-123456"


def call(
    upstream: FakeOpenAIUpstream,
    model: str,
    fn: Callable[[OpenAIProvider], Awaitable[T]],
    kind: str = "chat",
    **deployment: Any,
) -> T:
    """Run `fn(provider)` for a deployment of `model` at the fake upstream."""

    async def main() -> T:
        async with aiohttp.ClientSession() as http:
            fields: dict[str, Any] = {
                "provider": "openai",
                "model": model,
                "base_url": upstream.base_url(),
                **deployment,
            }
            provider = OpenAIProvider(
                DeploymentConfig(**fields),
                kind,  # type: ignore[arg-type]
                ProviderContext(http, Path(".")),
            )
            return await fn(provider)

    return asyncio.run(main())


def user(text: str, **kw: Any) -> ChatRequest:
    return ChatRequest(model="public-name", messages=[Message("user", text)], **kw)


async def collect(provider: OpenAIProvider, req: ChatRequest) -> list[StreamEvent]:
    return [ev async for ev in provider.stream(req)]


async def collect_until_error(
    provider: OpenAIProvider, req: ChatRequest
) -> tuple[list[StreamEvent], CumuloError]:
    events: list[StreamEvent] = []
    try:
        async for ev in provider.stream(req):
            events.append(ev)
    except CumuloError as exc:
        return events, exc
    raise AssertionError(f"the stream ended without an error: {events}")


def test_chat_sends_the_upstream_model_and_every_parameter(
    upstream: FakeOpenAIUpstream, marker: str
) -> None:
    req = ChatRequest(
        model="public-name",
        messages=[
            Message("system", "be brief"),
            Message("user", f"weather {marker}", name="ann"),
            Message("assistant", None, tool_calls=[ToolCall("call_1", "lookup", '{"q": 1}')]),
            Message("tool", "sunny", tool_call_id="call_1"),
            Message("user", "thanks"),
        ],
        params=SamplingParams(temperature=0.2, top_p=0.9, max_tokens=42, stop=["END"], seed=7),
        tools=[Tool("lookup", "Look things up", {"type": "object", "properties": {}})],
        tool_choice=ToolChoice("tool", "lookup"),
        user="u-1",
    )
    resp = call(upstream, "echo", lambda p: p.chat(req))

    body = upstream.one(marker).body
    assert body["model"] == "echo"  # the deployment's upstream id, not the public name
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert body["messages"][1]["name"] == "ann"
    assert body["messages"][2]["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": 1}'},
        }
    ]
    assert body["messages"][3]["tool_call_id"] == "call_1"
    assert {k: body[k] for k in ("temperature", "top_p", "max_tokens", "stop", "seed", "user")} == {
        "temperature": 0.2,
        "top_p": 0.9,
        "max_tokens": 42,
        "stop": ["END"],
        "seed": 7,
        "user": "u-1",
    }
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look things up",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert "stream" not in body

    assert resp.model == "public-name"
    assert resp.message.content == "echo: thanks"
    assert resp.finish_reason == "stop"
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (6, 2)


def test_unset_parameters_are_not_sent(upstream: FakeOpenAIUpstream, marker: str) -> None:
    call(upstream, "echo", lambda p: p.chat(user(marker)))
    body = upstream.one(marker).body
    assert set(body) == {"model", "messages"}


def test_bearer_key_comes_from_the_named_env_var(
    upstream: FakeOpenAIUpstream, marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVIDER_TEST_KEY", KEY)
    call(
        upstream,
        "echo",
        lambda p: p.chat(user(marker)),
        api_key_env="PROVIDER_TEST_KEY",
        headers={"X-Team": "search", "OpenAI-Organization": "org-1"},
    )
    got = upstream.one(marker)
    assert got.headers["authorization"] == f"Bearer {KEY}"
    assert got.headers["x-team"] == "search"
    assert got.headers["openai-organization"] == "org-1"
    assert got.path == "/v1/chat/completions" and got.query == {}


def test_without_a_key_no_authorization_is_sent(upstream: FakeOpenAIUpstream, marker: str) -> None:
    call(upstream, "echo", lambda p: p.chat(user(marker)))
    assert "authorization" not in upstream.one(marker).headers


def test_azure_mode_sends_api_key_header_and_api_version(
    upstream: FakeOpenAIUpstream, marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_TEST_KEY", KEY)
    call(
        upstream,
        "echo",
        lambda p: p.chat(user(marker)),
        base_url=upstream.url + "/openai/deployments/prod/",
        api_key_env="AZURE_TEST_KEY",
        auth_header="api-key",
        api_version="2024-10-21",
    )
    got = upstream.one(marker)
    assert got.path == "/openai/deployments/prod/chat/completions"
    assert got.query == {"api-version": "2024-10-21"}
    assert got.headers["api-key"] == KEY
    assert "authorization" not in got.headers


def test_stream_yields_text_as_it_comes_then_one_end_with_usage(
    upstream: FakeOpenAIUpstream, marker: str
) -> None:
    events = call(upstream, "echo", lambda p: collect(p, user(f"one two {marker}")))
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(texts) >= 3  # word by word, not buffered into one piece
    assert "".join(texts) == f"echo: one two {marker}"
    assert isinstance(events[-1], StreamEnd)
    assert sum(isinstance(e, StreamEnd) for e in events) == 1
    assert events[-1].finish_reason == "stop"
    assert events[-1].usage is not None
    assert (events[-1].usage.prompt_tokens, events[-1].usage.completion_tokens) == (3, 4)
    body = upstream.one(marker).body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_stream_tool_call_arrives_in_pieces_with_id_and_name_first(
    upstream: FakeOpenAIUpstream, marker: str
) -> None:
    req = user(marker, tools=[Tool("search"), Tool("other")])
    events = call(upstream, "tools", lambda p: collect(p, req))
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    assert calls[0].id == "call_fake0002" and calls[0].name == "search"
    assert all(c.index == 0 for c in calls) and all(c.id is None for c in calls[1:])
    assert json.loads("".join(c.arguments for c in calls)) == {"query": marker}
    assert isinstance(events[-1], StreamEnd) and events[-1].finish_reason == "tool_calls"


def test_chat_tool_call_reply(upstream: FakeOpenAIUpstream, marker: str) -> None:
    req = user(
        marker, tools=[Tool("search"), Tool("other")], tool_choice=ToolChoice("tool", "other")
    )
    resp = call(upstream, "tools", lambda p: p.chat(req))
    assert resp.finish_reason == "tool_calls"
    assert resp.message.content is None
    assert resp.message.tool_calls == [
        ToolCall("call_fake0001", "other", json.dumps({"query": marker}))
    ]


def test_slow_first_byte_within_the_deadline_is_fine(upstream: FakeOpenAIUpstream) -> None:
    events = call(upstream, "slow:0.3", lambda p: collect(p, user("patience")), timeout_s=5)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "echo: patience"


def test_deadline_covers_the_whole_stream(upstream: FakeOpenAIUpstream) -> None:
    # `hold` sends a first word and then stalls: the stream must not hang past timeout_s.
    try:
        events, exc = call(
            upstream, "hold", lambda p: collect_until_error(p, user("a b c")), timeout_s=0.5
        )
    finally:
        upstream.release()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["echo: "]
    assert isinstance(exc, UpstreamTimeout)


def test_disconnect_mid_stream_raises_after_the_text_so_far(upstream: FakeOpenAIUpstream) -> None:
    events, exc = call(upstream, "disconnect:2", lambda p: collect_until_error(p, user("a b c d")))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["echo: ", "a "]
    assert not any(isinstance(e, StreamEnd) for e in events)
    assert type(exc) is UpstreamError and exc.status == 502


def test_request_that_cannot_be_encoded_is_invalid_not_a_crash(
    upstream: FakeOpenAIUpstream,
) -> None:
    req = user("hi", response_format={"type": "json_schema", "max": 10**30})
    with pytest.raises(InvalidRequest):
        call(upstream, "echo", lambda p: p.chat(req))


def test_embeddings_are_returned_in_input_order(upstream: FakeOpenAIUpstream, marker: str) -> None:
    texts = [f"first {marker}", "second", "third"]
    req = EmbeddingRequest(model="public-embed", inputs=texts, dimensions=8)
    # The upstream lists them in reverse; each item's `index` says where it belongs.
    resp = call(upstream, "embed-reversed", lambda p: p.embed(req), kind="embedding")
    assert resp.vectors == [embedding_of(t) for t in texts]
    assert resp.model == "public-embed"
    assert resp.usage.prompt_tokens == 4
    body = upstream.one(marker).body
    assert body == {
        "model": "embed-reversed",
        "input": texts,
        "encoding_format": "float",
        "dimensions": 8,
    }


def test_describe_names_the_upstream_but_never_the_key(
    upstream: FakeOpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVIDER_TEST_KEY", KEY)

    async def describe(p: OpenAIProvider) -> str:
        return p.describe() + p.label

    text = call(upstream, "echo", describe, api_key_env="PROVIDER_TEST_KEY")
    assert "echo" in text and upstream.url in text and KEY not in text
