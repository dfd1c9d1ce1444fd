"""`cumulo serve` over HTTPS with a certificate from `cumulo tls self-signed`: boto3 with a
Bedrock bearer token (`AWS_BEARER_TOKEN_BEDROCK`, which botocore sends over HTTPS only) and
the openai SDK, unchanged, trusting that certificate."""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import openai
import pytest
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError, InvalidEndpointConfigurationError

from fakes import FakeOpenAIUpstream
from support import CUMULO_BIN, ApiKey, CumuloServer, clean_env, free_port, openai_deployment


def self_signed(home: Path) -> tuple[Path, Path]:
    """`cumulo tls self-signed` into `home/tls`, as a user would run it."""
    run = subprocess.run(
        [str(CUMULO_BIN), "tls", "self-signed"],
        env=clean_env(CUMULO_HOME=str(home)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    cert, key = home / "tls" / "cert.pem", home / "tls" / "key.pem"
    assert f"--tls-certfile {cert} --tls-keyfile {key}" in run.stdout
    return cert, key


def config(upstream: FakeOpenAIUpstream, **server: Any) -> dict[str, Any]:
    return {
        "usage": {"flush_interval_s": 0.1},
        "server": server,
        "models": [{"name": "oa-echo", "deployments": [openai_deployment(upstream, "echo")]}],
    }


@pytest.fixture(scope="module")
def server(
    upstream: FakeOpenAIUpstream,
    tmp_path_factory: pytest.TempPathFactory,
    cumulo_factory: Callable[..., CumuloServer],
) -> CumuloServer:
    """HTTPS from the config: `server.tls` with paths relative to CUMULO_HOME."""
    workdir = tmp_path_factory.mktemp("tls")
    cert, _ = self_signed(workdir / "home")
    return cumulo_factory(
        config(upstream, tls={"certfile": "tls/cert.pem", "keyfile": "tls/key.pem"}),
        workdir=workdir,
        cafile=cert,
    )


@pytest.fixture(scope="module")
def key(server: CumuloServer) -> ApiKey:
    return server.create_key("tls")


@pytest.fixture(autouse=True)
def no_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def bearer_client(monkeypatch: pytest.MonkeyPatch, url: str, token: str, **kwargs: Any) -> Any:
    """boto3 as a Bedrock API key user has it: the token in AWS_BEARER_TOKEN_BEDROCK, no
    AWS credentials at all."""
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", token)
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}, read_timeout=30),
        **kwargs,
    )


def cafile(server: CumuloServer) -> str:
    return str(server.home / "tls" / "cert.pem")


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def test_boto3_bearer_token_over_https(
    server: CumuloServer, key: ApiKey, marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    br = bearer_client(monkeypatch, server.url, key.token, verify=cafile(server))
    reply = br.converse(modelId="oa-echo", messages=[user(marker)])
    assert reply["output"]["message"]["content"] == [{"text": f"echo: {marker}"}]
    streamed = br.converse_stream(modelId="oa-echo", messages=[user(marker)])["stream"]
    text = "".join(
        e["contentBlockDelta"]["delta"]["text"] for e in streamed if "contentBlockDelta" in e
    )
    assert text == f"echo: {marker}"
    # The token is checked like any key: a wrong one is refused in Bedrock's terms.
    wrong = bearer_client(monkeypatch, server.url, key.token + "x", verify=cafile(server))
    with pytest.raises(ClientError) as refused:
        wrong.converse(modelId="oa-echo", messages=[user(marker)])
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"
    br.close()
    wrong.close()


def test_the_certificate_is_checked(
    server: CumuloServer, key: ApiKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without being told to trust it, boto3 refuses the self-signed certificate...
    br = bearer_client(monkeypatch, server.url, key.token)
    with pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        br.converse(modelId="oa-echo", messages=[user("x")])
    # ... and AWS_CA_BUNDLE trusts it, as LangChain's ChatBedrockConverse would use it.
    monkeypatch.setenv("AWS_CA_BUNDLE", cafile(server))
    trusted = bearer_client(monkeypatch, server.url.replace("127.0.0.1", "localhost"), key.token)
    assert trusted.converse(modelId="oa-echo", messages=[user("y")])["output"]["message"]
    br.close()
    trusted.close()


def test_plain_http_cannot_carry_a_bearer_token(
    server: CumuloServer, key: ApiKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Why cumulo serves TLS: botocore will not send the token to an http:// endpoint.
    br = bearer_client(monkeypatch, server.url.replace("https://", "http://"), key.token)
    with pytest.raises(
        InvalidEndpointConfigurationError, match="Bearer authorization requires an HTTPS"
    ):
        br.converse(modelId="oa-echo", messages=[user("x")])
    br.close()
    # And the HTTPS port does not answer in clear text.
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url.replace("https://", "http://") + "/health/live", timeout=5)


def test_openai_sdk_over_https(server: CumuloServer, key: ApiKey, marker: str) -> None:
    http = openai.DefaultHttpxClient(verify=ssl.create_default_context(cafile=cafile(server)))
    with openai.OpenAI(
        base_url=server.url + "/v1", api_key=key.token, http_client=http, max_retries=0
    ) as client:
        reply = client.chat.completions.create(
            model="oa-echo", messages=[{"role": "user", "content": marker}]
        )
        assert reply.choices[0].message.content == f"echo: {marker}"
        chunks = client.chat.completions.create(
            model="oa-echo", messages=[{"role": "user", "content": marker}], stream=True
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            == f"echo: {marker}"
        )


def test_the_flags_serve_https(
    upstream: FakeOpenAIUpstream,
    tmp_path: Path,
    cumulo_factory: Callable[..., CumuloServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert, keyfile = self_signed(tmp_path / "elsewhere")
    server = cumulo_factory(
        config(upstream),
        workdir=tmp_path,
        args=("--tls-certfile", str(cert), "--tls-keyfile", str(keyfile)),
        cafile=cert,
    )
    token = server.create_key("flags").token
    br = bearer_client(monkeypatch, server.url, token, verify=str(cert))
    assert br.converse(modelId="oa-echo", messages=[user("hi")])["output"]["message"][
        "content"
    ] == [{"text": "echo: hi"}]
    br.close()
    server.stop()


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    yield self_signed(tmp_path / "home")


def serve(
    tmp_path: Path, *args: str, cfg: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """`cumulo serve` expected to stop at once (before binding, before loading anything)."""
    cfg_path = tmp_path / "cumulo.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg or {"models": []}))
    return subprocess.run(
        [str(CUMULO_BIN), "serve", "--config", str(cfg_path), "--port", str(free_port()), *args],
        env=clean_env(CUMULO_HOME=str(tmp_path / "home")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_tls_files_stop_serve_naming_them(tmp_path: Path, pair: tuple[Path, Path]) -> None:
    cert, key = pair
    missing = tmp_path / "nope.pem"
    run = serve(tmp_path, "--tls-certfile", str(cert), "--tls-keyfile", str(missing))
    assert run.returncode == 2 and "--tls-keyfile" in run.stderr and str(missing) in run.stderr
    run = serve(tmp_path, "--tls-certfile", str(cert))
    assert run.returncode == 2 and "give both --tls-certfile and --tls-keyfile" in run.stderr
    run = serve(tmp_path, "--tls-certfile", str(key), "--tls-keyfile", str(cert))
    assert run.returncode == 2 and "not a PEM certificate and its private key" in run.stderr
    run = serve(
        tmp_path,
        cfg={
            "models": [],
            "server": {"tls": {"certfile": "tls/cert.pem", "keyfile": "tls/missing.pem"}},
        },
    )
    assert run.returncode == 1
    assert (
        f"cumulo.yaml: server.tls.keyfile: cannot read {tmp_path / 'home' / 'tls' / 'missing.pem'}"
        in run.stderr
    )
    assert "Started server process" not in run.stderr
