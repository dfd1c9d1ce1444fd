"""The official anthropic SDK against `cumulo serve`, in front of every provider kind.

One cumulo subprocess serves models backed by a fake Anthropic upstream
(`claude-*`), by the fake OpenAI upstream (`gpt-*`) and by a fake Bedrock
runtime (`br-*`), so each wire format is exercised through each provider:
Anthropic front door → Anthropic, OpenAI and Bedrock providers, and OpenAI
front door → Anthropic provider.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import (
    RawContentBlockDeltaEvent,
    RawContentBlockStartEvent,
    RawContentBlockStopEvent,
    ToolParam,
)

from fakes import FakeOpenAIUpstream
from fakes.anthropic_upstream import FakeAnthropicUpstream
from fakes.bedrock_upstream import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_KEY,
    BedrockRecorded,
    FakeBedrockUpstream,
)
from support import ApiKey, CumuloServer, openai_deployment

ANTHROPIC_KEY = "sk-ant-fake-upstream-" + "2" * 20
SEARCH: ToolParam = {
    "name": "search",
    "description": "Search the web",
    "input_schema": {
        "type": "object",
        "properties": {"query": {"type": "string"}},
        "required": ["query"],
    },
}
CLOCK: ToolParam = {"name": "clock", "input_schema": {"type": "object", "properties": {}}}
MAX_BODY = 64 * 1024
STREAM_EVENTS = [
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
]


def _claude(fake: FakeAnthropicUpstream, name: str, model: str) -> dict[str, Any]:
    return {
        "name": name,
        "deployments": [
            {
                "provider": "anthropic",
                "model": model,
                "base_url": fake.url,
                "api_key_env": "FAKE_ANTHROPIC_KEY",
            }
        ],
    }


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropicUpstream]:
    server = FakeAnthropicUpstream()
    with server:
        yield server


@pytest.fixture(scope="module")
def fake_bedrock() -> Iterator[FakeBedrockUpstream]:
    with FakeBedrockUpstream() as server:
        yield server


def _bedrock(fake: FakeBedrockUpstream, name: str, model: str) -> dict[str, Any]:
    return {
        "name": name,
        "deployments": [
            {
                "provider": "bedrock",
                "model": model,
                "base_url": fake.url,
                "region": REGION,
                "aws_access_key_id_env": "T_AWS_KEY_ID",
                "aws_secret_access_key_env": "T_AWS_SECRET",
            }
        ],
    }


@pytest.fixture(scope="module")
def server(
    fake: FakeAnthropicUpstream,
    upstream: FakeOpenAIUpstream,
    fake_bedrock: FakeBedrockUpstream,
    cumulo_factory: Callable[..., CumuloServer],
) -> Iterator[CumuloServer]:
    models = [
        _claude(fake, name, model)
        for name, model in [
            ("claude-echo", "echo"),
            ("claude-tools", "tools"),
            ("claude-hold", "hold"),
            ("claude-stream-error", "stream-error:2"),
            ("claude-429", "ratelimit:7"),
            ("claude-overloaded", "status:529"),
        ]
    ]
    for m in models[3:]:
        m["routing"] = {"retries": 0}  # failures are the point: no retry, no waiting for one
    models += [
        {"name": "gpt-echo", "deployments": [openai_deployment(upstream, "echo")]},
        {"name": "gpt-tools", "deployments": [openai_deployment(upstream, "tools")]},
        _bedrock(fake_bedrock, "br-echo", "echo"),
        _bedrock(fake_bedrock, "br-tools", "tools"),
    ]
    config = {
        "server": {"max_body_bytes": MAX_BODY},
        "usage": {"flush_interval_s": 0.1},
        "models": models,
    }
    cumulo = cumulo_factory(
        config,
        FAKE_ANTHROPIC_KEY=ANTHROPIC_KEY,
        T_AWS_KEY_ID=ACCESS_KEY_ID,
        T_AWS_SECRET=SECRET_KEY,
    )
    yield cumulo
    cumulo.stop()


@pytest.fixture
def key(server: CumuloServer, request: pytest.FixtureRequest) -> ApiKey:
    return server.create_key(request.node.name[:200])


@pytest.fixture
def client(server: CumuloServer, key: ApiKey) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=server.url, api_key=key.token, max_retries=0, timeout=30
    ) as c:
        yield c


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def bedrock_received(fake: FakeBedrockUpstream, marker: str) -> list[BedrockRecorded]:
    return [r for r in fake.received(marker) if isinstance(r, BedrockRecorded)]


# -- messages.create --------------------------------------------------------------


def test_create_through_the_anthropic_provider(
    client: anthropic.Anthropic,
    fake: FakeAnthropicUpstream,
    server: CumuloServer,
    key: ApiKey,
    marker: str,
) -> None:
    raw = client.messages.with_raw_response.create(
        model="claude-echo",
        max_tokens=50,
        system="be brief",
        messages=user(f"hello {marker}"),
        stop_sequences=["NEVER"],
        extra_body={"temperature": 0.5, "top_k": 3},
    )
    msg = raw.parse()
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant"
    assert msg.model == "claude-echo"
    assert [(b.type, getattr(b, "text", None)) for b in msg.content] == [
        ("text", f"echo: hello {marker}")
    ]
    assert (msg.stop_reason, msg.stop_sequence) == ("end_turn", None)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 3)
    assert raw.headers["x-cumulo-deployment"] == "anthropic:echo"

    got = fake.one(marker)
    assert got.headers["x-api-key"] == ANTHROPIC_KEY  # the deployment's key, never the caller's
    assert key.token not in json.dumps(got.headers)
    assert got.body["system"] == "be brief" and got.body["model"] == "echo"
    assert {k: got.body[k] for k in ("max_tokens", "temperature", "top_k", "stop_sequences")} == {
        "max_tokens": 50,
        "temperature": 0.5,
        "top_k": 3,
        "stop_sequences": ["NEVER"],
    }

    [row] = server.usage_rows(key.id)
    assert (row["endpoint"], row["model"], row["deployment"]) == (
        "messages",
        "claude-echo",
        "anthropic:echo",
    )
    assert (row["status"], row["stream"], row["prompt_tokens"], row["completion_tokens"]) == (
        200,
        0,
        4,
        3,
    )


def test_create_through_the_openai_provider(
    client: anthropic.Anthropic, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    raw = client.messages.with_raw_response.create(
        model="gpt-echo",
        max_tokens=20,
        system=[{"type": "text", "text": "be brief"}],
        messages=[{"role": "user", "content": [{"type": "text", "text": f"hi {marker}"}]}],
    )
    msg = raw.parse()
    assert raw.headers["x-cumulo-deployment"] == "openai:echo"
    assert msg.content[0].type == "text" and msg.content[0].text == f"echo: hi {marker}"
    assert msg.stop_reason == "end_turn" and msg.model == "gpt-echo"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 3)
    body = upstream.one(marker).body
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": f"hi {marker}"},
    ]
    assert body["max_tokens"] == 20


def test_create_through_the_bedrock_provider(
    client: anthropic.Anthropic,
    fake_bedrock: FakeBedrockUpstream,
    server: CumuloServer,
    key: ApiKey,
    marker: str,
) -> None:
    raw = client.messages.with_raw_response.create(
        model="br-echo",
        max_tokens=50,
        system="be brief",
        messages=user(f"hello {marker}"),
        stop_sequences=["NEVER"],
        extra_body={"temperature": 0.5},
    )
    msg = raw.parse()
    assert raw.headers["x-cumulo-deployment"] == "bedrock:echo"
    assert msg.id.startswith("msg_") and msg.role == "assistant" and msg.model == "br-echo"
    assert [(b.type, getattr(b, "text", None)) for b in msg.content] == [
        ("text", f"echo: hello {marker}")
    ]
    assert (msg.stop_reason, msg.stop_sequence) == ("end_turn", None)
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 3)

    [got] = bedrock_received(fake_bedrock, marker)
    assert (got.model_id, got.operation, got.auth) == ("echo", "converse", "sigv4")
    assert key.token not in json.dumps(got.headers)
    assert got.body == {
        "messages": [{"role": "user", "content": [{"text": f"hello {marker}"}]}],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.5, "stopSequences": ["NEVER"]},
    }

    [row] = server.usage_rows(key.id)
    assert (row["endpoint"], row["model"], row["deployment"]) == (
        "messages",
        "br-echo",
        "bedrock:echo",
    )
    assert (row["status"], row["stream"], row["prompt_tokens"], row["completion_tokens"]) == (
        200,
        0,
        4,
        3,
    )


def test_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model="claude-echo", max_tokens=2, messages=user("one two three"))
    assert msg.stop_reason == "max_tokens"
    assert msg.content[0].type == "text" and msg.content[0].text == "echo: one"


# -- streaming --------------------------------------------------------------------


@pytest.mark.parametrize("model", ["claude-echo", "gpt-echo", "br-echo"])
def test_stream_event_sequence(
    client: anthropic.Anthropic, server: CumuloServer, key: ApiKey, model: str, marker: str
) -> None:
    events = list(
        client.messages.create(
            model=model, max_tokens=50, stream=True, messages=user(f"one two {marker}")
        )
    )
    kinds = [e.type for e in events]
    assert [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k] == STREAM_EVENTS
    deltas = [
        e.delta.text
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "text_delta"
    ]
    assert len(deltas) >= 3 and "".join(deltas) == f"echo: one two {marker}"
    blocks = (RawContentBlockStartEvent, RawContentBlockDeltaEvent, RawContentBlockStopEvent)
    assert {e.index for e in events if isinstance(e, blocks)} == {0}
    [delta] = [e for e in events if e.type == "message_delta"]
    assert delta.delta.stop_reason == "end_turn" and delta.usage.output_tokens == 4
    [row] = server.usage_rows(key.id)
    assert (row["endpoint"], row["stream"], row["status"], row["completion_tokens"]) == (
        "messages",
        1,
        200,
        4,
    )


@pytest.mark.parametrize("model", ["claude-echo", "gpt-echo", "br-echo"])
def test_stream_helper_final_message(client: anthropic.Anthropic, model: str, marker: str) -> None:
    with client.messages.stream(
        model=model, max_tokens=50, system="be brief", messages=user(f"stream {marker}")
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == f"echo: stream {marker}"
    assert final.content[0].type == "text" and final.content[0].text == text
    assert final.stop_reason == "end_turn" and final.model == model
    assert (final.usage.input_tokens, final.usage.output_tokens) == (4, 3)


def test_first_token_arrives_before_the_upstream_finishes(
    client: anthropic.Anthropic, fake: FakeAnthropicUpstream, marker: str
) -> None:
    # `hold` sends one delta and waits (up to 10 s) for release(): buffering would time out.
    stream = client.with_options(timeout=5).messages.create(
        model="claude-hold", max_tokens=50, stream=True, messages=user(f"a b {marker}")
    )
    try:
        first = next(
            e.delta.text
            for e in stream
            if e.type == "content_block_delta" and e.delta.type == "text_delta"
        )
        assert first == "echo: "
        fake.release()
        rest = "".join(
            e.delta.text
            for e in stream
            if e.type == "content_block_delta" and e.delta.type == "text_delta"
        )
    finally:
        fake.release()
        stream.close()
    assert first + rest == f"echo: a b {marker}"


# -- tool use ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tools_model", "answer_model", "answer"),
    [
        ("claude-tools", "claude-tools", "result: sunny"),
        ("gpt-tools", "gpt-echo", "echo: thanks"),
        ("br-tools", "br-echo", "echo: thanks"),
    ],
)
def test_tool_use_round_trip(
    client: anthropic.Anthropic,
    fake: FakeAnthropicUpstream,
    upstream: FakeOpenAIUpstream,
    fake_bedrock: FakeBedrockUpstream,
    tools_model: str,
    answer_model: str,
    answer: str,
    marker: str,
) -> None:
    first = client.messages.create(
        model=tools_model,
        max_tokens=100,
        messages=user(marker),
        tools=[SEARCH, CLOCK],
        tool_choice={"type": "tool", "name": "search"},
    )
    assert first.stop_reason == "tool_use"
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "search" and call.input == {"query": marker}

    second = client.messages.create(
        model=answer_model,
        max_tokens=100,
        tools=[SEARCH, CLOCK],
        messages=[
            *user(marker),
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": call.id,
                        "content": [{"type": "text", "text": "sunny"}],
                    },
                    {"type": "text", "text": "thanks"},
                ],
            },
        ],
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == answer

    if tools_model.startswith("claude"):
        [_, sent] = fake.received(marker)
        assert sent.body["messages"][1:] == [
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": "search",
                        "input": {"query": marker},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"},
                    {"type": "text", "text": "thanks"},
                ],
            },
        ]
    elif tools_model.startswith("br"):
        [asked, answered] = bedrock_received(fake_bedrock, marker)
        assert asked.body["toolConfig"] == {
            "tools": [
                {
                    "toolSpec": {
                        "name": "search",
                        "description": "Search the web",
                        "inputSchema": {"json": SEARCH["input_schema"]},
                    }
                },
                {"toolSpec": {"name": "clock", "inputSchema": {"json": CLOCK["input_schema"]}}},
            ],
            "toolChoice": {"tool": {"name": "search"}},
        }
        assert answered.body["messages"][1:] == [
            {
                "role": "assistant",
                "content": [
                    {
                        "toolUse": {
                            "toolUseId": call.id,
                            "name": "search",
                            "input": {"query": marker},
                        }
                    }
                ],
            },
            {
                "role": "user",
                "content": [
                    {"toolResult": {"toolUseId": call.id, "content": [{"text": "sunny"}]}},
                    {"text": "thanks"},
                ],
            },
        ]
    else:
        [_, sent] = upstream.received(marker)
        assert sent.body["messages"][1:] == [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": "search", "arguments": json.dumps({"query": marker})},
                    }
                ],
            },
            {"role": "tool", "content": "sunny", "tool_call_id": call.id},
            {"role": "user", "content": "thanks"},
        ]


@pytest.mark.parametrize(
    ("model", "calls"), [("claude-tools", 2), ("gpt-tools", 1), ("br-tools", 1)]
)
def test_streamed_tool_use(
    client: anthropic.Anthropic, model: str, calls: int, marker: str
) -> None:
    with client.messages.stream(
        model=model,
        max_tokens=100,
        messages=user(marker),
        tools=[SEARCH, CLOCK],
        tool_choice={"type": "any"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    uses = [b for b in final.content if b.type == "tool_use"]
    assert len(uses) == calls
    assert uses[0].name == "search" and uses[0].input == {"query": marker}
    if calls == 2:
        assert (uses[1].name, uses[1].input) == ("clock", {})
        assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
        starts = [e.index for e in events if e.type == "content_block_start"]
        stops = [e.index for e in events if e.type == "content_block_stop"]
        assert starts == stops == [0, 1, 2]


# -- errors -----------------------------------------------------------------------


def test_bad_or_missing_key_is_authentication_error(server: CumuloServer, key: ApiKey) -> None:
    with (
        anthropic.Anthropic(
            base_url=server.url, api_key="ck-0123456789abcdef.wrong", max_retries=0
        ) as c,
        pytest.raises(anthropic.AuthenticationError) as info,
    ):
        c.messages.create(model="claude-echo", max_tokens=5, messages=user("x"))
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    body = {"model": "claude-echo", "max_tokens": 5, "messages": user("x")}
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/v1/messages", json=body).status_code == 401
        bad = http.post("/v1/messages", json=body, headers={"x-api-key": "nope"})
        assert bad.status_code == 401
        assert bad.json() == {
            "type": "error",
            "error": {"type": "authentication_error", "message": "Incorrect API key provided."},
        }
        # The Messages API's own header works as well as a bearer token.
        good = http.post("/v1/messages", json=body, headers={"x-api-key": key.token})
        assert good.status_code == 200 and good.json()["content"][0]["text"] == "echo: x"


def test_unknown_model_is_not_found(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="claude-nope", max_tokens=5, messages=user("x"))
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": user("x")}, "max_tokens: Field required"),
        (
            {"max_tokens": 5, "messages": user("x"), "temperature": 2},
            "temperature: Input should be",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "AA==",
                                },
                            }
                        ],
                    }
                ],
            },
            "messages.0.content.0.type: content blocks of type 'image' are not supported",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
            "messages.0.content.0.tool_use_id: Field required",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
            "messages.0.content.0.type: Input tag 'video'",
        ),
        (
            {"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "messages.0.role: Input",
        ),
        ({"max_tokens": 5, "messages": user("x"), "stream": "yes"}, "stream: Input should be"),
        ({"max_tokens": 5, "messages": user("x"), "stream": 1}, "stream: Input should be"),
        (
            {
                "max_tokens": 5,
                "messages": user("x"),
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": "on"},
            },
            "tool_choice.disable_parallel_tool_use: Input should be",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "tool_result",
                                "tool_use_id": "t1",
                                "content": "x",
                                "is_error": "no",
                            }
                        ],
                    }
                ],
            },
            "messages.0.content.0.is_error: Input should be",
        ),
    ],
)
def test_invalid_body_is_bad_request(
    client: anthropic.Anthropic, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        client.post(
            "/v1/messages", cast_to=anthropic.types.Message, body={"model": "claude-echo", **body}
        )
    error = info.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error" and error["message"].startswith(message)


def test_body_too_large(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(model="claude-echo", max_tokens=5, messages=user("x" * MAX_BODY))
    assert info.value.status_code == 413
    assert info.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


def test_tool_error_result_reaches_the_model_as_an_error(
    client: anthropic.Anthropic, upstream: FakeOpenAIUpstream, marker: str
) -> None:
    client.messages.create(
        model="gpt-echo",
        max_tokens=5,
        messages=[
            *user(marker),
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "clock", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": "boom",
                        "is_error": True,
                    }
                ],
            },
        ],
    )
    sent = upstream.one(marker).body["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "clock", "arguments": "{}"}
    assert sent[2] == {"role": "tool", "content": "Error: boom", "tool_call_id": "toolu_1"}


def test_upstream_rate_limit_and_overload(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="claude-429", max_tokens=5, messages=user("x"))
    assert limited.value.response.headers["retry-after"] == "7"
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as failed:
        client.messages.create(model="claude-overloaded", max_tokens=5, messages=user("x"))
    assert failed.value.status_code == 502
    assert failed.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_failure_after_the_stream_started_is_an_error_event(
    client: anthropic.Anthropic, server: CumuloServer, key: ApiKey
) -> None:
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in client.messages.create(
            model="claude-stream-error", max_tokens=50, stream=True, messages=user("a b c")
        ):
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                texts.append(event.delta.text)
    assert texts == ["echo: ", "a "]
    assert info.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    message = info.value.body["error"]["message"]  # type: ignore[index]
    assert "mid-stream" in message and "overloaded_error" not in message
    [row] = server.usage_rows(key.id)
    assert (row["status"], row["stream"]) == (502, 1)


# -- OpenAI front door → Anthropic provider --------------------------------------------


@pytest.fixture
def oai(server: CumuloServer, key: ApiKey) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=server.url + "/v1", api_key=key.token, max_retries=0, timeout=30
    ) as c:
        yield c


OPENAI_TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": t["name"],
            **({"description": t["description"]} if "description" in t else {}),
            "parameters": t["input_schema"],
        },
    }
    for t in (SEARCH, CLOCK)
]


def test_openai_sdk_tool_round_trip_to_anthropic(
    oai: openai.OpenAI, fake: FakeAnthropicUpstream, marker: str
) -> None:
    reply = oai.chat.completions.create(
        model="claude-tools",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": marker}],
        tools=OPENAI_TOOLS,
        tool_choice={"type": "function", "function": {"name": "search"}},
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    [call] = choice.message.tool_calls or []
    assert call.id == "toolu_fake01" and call.function.name == "search"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"query": marker}  # type: ignore[union-attr]
    first = fake.one(marker).body
    assert first["system"] == "be brief"
    assert first["tools"][0] == SEARCH and first["tool_choice"] == {
        "type": "tool",
        "name": "search",
    }

    answer = oai.chat.completions.create(
        model="claude-tools",
        tools=OPENAI_TOOLS,
        messages=[
            {"role": "user", "content": marker},
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
    )
    assert answer.choices[0].message.content == "result: sunny"
    assert answer.choices[0].finish_reason == "stop"


def test_openai_sdk_stream_from_anthropic(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="claude-echo",
            messages=[{"role": "user", "content": "one two"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: one two"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (2, 3)


def test_openai_sdk_streamed_tool_calls_from_anthropic(oai: openai.OpenAI, marker: str) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="claude-tools",
            messages=[{"role": "user", "content": marker}],
            tools=OPENAI_TOOLS,
            tool_choice="required",
            stream=True,
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert [(d.index, d.id, d.function.name) for d in deltas if d.id] == [  # type: ignore[union-attr]
        (0, "toolu_fake01", "search"),
        (1, "toolu_fake02", "clock"),
    ]
    args = [
        "".join(d.function.arguments or "" for d in deltas if d.index == i and d.function)
        for i in (0, 1)
    ]
    assert json.loads(args[0]) == {"query": marker} and json.loads(args[1]) == {}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
