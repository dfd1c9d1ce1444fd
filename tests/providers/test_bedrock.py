"""The `bedrock` provider against a fake Bedrock runtime over loopback HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from cumulo.config import DeploymentConfig
from cumulo.errors import CumuloError, InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout
from cumulo.providers.base import ProviderContext
from cumulo.providers.bedrock import BedrockProvider, converse_body
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
    Usage,
)
from fakes.bedrock_upstream import (
    ACCESS_KEY_ID,
    API_KEY,
    REGION,
    SECRET_KEY,
    SESSION_TOKEN,
    BedrockRecorded,
    FakeBedrockUpstream,
)

T = TypeVar("T")
SIGV4_ENV = {
    "T_AWS_KEY_ID": ACCESS_KEY_ID,
    "T_AWS_SECRET": SECRET_KEY,
    "T_AWS_TOKEN": SESSION_TOKEN,
    "T_BEDROCK_API_KEY": API_KEY,
    "T_WRONG_SECRET": "not-the-secret",
}
SIGV4 = {"aws_access_key_id_env": "T_AWS_KEY_ID", "aws_secret_access_key_env": "T_AWS_SECRET"}


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrockUpstream]:
    with FakeBedrockUpstream() as upstream:
        yield upstream


@pytest.fixture(autouse=True)
def credentials_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SIGV4_ENV.items():
        monkeypatch.setenv(name, value)


def call(
    fake: FakeBedrockUpstream,
    model: str,
    fn: Callable[[BedrockProvider], Awaitable[T]],
    **deployment: Any,
) -> T:
    """Start a provider for `model` at the fake (SigV4 by default) and run `fn(provider)`."""

    async def main() -> T:
        async with aiohttp.ClientSession() as http:
            fields = {
                "provider": "bedrock",
                "model": model,
                "base_url": fake.url,
                "region": REGION,
                **(deployment or SIGV4),
            }
            provider = BedrockProvider(
                DeploymentConfig(**fields), "chat", ProviderContext(http, Path("."))
            )
            await provider.start()
            return await fn(provider)

    return asyncio.run(main())


def user(text: str, **kw: Any) -> ChatRequest:
    return ChatRequest(model="public-name", messages=[Message("user", text)], **kw)


def one(fake: FakeBedrockUpstream, marker: str) -> BedrockRecorded:
    [got] = fake.received(marker)
    assert isinstance(got, BedrockRecorded)
    return got


async def collect(provider: BedrockProvider, req: ChatRequest) -> list[StreamEvent]:
    return [ev async for ev in provider.stream(req)]


async def until_error(
    provider: BedrockProvider, req: ChatRequest
) -> tuple[list[StreamEvent], CumuloError]:
    events: list[StreamEvent] = []
    try:
        async for ev in provider.stream(req):
            events.append(ev)
    except CumuloError as exc:
        return events, exc
    raise AssertionError(f"the stream ended without an error: {events}")


TOOLS = [
    Tool("lookup", "Look things up", {"type": "object", "properties": {"q": {"type": "string"}}}),
    Tool("weather"),
]


def test_translation_to_converse() -> None:
    req = ChatRequest(
        model="m",
        messages=[
            Message("system", "be brief"),
            Message("user", "weather?"),
            Message(
                "assistant",
                "Let me look.",
                tool_calls=[
                    ToolCall("t1", "lookup", '{"q": "oslo"}'),
                    ToolCall("t2", "weather", ""),
                ],
            ),
            Message("tool", "sunny", tool_call_id="t1"),
            Message("tool", "12C", tool_call_id="t2"),
            Message("user", "thanks"),
            Message("system", "and polite"),
        ],
        params=SamplingParams(temperature=0.2, top_p=0.9, top_k=5, max_tokens=42, stop=["END"]),
        tools=TOOLS,
        tool_choice=ToolChoice("required"),
    )
    assert converse_body(req) == {
        "system": [{"text": "be brief"}, {"text": "and polite"}],
        "messages": [
            {"role": "user", "content": [{"text": "weather?"}]},
            {
                "role": "assistant",
                "content": [
                    {"text": "Let me look."},
                    {"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {"q": "oslo"}}},
                    {"toolUse": {"toolUseId": "t2", "name": "weather", "input": {}}},
                ],
            },
            {
                "role": "user",
                "content": [  # tool results and the next user turn, merged
                    {"toolResult": {"toolUseId": "t1", "content": [{"text": "sunny"}]}},
                    {"toolResult": {"toolUseId": "t2", "content": [{"text": "12C"}]}},
                    {"text": "thanks"},
                ],
            },
        ],
        "inferenceConfig": {
            "maxTokens": 42,
            "temperature": 0.2,
            "topP": 0.9,
            "stopSequences": ["END"],
        },
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "lookup",
                        "description": "Look things up",
                        "inputSchema": {
                            "json": {"type": "object", "properties": {"q": {"type": "string"}}}
                        },
                    }
                },
                {"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object"}}}},
            ],
            "toolChoice": {"any": {}},
        },
    }
    auto = converse_body(user("x", tools=TOOLS, tool_choice=ToolChoice("auto")))
    assert auto["toolConfig"]["toolChoice"] == {"auto": {}}
    named = converse_body(user("x", tools=TOOLS, tool_choice=ToolChoice("tool", "weather")))
    assert named["toolConfig"]["toolChoice"] == {"tool": {"name": "weather"}}
    assert (
        "toolChoice"
        not in converse_body(user("x", tools=TOOLS, tool_choice=ToolChoice("none")))["toolConfig"]
    )
    assert converse_body(user("x")) == {"messages": [{"role": "user", "content": [{"text": "x"}]}]}
    bad = ChatRequest("m", [Message("assistant", None, tool_calls=[ToolCall("t", "f", "{nope")])])
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        converse_body(bad)


def test_chat_is_sigv4_signed_and_the_model_id_encoded(
    fake: FakeBedrockUpstream, marker: str
) -> None:
    resp = call(
        fake,
        "echo:v1/x",
        lambda p: p.chat(user(f"hi {marker}", params=SamplingParams(temperature=0.5))),
    )
    assert resp.message.content == f"echo: hi {marker}"
    assert (resp.finish_reason, resp.usage, resp.model) == ("stop", Usage(2, 3), "public-name")
    got = one(fake, marker)
    assert got.auth == "sigv4" and got.operation == "converse"
    assert got.path == "/model/echo%3Av1%2Fx/converse" and got.model_id == "echo:v1/x"
    assert got.body["inferenceConfig"] == {"temperature": 0.5}
    assert got.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY_ID}/")
    assert SECRET_KEY not in json.dumps(got.headers)


def test_session_token_is_sent_and_signed(fake: FakeBedrockUpstream, marker: str) -> None:
    call(fake, "echo", lambda p: p.chat(user(marker)), aws_session_token_env="T_AWS_TOKEN", **SIGV4)
    got = one(fake, marker)
    assert got.headers["x-amz-security-token"] == SESSION_TOKEN
    assert "x-amz-security-token" in got.headers["authorization"]


def test_bearer_api_key(fake: FakeBedrockUpstream, marker: str) -> None:
    resp = call(fake, "echo", lambda p: p.chat(user(marker)), api_key_env="T_BEDROCK_API_KEY")
    assert resp.message.content == f"echo: {marker}"
    got = one(fake, marker)
    assert got.auth == "bearer" and got.headers["authorization"] == f"Bearer {API_KEY}"


def test_refused_credentials_are_an_upstream_error(fake: FakeBedrockUpstream) -> None:
    with pytest.raises(UpstreamError, match="refused cumulo's credentials") as info:
        call(
            fake,
            "echo",
            lambda p: p.chat(user("x")),
            aws_access_key_id_env="T_AWS_KEY_ID",
            aws_secret_access_key_env="T_WRONG_SECRET",
        )
    assert "not-the-secret" not in str(info.value)


def test_tool_use(fake: FakeBedrockUpstream, marker: str) -> None:
    resp = call(
        fake,
        "tools",
        lambda p: p.chat(user(marker, tools=TOOLS, tool_choice=ToolChoice("tool", "weather"))),
    )
    assert resp.finish_reason == "tool_calls" and resp.message.content is None
    [tc] = resp.message.tool_calls or []
    assert (tc.id, tc.name, json.loads(tc.arguments)) == (
        "tooluse_fake0001",
        "weather",
        {"query": marker},
    )


def test_stream_text(fake: FakeBedrockUpstream, marker: str) -> None:
    events = call(fake, "echo", lambda p: collect(p, user(f"a b {marker}")))
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(texts) == 4 and "".join(texts) == f"echo: a b {marker}"
    assert events[-1] == StreamEnd("stop", Usage(3, 4))
    assert one(fake, marker).operation == "converse-stream"


def test_stream_tool_use(fake: FakeBedrockUpstream, marker: str) -> None:
    events = call(fake, "tools", lambda p: collect(p, user(marker, tools=TOOLS)))
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert (deltas[0].index, deltas[0].id, deltas[0].name) == (0, "tooluse_fake0002", "lookup")
    assert {d.index for d in deltas} == {0} and len(deltas) > 2
    assert json.loads("".join(d.arguments for d in deltas)) == {"query": marker}
    assert events[-1] == StreamEnd("tool_calls", Usage(1, 5))


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("throttlingException", RateLimited),
        ("validationException", InvalidRequest),
        ("modelStreamErrorException", UpstreamError),
        ("internalServerException", UpstreamError),
    ],
)
def test_exception_frames_mid_stream(
    fake: FakeBedrockUpstream, kind: str, error: type[CumuloError]
) -> None:
    events, exc = call(fake, f"stream-error:{kind}", lambda p: until_error(p, user("a b")))
    assert events == [TextDelta("echo: ")]
    assert type(exc) is error and "mid-stream" in exc.message
    assert f"fake {kind}" not in exc.message  # the upstream's words stay in the log


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("corrupt", "malformed event stream"),
        ("truncated", "before it finished"),
    ],
)
def test_broken_streams(fake: FakeBedrockUpstream, model: str, message: str) -> None:
    events, exc = call(fake, model, lambda p: until_error(p, user("a b")))
    assert events == [TextDelta("echo: ")]
    assert type(exc) is UpstreamError and message in exc.message


def test_timeout(fake: FakeBedrockUpstream) -> None:
    with pytest.raises(UpstreamTimeout):
        call(fake, "slow:2", lambda p: p.chat(user("x")), timeout_s=0.3, **SIGV4)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="needs `model` and `region`"):
        DeploymentConfig(provider="bedrock", model="m")
    with pytest.raises(ValueError, match="or neither"):
        DeploymentConfig(
            provider="bedrock", model="m", region="us-east-1", aws_access_key_id_env="T_AWS_KEY_ID"
        )
    d = DeploymentConfig(provider="bedrock", model="anthropic.claude-3-haiku", region="eu-west-1")
    assert BedrockProvider(d, "chat", None).describe() == (  # type: ignore[arg-type]
        "bedrock anthropic.claude-3-haiku at https://bedrock-runtime.eu-west-1.amazonaws.com"
    )
