"""An upstream's error text never reaches the caller: upstreams that echo the request headers
(cumulo's upstream key among them) in their error, for each provider and front door.

The caller gets the kind of failure, the status, the deployment's label and a request id;
the server log holds the upstream's text under that id, with the credentials masked.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError

from fakes import FakeOpenAIUpstream
from fakes.anthropic_upstream import FakeAnthropicUpstream
from fakes.bedrock_upstream import API_KEY as BEDROCK_KEY
from fakes.bedrock_upstream import FakeBedrockUpstream
from support import UPSTREAM_KEY, ApiKey, CumuloServer, openai_deployment

ANTHROPIC_KEY = "sk-ant-fake-reflected-" + "4" * 20
REQUEST_ID = re.compile(r"upstream-[0-9a-f]{16}")
SECRETS = (UPSTREAM_KEY, ANTHROPIC_KEY, BEDROCK_KEY)
NO_ROUTING = {"retries": 0, "breaker": {"consecutive_failures": 1_000_000, "error_rate": 1.0}}
USER = [{"role": "user", "content": "hello there"}]


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
    upstream: FakeOpenAIUpstream,
    fake_anthropic: FakeAnthropicUpstream,
    fake_bedrock: FakeBedrockUpstream,
    cumulo_factory: Callable[..., CumuloServer],
) -> CumuloServer:
    def model(name: str, deployment: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "routing": NO_ROUTING, "deployments": [deployment]}

    def claude(upstream_model: str) -> dict[str, Any]:
        return {
            "provider": "anthropic",
            "model": upstream_model,
            "base_url": fake_anthropic.url,
            "api_key_env": "T_ANTHROPIC_KEY",
        }

    def bedrock(upstream_model: str) -> dict[str, Any]:
        return {
            "provider": "bedrock",
            "model": upstream_model,
            "base_url": fake_bedrock.url,
            "region": "us-east-1",
            "api_key_env": "T_BEDROCK_KEY",
        }

    return cumulo_factory(
        {
            "models": [
                model("oa-500", openai_deployment(upstream, "reflect:500")),
                model("oa-400", openai_deployment(upstream, "reflect:400")),
                model("oa-stream", openai_deployment(upstream, "reflect-stream")),
                model("cl-503", claude("reflect:503")),
                model("cl-stream", claude("reflect-stream:1")),
                model("br-500", bedrock("reflect:500")),
                model("br-stream", bedrock("reflect-stream")),
            ]
        },
        T_ANTHROPIC_KEY=ANTHROPIC_KEY,
        T_BEDROCK_KEY=BEDROCK_KEY,
    )


@pytest.fixture(scope="module")
def key(server: CumuloServer) -> ApiKey:
    return server.create_key("reflected")


def assert_safe(text: str, label: str, status: str | None = None) -> str:
    """`text` names the deployment and a request id, holds nothing the upstream said, and
    the server log has the upstream's words under that id, masked. The request id."""
    for secret in SECRETS:
        assert secret not in text
    assert "you sent" not in text and "authorization" not in text.lower()
    assert f"'{label}'" in text, text
    if status is not None:
        assert f"HTTP {status}" in text, text
    [request_id] = REQUEST_ID.findall(text)
    return request_id


def assert_logged(server: CumuloServer, request_id: str) -> None:
    [line] = [line for line in server.output().splitlines() if request_id in line]
    assert "you sent" in line and "[masked]" in line
    for secret in SECRETS:
        assert secret not in server.output()


@pytest.mark.parametrize(
    ("model", "label", "status", "code"),
    [
        ("oa-500", "openai:reflect:500", 502, "500"),
        ("oa-400", "openai:reflect:400", 400, "400"),
        ("cl-503", "anthropic:reflect:503", 502, "503"),
        ("br-500", "bedrock:reflect:500", 502, "500"),
    ],
)
def test_an_upstream_error_is_described_never_forwarded(
    server: CumuloServer, key: ApiKey, model: str, label: str, status: int, code: str
) -> None:
    resp = httpx.post(
        f"{server.url}/v1/chat/completions",
        timeout=30,
        headers={"Authorization": f"Bearer {key.token}"},
        json={"model": model, "messages": USER},
    )
    assert resp.status_code == status, resp.text
    request_id = assert_safe(resp.text, label, code)
    assert resp.headers["x-cumulo-request-id"] == request_id
    assert_logged(server, request_id)


@pytest.mark.parametrize(
    ("model", "label"),
    [
        ("oa-stream", "openai:reflect-stream"),
        ("cl-stream", "anthropic:reflect-stream:1"),
        ("br-stream", "bedrock:reflect-stream"),
    ],
)
def test_an_upstream_error_mid_stream_is_described_never_forwarded(
    server: CumuloServer, key: ApiKey, model: str, label: str
) -> None:
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        timeout=30,
        headers={"Authorization": f"Bearer {key.token}"},
        json={"model": model, "messages": USER, "stream": True},
    ) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line.startswith("data: {")]
    [error] = [json.loads(line[6:])["error"] for line in lines if '"error"' in line]
    assert error["type"] == "upstream_error"
    assert_logged(server, assert_safe(json.dumps(error), label))


def test_the_anthropic_door_describes_it_too(server: CumuloServer, key: ApiKey) -> None:
    with anthropic.Anthropic(base_url=server.url, api_key=key.token, max_retries=0) as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            client.messages.create(
                model="cl-503", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
        assert info.value.status_code == 502
        assert_logged(server, assert_safe(info.value.response.text, "anthropic:reflect:503"))
        with (
            client.messages.stream(
                model="br-stream", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            ) as stream,
            pytest.raises(anthropic.APIStatusError) as streamed,
        ):
            for _ in stream:
                pass
        assert_safe(str(streamed.value.body), "bedrock:reflect-stream")


def test_the_bedrock_door_describes_it_too(
    server: CumuloServer, key: ApiKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    key_id, secret = key.token.removeprefix("ck-").split(".", 1)
    br = boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"total_max_attempts": 1}),
    )
    try:
        with pytest.raises(ClientError) as info:
            br.converse(modelId="oa-500", messages=[{"role": "user", "content": [{"text": "x"}]}])
        assert info.value.response["Error"]["Code"] == "ModelErrorException"
        assert_logged(
            server,
            assert_safe(info.value.response["Error"]["Message"], "openai:reflect:500", "500"),
        )
        events = br.converse_stream(
            modelId="cl-stream", messages=[{"role": "user", "content": [{"text": "x y"}]}]
        )
        with pytest.raises(EventStreamError) as streamed:
            for _ in events["stream"]:
                pass
        events["stream"].close()
        assert_safe(str(streamed.value), "anthropic:reflect-stream:1")
    finally:
        br.close()
