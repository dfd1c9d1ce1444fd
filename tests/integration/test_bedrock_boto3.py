"""boto3's bedrock-runtime client, unchanged, against `cumulo serve`.

One cumulo for the module, serving models from a fake Bedrock runtime (the
`bedrock` provider, SigV4 or bearer upstream), from the fake OpenAI upstream
and from a fake Anthropic upstream (`cl-*`). boto3 signs with SigV4 using a cumulo key's id and secret, or sends
the key as a bearer token (`AWS_BEARER_TOKEN_BEDROCK`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import httpx
import openai
import pytest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from cumulo.governance.identity import keys
from fakes import FakeOpenAIUpstream
from fakes.anthropic_upstream import FakeAnthropicUpstream
from fakes.bedrock_upstream import (
    ACCESS_KEY_ID,
    API_KEY,
    REGION,
    SECRET_KEY,
    BedrockRecorded,
    FakeBedrockUpstream,
)
from support import ApiKey, CumuloServer, openai_deployment

TOOLS = {
    "tools": [
        {
            "toolSpec": {
                "name": "search",
                "description": "Search the web",
                "inputSchema": {
                    "json": {
                        "type": "object",
                        "properties": {"query": {"type": "string"}},
                        "required": ["query"],
                    }
                },
            }
        },
        {"toolSpec": {"name": "weather", "inputSchema": {"json": {"type": "object"}}}},
    ]
}
ANTHROPIC_KEY = "sk-ant-fake-upstream-" + "3" * 20
MAX_BODY = 256 * 1024


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
    fake_bedrock: FakeBedrockUpstream,
    upstream: FakeOpenAIUpstream,
    fake_anthropic: FakeAnthropicUpstream,
    cumulo_factory: Callable[..., CumuloServer],
) -> CumuloServer:
    def bedrock(name: str, model: str, **auth: str) -> dict[str, Any]:
        auth = auth or {
            "aws_access_key_id_env": "T_AWS_KEY_ID",
            "aws_secret_access_key_env": "T_AWS_SECRET",
        }
        return {
            "name": name,
            "deployments": [
                {
                    "provider": "bedrock",
                    "model": model,
                    "base_url": fake_bedrock.url,
                    "region": REGION,
                    **auth,
                }
            ],
        }

    def oa(name: str, model: str) -> dict[str, Any]:
        return {"name": name, "deployments": [openai_deployment(upstream, model)]}

    def claude(name: str, model: str) -> dict[str, Any]:
        return {
            "name": name,
            "deployments": [
                {
                    "provider": "anthropic",
                    "model": model,
                    "base_url": fake_anthropic.url,
                    "api_key_env": "T_ANTHROPIC_KEY",
                }
            ],
        }

    config = {
        "usage": {"flush_interval_s": 0.1},
        "server": {"max_body_bytes": MAX_BODY},
        "models": [
            bedrock("br-echo", "echo"),
            bedrock("br-tools", "tools"),
            bedrock("br-bearer", "echo", api_key_env="T_BEDROCK_API_KEY"),
            bedrock("br-throttled", "stream-error:throttlingException"),
            bedrock("br-500", "status:500"),
            oa("oa-echo", "echo"),
            oa("oa-tools", "tools"),
            oa("team/echo:v1", "echo"),
            claude("cl-echo", "echo"),
            claude("cl-tools", "tools"),
        ],
    }
    return cumulo_factory(
        config,
        T_AWS_KEY_ID=ACCESS_KEY_ID,
        T_AWS_SECRET=SECRET_KEY,
        T_BEDROCK_API_KEY=API_KEY,
        T_ANTHROPIC_KEY=ANTHROPIC_KEY,
    )


@pytest.fixture(scope="module")
def key(server: CumuloServer) -> ApiKey:
    return server.create_key("boto3")


def secret_of(key: ApiKey) -> str:
    return key.token.split(".", 1)[1]


@pytest.fixture(autouse=True)
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def client(server: CumuloServer, key_id: str | None, secret: str | None) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}, read_timeout=30),
    )


@pytest.fixture
def br(server: CumuloServer, key: ApiKey) -> Iterator[Any]:
    c = client(server, key.id, secret_of(key))
    yield c
    c.close()  # its pooled sockets, not left to the garbage collector


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def received(fake: FakeBedrockUpstream, marker: str) -> list[BedrockRecorded]:
    return [r for r in fake.received(marker) if isinstance(r, BedrockRecorded)]


@pytest.mark.parametrize("model", ["br-echo", "oa-echo", "team/echo:v1", "cl-echo"])
def test_converse(br: Any, model: str, marker: str) -> None:
    reply = br.converse(
        modelId=model,
        messages=[user(f"hello {marker}")],
        system=[{"text": "be brief"}],
        inferenceConfig={"maxTokens": 50},
    )
    assert reply["output"]["message"] == {
        "role": "assistant",
        "content": [{"text": f"echo: hello {marker}"}],
    }
    assert reply["stopReason"] == "end_turn"
    assert reply["usage"]["outputTokens"] == 3
    assert reply["usage"]["totalTokens"] == reply["usage"]["inputTokens"] + 3
    assert reply["metrics"]["latencyMs"] >= 0
    headers = reply["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-cumulo-deployment"] in ("bedrock:echo", "openai:echo", "anthropic:echo")


def test_converse_reaches_bedrock_translated(
    br: Any, fake_bedrock: FakeBedrockUpstream, marker: str
) -> None:
    br.converse(
        modelId="br-echo",
        messages=[user(marker)],
        system=[{"text": "be brief"}],
        inferenceConfig={"maxTokens": 50, "temperature": 0.25, "stopSequences": ["END"]},
    )
    [got] = received(fake_bedrock, marker)
    assert got.model_id == "echo" and got.auth == "sigv4"
    assert got.body == {
        "messages": [user(marker)],
        "system": [{"text": "be brief"}],
        "inferenceConfig": {"maxTokens": 50, "temperature": 0.25, "stopSequences": ["END"]},
    }


@pytest.mark.parametrize("tools_model", ["br-tools", "oa-tools"])
def test_tool_use_round_trip(
    br: Any,
    fake_bedrock: FakeBedrockUpstream,
    upstream: FakeOpenAIUpstream,
    tools_model: str,
    marker: str,
) -> None:
    question = user(f"weather {marker}")
    reply = br.converse(
        modelId=tools_model,
        messages=[question],
        toolConfig={**TOOLS, "toolChoice": {"tool": {"name": "weather"}}},
    )
    assert reply["stopReason"] == "tool_use"
    [block] = reply["output"]["message"]["content"]
    use = block["toolUse"]
    assert use["name"] == "weather" and use["input"] == {"query": f"weather {marker}"}

    result = {
        "role": "user",
        "content": [
            {
                "toolResult": {
                    "toolUseId": use["toolUseId"],
                    "content": [{"text": "sunny"}],
                    "status": "success",
                }
            }
        ],
    }
    follow = [question, reply["output"]["message"], result, user(f"thanks {marker}")]
    final = br.converse(modelId="br-echo", messages=follow, toolConfig=TOOLS)
    assert final["output"]["message"]["content"] == [{"text": f"echo: thanks {marker}"}]
    sent = received(fake_bedrock, f"thanks {marker}")[-1].body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [
            {
                "toolUse": {
                    "toolUseId": use["toolUseId"],
                    "name": "weather",
                    "input": {"query": f"weather {marker}"},
                }
            }
        ],
    }
    assert sent[2] == {
        "role": "user",
        "content": [
            {"toolResult": {"toolUseId": use["toolUseId"], "content": [{"text": "sunny"}]}},
            {"text": f"thanks {marker}"},
        ],
    }
    if tools_model == "oa-tools":
        body = upstream.one(f"weather {marker}").body
        assert body["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
        assert body["tools"][0]["function"]["parameters"]["required"] == ["query"]


def test_converse_reaches_anthropic_translated(
    br: Any, fake_anthropic: FakeAnthropicUpstream, marker: str
) -> None:
    reply = br.converse(
        modelId="cl-echo",
        messages=[user(marker)],
        system=[{"text": "be brief"}],
        inferenceConfig={"maxTokens": 50, "temperature": 0.25, "stopSequences": ["END"]},
    )
    assert reply["output"]["message"]["content"] == [{"text": f"echo: {marker}"}]
    assert reply["ResponseMetadata"]["HTTPHeaders"]["x-cumulo-deployment"] == "anthropic:echo"
    got = fake_anthropic.one(marker)
    assert got.headers["x-api-key"] == ANTHROPIC_KEY
    assert {
        k: got.body.get(k)
        for k in ("model", "system", "max_tokens", "temperature", "stop_sequences")
    } == {
        "model": "echo",
        "system": "be brief",
        "max_tokens": 50,
        "temperature": 0.25,
        "stop_sequences": ["END"],
    }
    assert got.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": marker}]}]


def test_tool_use_round_trip_through_anthropic(
    br: Any, fake_anthropic: FakeAnthropicUpstream, marker: str
) -> None:
    question = user(f"weather {marker}")
    reply = br.converse(
        modelId="cl-tools",
        messages=[question],
        system=[{"text": "be brief"}],
        toolConfig={**TOOLS, "toolChoice": {"tool": {"name": "search"}}},
    )
    assert reply["stopReason"] == "tool_use"
    message = reply["output"]["message"]
    assert message["content"][0] == {"text": "Let me check."}
    [use] = [b["toolUse"] for b in message["content"] if "toolUse" in b]
    assert use["name"] == "search" and use["input"] == {"query": f"weather {marker}"}
    first = fake_anthropic.one(marker).body
    assert first["tools"] == [
        {
            "name": "search",
            "description": "Search the web",
            "input_schema": TOOLS["tools"][0]["toolSpec"]["inputSchema"]["json"],
        },
        {"name": "weather", "input_schema": {"type": "object"}},
    ]
    assert first["tool_choice"] == {"type": "tool", "name": "search"}

    result = {
        "role": "user",
        "content": [
            {
                "toolResult": {
                    "toolUseId": use["toolUseId"],
                    "content": [{"text": "sunny"}],
                    "status": "success",
                }
            }
        ],
    }
    final = br.converse(modelId="cl-tools", messages=[question, message, result], toolConfig=TOOLS)
    assert final["stopReason"] == "end_turn"
    assert final["output"]["message"]["content"] == [{"text": "result: sunny"}]
    [_, sent] = fake_anthropic.received(marker)
    assert sent.body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": use["toolUseId"],
                    "name": "search",
                    "input": {"query": f"weather {marker}"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use["toolUseId"], "content": "sunny"}
            ],
        },
    ]


def test_converse_stream_tool_use_through_anthropic(
    br: Any, fake_anthropic: FakeAnthropicUpstream, marker: str
) -> None:
    events = stream_events(
        br,
        modelId="cl-tools",
        messages=[user(marker)],
        toolConfig={**TOOLS, "toolChoice": {"any": {}}},
    )
    assert fake_anthropic.one(marker).body["tool_choice"] == {"type": "any"}
    texts = [
        e["contentBlockDelta"]["delta"]["text"]
        for e in events
        if "text" in e.get("contentBlockDelta", {}).get("delta", {})
    ]
    assert "".join(texts) == "Let me check."
    starts = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert [(s["contentBlockIndex"], s["start"]["toolUse"]["name"]) for s in starts] == [
        (1, "search"),
        (2, "weather"),
    ]
    assert all(s["start"]["toolUse"]["toolUseId"] for s in starts)
    inputs = [
        "".join(
            e["contentBlockDelta"]["delta"]["toolUse"]["input"]
            for e in events
            if e.get("contentBlockDelta", {}).get("contentBlockIndex") == i
        )
        for i in (1, 2)
    ]
    assert json.loads(inputs[0]) == {"query": marker} and json.loads(inputs[1] or "{}") == {}
    stops = [e["contentBlockStop"]["contentBlockIndex"] for e in events if "contentBlockStop" in e]
    assert stops == [0, 1, 2]
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}


def stream_events(br: Any, **kwargs: Any) -> list[dict[str, Any]]:
    response = br.converse_stream(**kwargs)
    assert response["ResponseMetadata"]["HTTPHeaders"]["content-type"] == (
        "application/vnd.amazon.eventstream"
    )
    return list(response["stream"])


@pytest.mark.parametrize("model", ["br-echo", "oa-echo", "cl-echo"])
def test_converse_stream_text(br: Any, model: str, marker: str) -> None:
    events = stream_events(br, modelId=model, messages=[user(f"a b {marker}")])
    names = [next(iter(e)) for e in events]
    assert names[0] == "messageStart" and events[0]["messageStart"] == {"role": "assistant"}
    assert names[-4:] == ["contentBlockDelta", "contentBlockStop", "messageStop", "metadata"]
    deltas = [e["contentBlockDelta"] for e in events if "contentBlockDelta" in e]
    assert len(deltas) >= 3 and {d["contentBlockIndex"] for d in deltas} == {0}
    assert "".join(d["delta"]["text"] for d in deltas) == f"echo: a b {marker}"
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    usage = events[-1]["metadata"]["usage"]
    assert (usage["inputTokens"], usage["outputTokens"], usage["totalTokens"]) == (3, 4, 7)
    assert events[-1]["metadata"]["metrics"]["latencyMs"] >= 0


@pytest.mark.parametrize("model", ["br-tools", "oa-tools"])
def test_converse_stream_tool_use(br: Any, model: str, marker: str) -> None:
    events = stream_events(
        br, modelId=model, messages=[user(marker)], toolConfig={**TOOLS, "toolChoice": {"any": {}}}
    )
    [start] = [e["contentBlockStart"] for e in events if "contentBlockStart" in e]
    assert start["start"]["toolUse"]["name"] == "search"
    assert start["start"]["toolUse"]["toolUseId"]
    index = start["contentBlockIndex"]
    pieces = [e["contentBlockDelta"] for e in events if "contentBlockDelta" in e]
    assert all(p["contentBlockIndex"] == index for p in pieces) and len(pieces) > 1
    assert json.loads("".join(p["delta"]["toolUse"]["input"] for p in pieces)) == {"query": marker}
    assert {"contentBlockStop": {"contentBlockIndex": index}} in events
    assert events[-2] == {"messageStop": {"stopReason": "tool_use"}}
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 5


def test_error_mid_stream_is_an_exception_frame(br: Any) -> None:
    response = br.converse_stream(modelId="br-throttled", messages=[user("a b")])
    seen = []
    with pytest.raises(EventStreamError) as info:
        for event in response["stream"]:
            seen.append(event)
    response["stream"].close()  # the error leaves its connection open
    assert info.value.response["Error"]["Code"] == "throttlingException"
    assert seen[0] == {"messageStart": {"role": "assistant"}}
    assert seen[1]["contentBlockDelta"]["delta"] == {"text": "echo: "}


def test_unknown_model(br: Any, server: CumuloServer, key: ApiKey) -> None:
    with pytest.raises(br.exceptions.ResourceNotFoundException) as info:
        br.converse(modelId="no-such-model", messages=[user("x")])
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(br.exceptions.ResourceNotFoundException):
        br.converse_stream(modelId="no-such-model", messages=[user("x")])


def test_bad_request_is_validation_exception(br: Any) -> None:
    image = {"image": {"format": "png", "source": {"bytes": b"\x89PNG"}}}
    with pytest.raises(br.exceptions.ValidationException, match="'image' is not supported"):
        br.converse(modelId="oa-echo", messages=[{"role": "user", "content": [image]}])
    with pytest.raises(br.exceptions.ValidationException, match=r"inferenceConfig\.temperature"):
        br.converse(modelId="oa-echo", messages=[user("x")], inferenceConfig={"temperature": 1.5})


def test_a_body_over_the_limit_is_413(br: Any, server: CumuloServer, key: ApiKey) -> None:
    big = "x" * MAX_BODY
    for call in (br.converse, br.converse_stream):  # SigV4: the body is read to check it
        with pytest.raises(br.exceptions.ValidationException) as info:
            call(modelId="oa-echo", messages=[user(big)])
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
    resp = httpx.post(
        f"{server.url}/model/oa-echo/converse",
        json={"messages": [user(big)]},
        headers={"Authorization": f"Bearer {key.token}"},
    )
    assert resp.status_code == 413 and resp.headers["x-amzn-errortype"] == "ValidationException"
    assert set(resp.json()) == {"message"}


def test_upstream_failure_is_model_error(br: Any) -> None:
    with pytest.raises(br.exceptions.ModelErrorException) as info:
        br.converse(modelId="br-500", messages=[user("x")])
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 424


def test_wrong_secret_is_403(server: CumuloServer, key: ApiKey) -> None:
    wrong = "w" + secrets.token_urlsafe(20)
    with pytest.raises(ClientError) as info:
        client(server, key.id, wrong).converse(modelId="oa-echo", messages=[user("x")])
    err = info.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err["Error"]["Code"] == "InvalidSignatureException"
    with pytest.raises(ClientError) as unknown:
        client(server, "0123456789abcdef", wrong).converse(modelId="oa-echo", messages=[user("x")])
    assert unknown.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert wrong not in server.output()


def test_bearer_token(server: CumuloServer, key: ApiKey, marker: str) -> None:
    # boto3 sends AWS_BEARER_TOKEN_BEDROCK only over HTTPS, so this speaks the wire directly
    # (test_https.py drives boto3 with a bearer token against cumulo serving HTTPS).
    url = f"{server.url}/model/br-echo/converse"
    auth = {"Authorization": f"Bearer {key.token}"}
    resp = httpx.post(url, json={"messages": [user(marker)]}, headers=auth)
    assert resp.status_code == 200, resp.text
    assert resp.json()["output"]["message"]["content"] == [{"text": f"echo: {marker}"}]
    with httpx.stream(
        "POST", url + "-stream", json={"messages": [user(marker)]}, headers=auth
    ) as streamed:
        assert streamed.headers["content-type"] == "application/vnd.amazon.eventstream"
        buffer = EventStreamBuffer()  # botocore's own parser checks every CRC
        for chunk in streamed.iter_bytes():
            buffer.add_data(chunk)
        frames = list(buffer)
    assert [f.headers[":event-type"] for f in frames][:2] == ["messageStart", "contentBlockDelta"]
    assert all(f.headers[":message-type"] == "event" for f in frames)
    assert all(f.headers[":content-type"] == "application/json" for f in frames)
    resp = httpx.post(
        url, json={"messages": [user(marker)]}, headers={"Authorization": f"Bearer {key.token}x"}
    )
    assert resp.status_code == 403
    assert resp.headers["x-amzn-errortype"] == "UnrecognizedClientException"


def test_bearer_upstream(br: Any, fake_bedrock: FakeBedrockUpstream, marker: str) -> None:
    br.converse(modelId="br-bearer", messages=[user(marker)])
    [got] = received(fake_bedrock, marker)
    assert got.auth == "bearer"


def test_a_key_from_before_sigv4_is_bearer_only(server: CumuloServer) -> None:
    old = keys.generate()  # as created before migration 0002: a hash, no encrypted secret
    with contextlib.closing(sqlite3.connect(server.db_path, timeout=10)) as db, db:
        db.execute(
            "INSERT INTO api_keys (id, name, role, secret_hash, created_at) VALUES (?, ?, ?, ?, ?)",
            (old.id, "old", "caller", keys.hash_secret(old.secret), time.time()),
        )
    with pytest.raises(ClientError) as info:
        client(server, old.id, old.secret).converse(modelId="oa-echo", messages=[user("x")])
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "Bearer" in info.value.response["Error"]["Message"]
    resp = httpx.post(
        f"{server.url}/model/oa-echo/converse",
        json={"messages": [user("hi")]},
        headers={"Authorization": f"Bearer {old.token}"},
    )
    assert (
        resp.status_code == 200
        and resp.json()["output"]["message"]["content"][0]["text"] == "echo: hi"
    )


def test_errors_have_bedrock_shape(server: CumuloServer, key: ApiKey) -> None:
    resp = httpx.post(
        f"{server.url}/model/oa-echo/converse",
        content=b"{not json",
        headers={"Authorization": f"Bearer {key.token}"},
    )
    assert resp.status_code == 400 and resp.headers["x-amzn-errortype"] == "ValidationException"
    assert set(resp.json()) == {"message"}
    resp = httpx.post(f"{server.url}/model/oa-echo/converse", json={"messages": [user("x")]})
    assert resp.status_code == 403
    assert resp.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"


def test_openai_sdk_to_bedrock_provider_with_tools(
    server: CumuloServer, key: ApiKey, fake_bedrock: FakeBedrockUpstream, marker: str
) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
            },
        }
    ]
    with openai.OpenAI(base_url=server.url + "/v1", api_key=key.token, max_retries=0) as oa:
        reply = oa.chat.completions.create(
            model="br-tools",
            messages=[{"role": "user", "content": marker}],
            tools=tools,  # type: ignore[arg-type]
        )
        [call] = reply.choices[0].message.tool_calls or []
        assert reply.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "lookup"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"query": marker}  # type: ignore[union-attr]
        final = oa.chat.completions.create(
            model="br-echo",
            messages=[
                {"role": "user", "content": marker},
                reply.choices[0].message.model_dump(exclude_none=True),  # type: ignore[list-item]
                {"role": "tool", "tool_call_id": call.id, "content": "found it"},
            ],
        )
    assert final.choices[0].message.content == f"echo: {marker}"
    sent = received(fake_bedrock, "found it")[-1].body["messages"]
    assert sent[1]["content"] == [
        {"toolUse": {"toolUseId": call.id, "name": "lookup", "input": {"query": marker}}}
    ]
    assert sent[2] == {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": call.id, "content": [{"text": "found it"}]}}],
    }


def test_usage_is_recorded(server: CumuloServer, marker: str) -> None:
    own = server.create_key("usage")
    br = client(server, own.id, secret_of(own))
    br.converse(modelId="br-echo", messages=[user(marker)])
    list(br.converse_stream(modelId="oa-echo", messages=[user(marker)])["stream"])
    rows = server.usage_rows(own.id, expect=2)
    assert [(r["endpoint"], r["model"], r["status"], r["stream"]) for r in rows] == [
        ("bedrock.converse", "br-echo", 200, 0),
        ("bedrock.converse_stream", "oa-echo", 200, 1),
    ]


def test_master_key_and_secrets_at_rest(server: CumuloServer, key: ApiKey) -> None:
    master = server.home / "master.key"
    assert stat.S_IMODE(master.stat().st_mode) == 0o600
    [(sealed,)] = server.sql("SELECT secret_enc FROM api_keys WHERE id = ?", (key.id,))
    assert sealed.startswith("v1.") and secret_of(key) not in sealed
    assert secret_of(key) not in server.output()
