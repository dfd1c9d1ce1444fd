"""The `anthropic` provider against a fake Anthropic Messages API over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from cumulo.config import DeploymentConfig, parse_config
from cumulo.errors import (
    ConfigError,
    CumuloError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
)
from cumulo.providers.anthropic import AnthropicProvider
from cumulo.providers.base import ProviderContext
from cumulo.providers.registry import ProviderRegistry
from cumulo.types import (
    ChatRequest,
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
from fakes.anthropic_upstream import FakeAnthropicUpstream

T = TypeVar("T")
KEY = "sk-ant-provider-test-key-123456"
SEARCH = Tool(
    "search", "Search the web", {"type": "object", "properties": {"query": {"type": "string"}}}
)
CLOCK = Tool("clock")  # no parameters: called with empty input


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropicUpstream]:
    server = FakeAnthropicUpstream()
    with server:
        yield server


@pytest.fixture(autouse=True)
def upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", KEY)


def call(
    fake: FakeAnthropicUpstream,
    model: str,
    fn: Callable[[AnthropicProvider], Awaitable[T]],
    **deployment: Any,
) -> T:
    """Run `fn(provider)` for a deployment of `model` at the fake upstream."""

    async def main() -> T:
        async with aiohttp.ClientSession() as http:
            fields: dict[str, Any] = {
                "provider": "anthropic",
                "model": model,
                "base_url": fake.url,
                "api_key_env": "ANTHROPIC_TEST_KEY",
                **deployment,
            }
            provider = AnthropicProvider(
                DeploymentConfig(**fields), "chat", ProviderContext(http, Path("."))
            )
            return await fn(provider)

    return asyncio.run(main())


def user(text: str, **kw: Any) -> ChatRequest:
    return ChatRequest(model="public-name", messages=[Message("user", text)], **kw)


async def collect(provider: AnthropicProvider, req: ChatRequest) -> list[StreamEvent]:
    return [ev async for ev in provider.stream(req)]


async def collect_until_error(
    provider: AnthropicProvider, req: ChatRequest
) -> tuple[list[StreamEvent], CumuloError]:
    events: list[StreamEvent] = []
    try:
        async for ev in provider.stream(req):
            events.append(ev)
    except CumuloError as exc:
        return events, exc
    raise AssertionError(f"the stream ended without an error: {events}")


def test_request_translation(fake: FakeAnthropicUpstream, marker: str) -> None:
    req = ChatRequest(
        model="public-name",
        messages=[
            Message("system", "be brief"),
            Message("user", f"weather and time {marker}"),
            Message(
                "assistant",
                "Checking.",
                tool_calls=[
                    ToolCall("toolu_1", "search", '{"query": "oslo"}'),
                    ToolCall("toolu_2", "clock", ""),
                ],
            ),
            Message("tool", "rain", tool_call_id="toolu_1"),
            Message("tool", "noon", tool_call_id="toolu_2"),
            Message("user", "so?"),
            Message("system", "answer in English"),
            Message("user", "umbrella"),
        ],
        params=SamplingParams(temperature=0.2, top_p=0.9, top_k=5, stop=["END"], seed=7),
        tools=[SEARCH, CLOCK],
        tool_choice=ToolChoice("tool", "search"),
    )
    resp = call(fake, "echo", lambda p: p.chat(req))

    got = fake.one(marker)
    assert got.path == "/v1/messages"
    assert got.headers["x-api-key"] == KEY and got.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in got.headers
    body = got.body
    assert body["model"] == "echo"
    assert body["system"] == "be brief\n\nanswer in English"
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": f"weather and time {marker}"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "search", "input": {"query": "oslo"}},
                {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}},
            ],
        },
        # Consecutive tool results and user turns are one user message, results first.
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "noon"},
                {"type": "text", "text": "so?"},
                {"type": "text", "text": "umbrella"},
            ],
        },
    ]
    assert body["tools"] == [
        {"name": "search", "description": "Search the web", "input_schema": SEARCH.parameters},
        {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "tool", "name": "search"}
    assert {
        k: body[k] for k in ("temperature", "top_p", "top_k", "stop_sequences", "max_tokens")
    } == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
        "stop_sequences": ["END"],
        "max_tokens": 4096,
    }
    assert "seed" not in body and "stream" not in body

    assert resp.model == "public-name" and resp.id == "msg_fake0001"
    assert resp.message.content == "echo: so?umbrella"
    assert resp.finish_reason == "stop"
    assert resp.usage.prompt_tokens == 12 and resp.usage.completion_tokens == 2


def test_minimal_request(fake: FakeAnthropicUpstream, marker: str) -> None:
    call(fake, "echo", lambda p: p.chat(user(marker, params=SamplingParams(max_tokens=30))))
    assert fake.one(marker).body == {
        "model": "echo",
        "max_tokens": 30,
        "messages": [{"role": "user", "content": [{"type": "text", "text": marker}]}],
    }


@pytest.mark.parametrize(
    ("mode", "wire"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"})],
)
def test_tool_choice_modes(
    fake: FakeAnthropicUpstream, marker: str, mode: Any, wire: dict[str, str]
) -> None:
    call(fake, "echo", lambda p: p.chat(user(marker, tools=[SEARCH], tool_choice=ToolChoice(mode))))
    assert fake.one(marker).body["tool_choice"] == wire


def test_tool_use_reply(fake: FakeAnthropicUpstream, marker: str) -> None:
    resp = call(fake, "tools", lambda p: p.chat(user(marker, tools=[SEARCH, CLOCK])))
    assert resp.finish_reason == "tool_calls"
    assert resp.message.content == "Let me check."
    assert resp.message.tool_calls == [
        ToolCall("toolu_fake01", "search", json.dumps({"query": marker})),
        ToolCall("toolu_fake02", "clock", "{}"),
    ]
    assert resp.usage.completion_tokens == 3 + 5 + 5


@pytest.mark.parametrize(
    ("params", "text", "finish"),
    [
        (SamplingParams(stop=["two"]), "echo: one ", "stop"),
        (SamplingParams(max_tokens=2), "echo: one", "length"),
    ],
)
def test_stop_reasons(
    fake: FakeAnthropicUpstream, params: SamplingParams, text: str, finish: str
) -> None:
    resp = call(fake, "echo", lambda p: p.chat(user("one two three", params=params)))
    assert (resp.message.content, resp.finish_reason) == (text, finish)


def test_tool_arguments_that_are_not_an_object_are_invalid(fake: FakeAnthropicUpstream) -> None:
    req = ChatRequest(
        model="m",
        messages=[
            Message("user", "hi"),
            Message("assistant", None, tool_calls=[ToolCall("t1", "f", "[1]")]),
        ],
    )
    with pytest.raises(InvalidRequest):
        call(fake, "echo", lambda p: p.chat(req))


def test_stream_text_then_end_with_usage(fake: FakeAnthropicUpstream, marker: str) -> None:
    events = call(fake, "echo", lambda p: collect(p, user(f"one two {marker}")))
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(texts) >= 3  # delta by delta, not buffered
    assert "".join(texts) == f"echo: one two {marker}"
    assert sum(isinstance(e, StreamEnd) for e in events) == 1
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason == "stop"
    assert end.usage is not None and (end.usage.prompt_tokens, end.usage.completion_tokens) == (
        3,
        4,
    )
    assert fake.one(marker).body["stream"] is True


def test_stream_tool_calls_by_ordinal(fake: FakeAnthropicUpstream, marker: str) -> None:
    events = call(fake, "tools", lambda p: collect(p, user(marker, tools=[SEARCH, CLOCK])))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Let me check."
    calls = [e for e in events if isinstance(e, ToolCallDelta)]
    # Blocks 1 and 2 upstream (after the text block) are tool calls 0 and 1.
    assert [(c.index, c.id, c.name) for c in calls if c.id] == [
        (0, "toolu_fake01", "search"),
        (1, "toolu_fake02", "clock"),
    ]
    assert len([c for c in calls if c.index == 0]) > 2  # the input arrives in pieces
    assert json.loads("".join(c.arguments for c in calls if c.index == 0)) == {"query": marker}
    assert "".join(c.arguments for c in calls if c.index == 1) == "{}"  # no input delta upstream
    end = events[-1]
    assert isinstance(end, StreamEnd) and end.finish_reason == "tool_calls"


def test_rejected_translation_is_invalid_request(
    fake: FakeAnthropicUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    # temperature 1.5 is valid for OpenAI, not for Anthropic: the upstream says so, in the
    # server's log (an upstream's words never reach the caller).
    with pytest.raises(InvalidRequest) as info:
        call(fake, "echo", lambda p: p.chat(user("hi", params=SamplingParams(temperature=1.5))))
    assert "temperature" not in info.value.message and "HTTP 400" in info.value.message
    request_id = info.value.message.split("request id ")[1].rstrip(").")
    assert any(
        request_id in r.getMessage() and "temperature" in r.getMessage() for r in caplog.records
    )


def test_error_event_mid_stream(fake: FakeAnthropicUpstream) -> None:
    events, exc = call(fake, "stream-error:2", lambda p: collect_until_error(p, user("a b c")))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["echo: ", "a "]
    assert type(exc) is UpstreamError and "mid-stream" in exc.message
    assert "overloaded_error" not in exc.message  # the upstream's words stay in the log


def test_disconnect_mid_stream(fake: FakeAnthropicUpstream) -> None:
    events, exc = call(fake, "disconnect:1", lambda p: collect_until_error(p, user("a b c")))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["echo: "]
    assert type(exc) is UpstreamError


def test_timeouts(fake: FakeAnthropicUpstream) -> None:
    with pytest.raises(UpstreamTimeout):
        call(fake, "slow:3", lambda p: p.chat(user("hi")), timeout_s=0.3)
    try:
        events, exc = call(
            fake, "hold", lambda p: collect_until_error(p, user("a b")), timeout_s=0.5
        )
    finally:
        fake.release()
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["echo: "]
    assert isinstance(exc, UpstreamTimeout)


def test_deployment_headers_are_sent(fake: FakeAnthropicUpstream, marker: str) -> None:
    call(
        fake,
        "echo",
        lambda p: p.chat(user(marker)),
        headers={"anthropic-beta": "tools-2024", "anthropic-version": "2024-01-01"},
    )
    got = fake.one(marker).headers
    assert got["anthropic-beta"] == "tools-2024" and got["anthropic-version"] == "2024-01-01"


def test_config_and_registration() -> None:
    with pytest.raises(ConfigError, match="anthropic deployment needs `model`"):
        parse_config(
            {"models": [{"name": "c", "deployments": [{"provider": "anthropic"}]}]}, "x.yaml"
        )
    config = parse_config(
        {
            "models": [
                {
                    "name": "c",
                    "deployments": [
                        {
                            "provider": "anthropic",
                            "model": "claude-x",
                            "api_key_env": "ANTHROPIC_TEST_KEY",
                        }
                    ],
                }
            ]
        },
        "x.yaml",
    )
    ProviderRegistry().check(config, "x.yaml")
    cls = ProviderRegistry().get("anthropic")
    assert cls is AnthropicProvider

    async def describe() -> str:
        async with aiohttp.ClientSession() as http:
            p = cls(config.models[0].deployments[0], "chat", ProviderContext(http, Path(".")))
            return p.describe()

    text = asyncio.run(describe())
    assert "claude-x" in text and "https://api.anthropic.com" in text and KEY not in text
