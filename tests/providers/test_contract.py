"""The provider contract (`cumulo.providers.base`), run by every provider that calls an upstream.

Each provider runs against a fake of its upstream on loopback HTTP and must: answer and
stream (text as it comes, then exactly one `StreamEnd`); turn every upstream failure into
the cumulo error the contract names, in `chat` and in `stream` alike (`InvalidRequest` for
a rejected request, `RateLimited` with `retry_after` for a 429, `UpstreamTimeout` when a
deadline passes, `UpstreamError` for the rest); never let its key into an error message.
A provider kind registered without a `Harness` here fails the suite, so a new provider
joins it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from cumulo.config import DeploymentConfig
from cumulo.errors import CumuloError, InvalidRequest, RateLimited, UpstreamError, UpstreamTimeout
from cumulo.providers.base import Provider, ProviderContext
from cumulo.providers.registry import ProviderRegistry
from cumulo.types import ChatRequest, Message, StreamEnd, StreamEvent, TextDelta
from fakes import FakeOpenAIUpstream
from fakes.anthropic_upstream import FakeAnthropicUpstream
from fakes.bedrock_upstream import ACCESS_KEY_ID, REGION, SECRET_KEY, FakeBedrockUpstream

T = TypeVar("T")
OPENAI_KEY = "sk-provider-test-key-123456"
ANTHROPIC_KEY = "sk-ant-provider-test-key-123456"


@dataclass(frozen=True)
class Harness:
    """How to run one provider kind against its fake upstream.

    `failures`: (the fake's model name for a behaviour, the error the contract expects).
    `deployment(url, model)`: the deployment's fields; `env`: its credentials; `secret`:
    the one value that must never reach an error message.
    """

    kind: str
    fake: Callable[[], AbstractContextManager[FakeOpenAIUpstream]]
    deployment: Callable[[str, str], dict[str, Any]]
    env: dict[str, str]
    secret: str
    failures: list[tuple[str, type[CumuloError]]]
    retry_after: str  # a model answering 429 with `retry-after: 7`, or "" if it sends none
    slow: str  # a model that sends nothing for 2 s or more
    echo: str = "echo"


HARNESSES = [
    Harness(
        "openai",
        FakeOpenAIUpstream,
        lambda url, model: {
            "provider": "openai",
            "model": model,
            "base_url": url + "/v1",
            "api_key_env": "CONTRACT_KEY",
        },
        {"CONTRACT_KEY": OPENAI_KEY},
        OPENAI_KEY,
        [
            ("status:500", UpstreamError),
            ("status:503", UpstreamError),
            ("status:400", InvalidRequest),
            ("status:504", UpstreamTimeout),
            ("status:401", UpstreamError),
            ("ratelimit:7", RateLimited),
            ("malformed", UpstreamError),
        ],
        retry_after="ratelimit:7",
        slow="slow:3",
    ),
    Harness(
        "anthropic",
        FakeAnthropicUpstream,
        lambda url, model: {
            "provider": "anthropic",
            "model": model,
            "base_url": url,
            "api_key_env": "CONTRACT_KEY",
        },
        {"CONTRACT_KEY": ANTHROPIC_KEY},
        ANTHROPIC_KEY,
        [
            ("status:500", UpstreamError),
            ("status:529", UpstreamError),
            ("status:400", InvalidRequest),
            ("status:413", InvalidRequest),
            ("status:504", UpstreamTimeout),
            ("status:401", UpstreamError),
            ("status:403", UpstreamError),
            ("ratelimit:7", RateLimited),
            ("malformed", UpstreamError),
        ],
        retry_after="ratelimit:7",
        slow="slow:3",
    ),
    Harness(
        "bedrock",
        FakeBedrockUpstream,
        lambda url, model: {
            "provider": "bedrock",
            "model": model,
            "base_url": url,
            "region": REGION,
            "aws_access_key_id_env": "CONTRACT_KEY_ID",
            "aws_secret_access_key_env": "CONTRACT_KEY",
        },
        {"CONTRACT_KEY_ID": ACCESS_KEY_ID, "CONTRACT_KEY": SECRET_KEY},
        SECRET_KEY,
        [
            ("status:400", InvalidRequest),
            ("status:429", RateLimited),
            ("status:408", UpstreamTimeout),
            ("status:424", UpstreamError),
            ("status:500", UpstreamError),
            ("status:503", UpstreamError),
            ("status:403", UpstreamError),
            ("status:404", UpstreamError),
        ],
        retry_after="",
        slow="slow:2",
    ),
]
BY_KIND = {h.kind: h for h in HARNESSES}
FAILURES = [(h, model, error) for h in HARNESSES for model, error in h.failures]


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeOpenAIUpstream]]:
    """One running fake upstream per provider kind."""
    started: dict[str, FakeOpenAIUpstream] = {}
    managers = []
    try:
        for h in HARNESSES:
            manager = h.fake()
            started[h.kind] = manager.__enter__()
            managers.append(manager)
        yield started
    finally:
        for manager in reversed(managers):
            manager.__exit__(None, None, None)


def call(
    h: Harness, fakes: dict[str, FakeOpenAIUpstream], model: str,
    fn: Callable[[Provider], Awaitable[T]], monkeypatch: pytest.MonkeyPatch, **extra: Any,
) -> T:  # fmt: skip
    """Start `h`'s provider, found through the registry, for `model` and run `fn(provider)`."""
    for name, value in h.env.items():
        monkeypatch.setenv(name, value)
    fields = {**h.deployment(fakes[h.kind].url, model), **extra}

    async def main() -> T:
        async with aiohttp.ClientSession() as http:
            cls = ProviderRegistry().get(h.kind)
            provider = cls.create(
                DeploymentConfig(**fields), "chat", ProviderContext(http, Path("."))
            )
            await provider.start()
            try:
                return await fn(provider)
            finally:
                await provider.close()

    return asyncio.run(main())


def user(text: str) -> ChatRequest:
    return ChatRequest(model="public-name", messages=[Message("user", text)])


async def collect(provider: Provider, req: ChatRequest) -> list[StreamEvent]:
    return [ev async for ev in provider.stream(req)]


def test_every_provider_kind_that_calls_an_upstream_runs_the_contract() -> None:
    registry = ProviderRegistry()
    # local runs in-process; vllm starts its own servers and calls them with the openai
    # provider's code (tests/providers/test_vllm.py runs it against a fake vLLM).
    upstream_kinds = {n for n in registry.names() if n not in ("local", "vllm")}
    assert upstream_kinds == set(BY_KIND)


@pytest.mark.parametrize("h", HARNESSES, ids=lambda h: h.kind)
def test_chat_answers_and_the_stream_ends_with_exactly_one_end(
    h: Harness, fakes: dict[str, FakeOpenAIUpstream], marker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    resp = call(h, fakes, h.echo, lambda p: p.chat(user(f"a b {marker}")), monkeypatch)
    assert resp.message.content == f"echo: a b {marker}"
    events = call(h, fakes, h.echo, lambda p: collect(p, user(f"a b {marker}")), monkeypatch)
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert len(texts) > 1 and "".join(texts) == f"echo: a b {marker}"  # as it comes
    assert [type(e) for e in events].count(StreamEnd) == 1 and isinstance(events[-1], StreamEnd)


@pytest.mark.parametrize(
    ("h", "model", "error"), FAILURES, ids=[f"{h.kind}-{m}" for h, m, _ in FAILURES]
)
@pytest.mark.parametrize("stream", [False, True], ids=["chat", "stream"])
def test_upstream_failures_become_cumulo_errors(
    h: Harness, model: str, error: type[CumuloError], stream: bool,
    fakes: dict[str, FakeOpenAIUpstream], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    req = user("hello")

    async def run(p: Provider) -> object:
        return await (collect(p, req) if stream else p.chat(req))

    with pytest.raises(error) as info:
        call(h, fakes, model, run, monkeypatch)
    assert type(info.value) is error
    assert info.value.status == error.status
    assert h.secret not in info.value.message
    if model == h.retry_after:
        assert info.value.retry_after == 7.0


@pytest.mark.parametrize("h", HARNESSES, ids=lambda h: h.kind)
def test_a_stream_past_its_deadline_is_an_upstream_timeout(
    h: Harness, fakes: dict[str, FakeOpenAIUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stream's deadline is the provider's to keep (`timeout_s`); a single call's is the
    # router's, which ends it.
    with pytest.raises(UpstreamTimeout) as info:
        call(h, fakes, h.slow, lambda p: collect(p, user("hi")), monkeypatch, timeout_s=0.3)
    assert info.value.status == 504


@pytest.mark.parametrize("h", HARNESSES, ids=lambda h: h.kind)
def test_an_unreachable_upstream_is_a_502(
    h: Harness, fakes: dict[str, FakeOpenAIUpstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    base = "http://127.0.0.1:9/v1" if h.kind == "openai" else "http://127.0.0.1:9"
    with pytest.raises(UpstreamError) as info:
        call(h, fakes, h.echo, lambda p: p.chat(user("hi")), monkeypatch, base_url=base)
    assert type(info.value) is UpstreamError and info.value.status == 502
    assert info.value.message.startswith("Cannot reach upstream")
