"""Prompt caching through every wire format, with the official SDKs and `cumulo serve`.

One server serves the demo model locally (float32, prefix cache on by default) and
models backed by a fake Anthropic upstream and a fake Bedrock runtime, which simulate
their prompt caches (tests/fakes). It shows:

- cache hints (Anthropic `cache_control`, Bedrock `cachePoint`) accepted where each API
  allows them and passed through to an upstream of the same kind in its format;
- cached prompt tokens reported in each wire format (OpenAI
  `prompt_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens`, Bedrock
  `cacheReadInputTokens`), non-streamed and streamed, on a second request sharing a
  prefix, from the local prefix cache and mapped from remote upstreams;
- cached tokens in usage records, priced at the configured discount.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import boto3
import httpx
import openai
import pytest
from botocore.config import Config

from cumulo.engine.demo import build_demo_model
from fakes.anthropic_upstream import FakeAnthropicUpstream
from fakes.bedrock_upstream import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_KEY,
    BedrockRecorded,
    FakeBedrockUpstream,
)
from support import ApiKey, CumuloServer

ANTHROPIC_KEY = "sk-ant-fake-upstream-" + "3" * 20
RATE = 1000.0  # USD per million tokens, input and output, for the local model
LONG = " ".join(["the system prompt of a long conversation about clouds and rain"] * 8)


@pytest.fixture(scope="module")
def fake_anthropic() -> Iterator[FakeAnthropicUpstream]:
    with FakeAnthropicUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_bedrock() -> Iterator[FakeBedrockUpstream]:
    with FakeBedrockUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    fake_anthropic: FakeAnthropicUpstream,
    fake_bedrock: FakeBedrockUpstream,
    cumulo_factory: Callable[..., CumuloServer],
) -> CumuloServer:
    path = build_demo_model(tmp_path_factory.mktemp("prompt-cache") / "demo-tiny", seed=0)
    config = {
        "usage": {"flush_interval_s": 0.1},
        "pricing": {
            "local": {"input_per_mtok": RATE, "output_per_mtok": RATE},
            "cached_discount": 0.75,
        },
        "models": [
            {
                "name": "demo-tiny",
                "deployments": [{"provider": "local", "path": str(path), "dtype": "float32"}],
            },
            {
                "name": "claude-cache",
                "deployments": [
                    {
                        "provider": "anthropic",
                        "model": "echo",
                        "base_url": fake_anthropic.url,
                        "api_key_env": "T_ANTHROPIC_KEY",
                    }
                ],
            },
            {
                "name": "br-cache",
                "deployments": [
                    {
                        "provider": "bedrock",
                        "model": "echo",
                        "base_url": fake_bedrock.url,
                        "region": REGION,
                        "aws_access_key_id_env": "T_AWS_KEY_ID",
                        "aws_secret_access_key_env": "T_AWS_SECRET",
                    }
                ],
            },
        ],
    }
    return cumulo_factory(
        config,
        T_ANTHROPIC_KEY=ANTHROPIC_KEY,
        T_AWS_KEY_ID=ACCESS_KEY_ID,
        T_AWS_SECRET=SECRET_KEY,
    )


@pytest.fixture
def key(server: CumuloServer, request: pytest.FixtureRequest) -> ApiKey:
    return server.create_key(request.node.name[:200])


@pytest.fixture
def claude(server: CumuloServer, key: ApiKey) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=server.url, api_key=key.token, max_retries=0, timeout=60
    ) as c:
        yield c


@pytest.fixture
def oai(server: CumuloServer, key: ApiKey) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=key.token, max_retries=0, timeout=60
    ) as c:
        yield c


@pytest.fixture
def br(server: CumuloServer, key: ApiKey, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    c = boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=key.id,
        aws_secret_access_key=key.token.split(".", 1)[1],
        config=Config(retries={"total_max_attempts": 1}, read_timeout=60),
    )
    yield c
    c.close()


def cached_rows(server: CumuloServer, key: ApiKey, expect: int) -> list[tuple[Any, ...]]:
    server.usage_rows(key.id, expect=expect)
    return server.sql(
        "SELECT model, prompt_tokens, cached_tokens, completion_tokens, cost_usd FROM usage "
        "WHERE key_id = ? ORDER BY id",
        (key.id,),
    )


# -- the local engine's prefix cache --------------------------------------------------


def test_openai_chat_reports_cached_tokens(
    oai: openai.OpenAI, server: CumuloServer, key: ApiKey, marker: str
) -> None:
    system = {"role": "system", "content": f"{marker} {LONG}"}

    def ask(question: str, **kw: Any) -> Any:
        return oai.chat.completions.create(
            model="demo-tiny",
            messages=[system, {"role": "user", "content": question}],  # type: ignore[list-item]
            max_tokens=4,
            temperature=0,
            **kw,
        )

    first = ask("first question")
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    second = ask("second question")
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached is not None and 16 <= cached < second.usage.prompt_tokens
    assert cached % 16 == 0  # whole blocks
    chunks = list(ask("third question", stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == cached
    rows = cached_rows(server, key, 3)
    assert [r[2] for r in rows] == [0, cached, cached]
    model, prompt, hit, completion, cost = rows[1]
    # cached tokens at a quarter of the input price (cached_discount 0.75)
    want = ((prompt - hit) * RATE + hit * RATE * 0.25 + completion * RATE) / 1e6
    assert model == "demo-tiny" and cost == pytest.approx(want)


def test_openai_completions_report_cached_tokens(oai: openai.OpenAI, marker: str) -> None:
    prompt = f"{marker} {LONG}"
    oai.completions.create(model="demo-tiny", prompt=prompt + " one", max_tokens=2)
    again = oai.completions.create(model="demo-tiny", prompt=prompt + " two", max_tokens=2)
    assert again.usage is not None and again.usage.prompt_tokens_details is not None
    assert (again.usage.prompt_tokens_details.cached_tokens or 0) >= 16
    # Prompt log probabilities need the logits of every prompt position: no cache there.
    echoed = oai.completions.create(
        model="demo-tiny", prompt=prompt + " two", max_tokens=0, echo=True, logprobs=1
    )
    assert echoed.usage is not None and echoed.usage.prompt_tokens_details is not None
    assert echoed.usage.prompt_tokens_details.cached_tokens == 0


def test_anthropic_hints_on_the_local_model(claude: anthropic.Anthropic, marker: str) -> None:
    system: Any = [
        {"type": "text", "text": f"{marker} {LONG}", "cache_control": {"type": "ephemeral"}}
    ]

    def ask(question: str) -> Any:
        return claude.messages.create(
            model="demo-tiny",
            max_tokens=4,
            system=system,
            messages=[{"role": "user", "content": question}],
        )

    first = ask("the question")
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.cache_creation_input_tokens == 0
    second = ask("the question")
    read = second.usage.cache_read_input_tokens or 0
    assert read >= 16 and second.usage.cache_creation_input_tokens == 0
    # input_tokens leaves the cached ones out (the same prompt twice).
    assert second.usage.input_tokens == first.usage.input_tokens - read
    with claude.messages.stream(
        model="demo-tiny",
        max_tokens=4,
        system=system,
        messages=[{"role": "user", "content": "the question"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == read


def test_bedrock_hints_on_the_local_model(br: Any, marker: str) -> None:
    def ask(question: str, stream: bool = False) -> Any:
        kw: Any = {
            "modelId": "demo-tiny",
            "system": [{"text": f"{marker} {LONG}"}, {"cachePoint": {"type": "default"}}],
            "messages": [{"role": "user", "content": [{"text": question}]}],
            "inferenceConfig": {"maxTokens": 4, "temperature": 0},
        }
        if not stream:
            return br.converse(**kw)["usage"]
        events = list(br.converse_stream(**kw)["stream"])
        return next(e["metadata"]["usage"] for e in events if "metadata" in e)

    assert ask("first question")["cacheReadInputTokens"] == 0
    second = ask("second question")
    assert second["cacheReadInputTokens"] >= 16 and second["cacheWriteInputTokens"] == 0
    assert (
        second["inputTokens"] + second["cacheReadInputTokens"] + second["outputTokens"]
        == (second["totalTokens"])
    )
    assert (
        ask("third question", stream=True)["cacheReadInputTokens"]
        == (second["cacheReadInputTokens"])
    )


# -- pass-through to remote upstreams ---------------------------------------------------


def test_cache_control_passes_through_to_anthropic(
    claude: anthropic.Anthropic,
    fake_anthropic: FakeAnthropicUpstream,
    server: CumuloServer,
    key: ApiKey,
    marker: str,
) -> None:
    ephemeral: Any = {"type": "ephemeral"}
    tools: Any = [
        {
            "name": "search",
            "input_schema": {"type": "object", "properties": {}},
            "cache_control": ephemeral,
        }
    ]
    system: Any = [{"type": "text", "text": f"{marker} {LONG}", "cache_control": ephemeral}]
    context: Any = {"type": "text", "text": "a long document " * 20, "cache_control": ephemeral}

    def ask(question: str) -> Any:
        return claude.messages.create(
            model="claude-cache",
            max_tokens=50,
            system=system,
            tools=tools,
            tool_choice={"type": "none"},
            messages=[
                {"role": "user", "content": [context]},
                {"role": "assistant", "content": "noted"},
                {"role": "user", "content": question},
            ],
        )

    first = ask("first question")
    sent = fake_anthropic.received(marker)[-1].body
    assert sent["tools"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent["system"] == [
        {"type": "text", "text": f"{marker} {LONG}", "cache_control": {"type": "ephemeral"}}
    ]
    assert sent["messages"][0]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in json.dumps(sent["messages"][1:])
    prefix_words = len(LONG.split()) + 1 + 3 * 20
    assert first.usage.cache_creation_input_tokens == prefix_words
    assert first.usage.cache_read_input_tokens == 0
    second = ask("second question")
    assert second.usage.cache_read_input_tokens == prefix_words
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == first.usage.input_tokens  # the words after it
    with claude.messages.stream(
        model="claude-cache",
        max_tokens=50,
        system=system,
        tools=tools,
        tool_choice={"type": "none"},
        messages=[
            {"role": "user", "content": [context]},
            {"role": "assistant", "content": "noted"},
            {"role": "user", "content": "third question"},
        ],
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == prefix_words
    rows = cached_rows(server, key, 3)
    assert [r[2] for r in rows] == [0, prefix_words, prefix_words]
    # Prompt tokens count cached ones: the upstream's input + cache read + cache creation.
    assert rows[1][1] == second.usage.input_tokens + prefix_words


def test_cache_points_pass_through_to_bedrock(
    br: Any, fake_bedrock: FakeBedrockUpstream, marker: str
) -> None:
    point = {"cachePoint": {"type": "default"}}
    spec = {"toolSpec": {"name": "search", "inputSchema": {"json": {"type": "object"}}}}

    def ask(question: str, stream: bool = False) -> Any:
        kw: Any = {
            "modelId": "br-cache",
            "system": [{"text": f"{marker} {LONG}"}, point],
            "messages": [
                {"role": "user", "content": [{"text": "a long document " * 20}, point]},
                {"role": "assistant", "content": [{"text": "noted"}]},
                {"role": "user", "content": [{"text": question}]},
            ],
            "toolConfig": {"tools": [spec, point]},
        }
        if not stream:
            return br.converse(**kw)["usage"]
        events = list(br.converse_stream(**kw)["stream"])
        return next(e["metadata"]["usage"] for e in events if "metadata" in e)

    first = ask("first question")
    sent = [r for r in fake_bedrock.received(marker) if isinstance(r, BedrockRecorded)][-1].body
    assert sent["system"] == [{"text": f"{marker} {LONG}"}, point]
    assert sent["toolConfig"]["tools"] == [
        {"toolSpec": {"name": "search", "inputSchema": {"json": {"type": "object"}}}},
        point,
    ]
    assert sent["messages"][0]["content"] == [{"text": "a long document " * 20}, point]
    assert point not in sent["messages"][2]["content"]
    prefix_words = len(LONG.split()) + 1 + 3 * 20
    assert first["cacheWriteInputTokens"] == prefix_words and first["cacheReadInputTokens"] == 0
    second = ask("second question")
    assert second["cacheReadInputTokens"] == prefix_words
    assert second["cacheWriteInputTokens"] == 0
    assert second["inputTokens"] == first["inputTokens"]
    assert ask("third question", stream=True)["cacheReadInputTokens"] == prefix_words


def test_a_misshapen_hint_is_a_400_naming_the_field(
    claude: anthropic.Anthropic, server: CumuloServer, key: ApiKey
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(
            model="claude-cache",
            max_tokens=5,
            system=[{"type": "text", "text": "hi", "cache_control": {"type": "forever"}}],  # type: ignore[list-item,typeddict-item]
            messages=[{"role": "user", "content": "hello"}],
        )
    assert "system" in str(info.value) and "cache_control" in str(info.value)
    resp = httpx.post(
        f"{server.url}/model/br-cache/converse",
        headers={"authorization": f"Bearer {key.token}"},
        json={
            "messages": [{"role": "user", "content": [{"text": "hi"}]}],
            "system": [{"cachePoint": {"type": "sometimes"}}],
        },
        timeout=30,
    )
    assert resp.status_code == 400 and "cachePoint" in resp.text


def test_cache_control_reaches_bedrock_as_cache_points(
    claude: anthropic.Anthropic, fake_bedrock: FakeBedrockUpstream, marker: str
) -> None:
    # The hints are canonical: an Anthropic caller's breakpoints reach a Bedrock upstream
    # as cachePoint blocks, and its cache reads come back as cache_read_input_tokens.
    system: Any = [
        {"type": "text", "text": f"{marker} {LONG}", "cache_control": {"type": "ephemeral"}}
    ]
    kw: Any = {"model": "br-cache", "max_tokens": 50, "system": system}
    first = claude.messages.create(**kw, messages=[{"role": "user", "content": "one"}])
    sent = [r for r in fake_bedrock.received(marker) if isinstance(r, BedrockRecorded)][-1].body
    assert sent["system"] == [{"text": f"{marker} {LONG}"}, {"cachePoint": {"type": "default"}}]
    words = len(LONG.split()) + 1
    assert first.usage.cache_creation_input_tokens == words
    second = claude.messages.create(**kw, messages=[{"role": "user", "content": "two"}])
    assert second.usage.cache_read_input_tokens == words
    assert second.usage.input_tokens == first.usage.input_tokens
