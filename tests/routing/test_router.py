"""The router: retries, backoff, Retry-After, the deadline, fallbacks, breakers.

Deployments are real `openai` providers in front of the fake upstream on
loopback, or scripted upstream doubles (`support.routing.Scripted`) where the
test needs exact control over what the upstream does and when.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from typing import Any

import pytest

from cumulo.config import parse_config
from cumulo.errors import (
    CumuloError,
    InvalidRequest,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from cumulo.providers.base import Provider
from cumulo.routing.catalog import deployment_labels
from cumulo.routing.router import Lease, Router
from cumulo.types import ChatRequest, ChatResponse
from fakes import FakeOpenAIUpstream
from support import openai_deployment
from support.routing import chat_request, provider, run_with_router, scripted


def attempt_for(req: ChatRequest) -> Any:
    async def attempt(model: str, p: Provider) -> ChatResponse:
        return await p.chat(dataclasses.replace(req, model=model))

    return attempt


async def chat(
    router: Router, model: str = "m", text: str = "hello", prompt_tokens: int = 0
) -> Lease[ChatResponse]:
    lease = await router.run(model, "chat", attempt_for(chat_request(text, model)), prompt_tokens)
    lease.finish(True)
    return lease


async def failing(router: Router, model: str = "m", text: str = "hello") -> CumuloError:
    with pytest.raises(CumuloError) as info:
        await chat(router, model, text)
    return info.value


def model(name: str, *deployments: dict[str, Any], **fields: Any) -> dict[str, Any]:
    routing = {"backoff_s": 0.01, **fields.pop("routing", {})}
    return {"name": name, "deployments": list(deployments), "routing": routing, **fields}


def named(upstream: FakeOpenAIUpstream, behaviour: str, name: str) -> dict[str, Any]:
    return {**openai_deployment(upstream, behaviour), "api_key_env": None, "name": name}


# -- retries ------------------------------------------------------------------------


def test_retryable_failure_moves_on_to_the_next_deployment() -> None:
    async def main(router: Router) -> None:
        provider(router, "m", 0).script = [UpstreamError("connect refused")]
        lease = await chat(router)
        assert (lease.deployment.label, lease.attempts, lease.model) == ("b", 2, "m")
        a, b = router.routes["m"].deployments
        assert (a.failures, a.in_flight, b.requests, b.in_flight) == (1, 0, 1, 0)

    run_with_router([model("m", scripted("a", name="a"), scripted("b", name="b"))], main)


@pytest.mark.parametrize(
    "error",
    [
        UpstreamError("502"),
        UpstreamTimeout("slow"),
        RateLimited("429"),
        Unavailable("loading"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_each_retryable_failure_is_retried(error: CumuloError) -> None:
    async def main(router: Router) -> None:
        provider(router, "m").script = [error, "ok"]
        lease = await chat(router)
        assert lease.attempts == 2 and len(provider(router, "m").calls) == 2

    run_with_router([model("m", scripted("a"), routing={"retries": 1})], main)


def test_upstream_400_is_not_retried(upstream: FakeOpenAIUpstream, marker: str) -> None:
    async def main(router: Router) -> None:
        error = await failing(router, text=marker)
        assert isinstance(error, InvalidRequest) and error.attempts == 1
        assert len(upstream.received(marker)) == 1  # the second deployment was never asked
        assert router.routes["m"].deployments[0].breaker.state == "closed"

    run_with_router(
        [model("m", named(upstream, "status:400", "bad"), named(upstream, "echo", "good"))], main
    )


def test_upstream_500_fails_over_to_the_next_deployment(
    upstream: FakeOpenAIUpstream, marker: str
) -> None:
    async def main(router: Router) -> None:
        lease = await chat(router, text=marker)
        assert (lease.deployment.label, lease.attempts) == ("good", 2)
        assert lease.value.message.content == f"echo: {marker}"

    run_with_router(
        [model("m", named(upstream, "status:500", "bad"), named(upstream, "echo", "good"))], main
    )


def test_retry_after_is_honoured(upstream: FakeOpenAIUpstream, marker: str) -> None:
    async def main(router: Router) -> None:
        started = time.monotonic()
        lease = await chat(router, text=marker)
        assert time.monotonic() - started >= 0.3
        assert lease.attempts == 2 and len(upstream.received(marker)) == 2

    run_with_router([model("m", named(upstream, "ratelimit-once:0.3", "rl"))], main)


def test_retry_after_past_the_deadline_is_not_waited_for(
    upstream: FakeOpenAIUpstream, marker: str
) -> None:
    async def main(router: Router) -> None:
        started = time.monotonic()
        error = await failing(router, text=marker)
        assert time.monotonic() - started < 4.0  # far short of the 5 s asked: not waited for
        assert isinstance(error, RateLimited) and error.retry_after == 5
        assert error.attempts == 1

    run_with_router(
        [model("m", named(upstream, "ratelimit:5", "rl"), routing={"timeout_s": 1.0})], main
    )


class RecordedRandom(random.Random):
    """A seeded random source that keeps every `random()` it hands out."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.draws: list[float] = []

    def random(self) -> float:
        value = super().random()
        self.draws.append(value)
        return value


def test_backoff_grows_exponentially_with_jitter() -> None:
    async def main(router: Router) -> None:
        router.rng = jitter = RecordedRandom(7)  # "priority" draws nothing: only the backoffs do
        provider(router, "m").script = [UpstreamError("down")]
        error = await failing(router)
        assert isinstance(error, UpstreamError) and error.attempts == 4
        # One jitter draw per backoff: wait i is 0.5-1x of 0.05 * 2**i. The calls came no
        # sooner than those waits (a busy machine only makes the gaps longer).
        assert len(jitter.draws) == 3
        waits = [0.05 * 2**i * (0.5 + draw / 2) for i, draw in enumerate(jitter.draws)]
        gaps = [b - a for a, b in itertools.pairwise(provider(router, "m").calls)]
        assert len(gaps) == 3
        for gap, wait in zip(gaps, waits, strict=True):
            assert gap >= wait - 0.001  # asyncio may wake within its clock's resolution

    run_with_router(
        [
            model(
                "m",
                scripted("a"),
                routing={"retries": 3, "backoff_s": 0.05, "strategy": "priority"},
            )
        ],
        main,
    )


def test_the_deadline_bounds_all_attempts(upstream: FakeOpenAIUpstream, marker: str) -> None:
    async def main(router: Router) -> None:
        started = time.monotonic()
        error = await failing(router, text=marker)
        elapsed = time.monotonic() - started
        assert isinstance(error, UpstreamTimeout)
        assert 0.5 <= elapsed < 4.0  # the upstreams would take 5 s; 0.5 s is the deadline
        assert error.attempts >= 1

    run_with_router(
        [
            model(
                "m",
                named(upstream, "slow:5", "a"),
                named(upstream, "slow:5", "b"),
                routing={"timeout_s": 0.5, "retries": 5},
            )
        ],
        main,
    )


def test_an_attempt_ends_at_its_deployments_timeout_and_moves_on(
    upstream: FakeOpenAIUpstream, marker: str
) -> None:
    async def main(router: Router) -> None:
        started = time.monotonic()
        lease = await chat(router, text=marker)
        assert time.monotonic() - started < 4.0  # not the slow upstream's 5 s
        assert (lease.deployment.label, lease.attempts) == ("fast", 2)

    slow = {**named(upstream, "slow:5", "slow"), "timeout_s": 0.3}
    run_with_router(
        [
            model(
                "m",
                slow,
                named(upstream, "echo", "fast"),
                routing={"strategy": "priority", "timeout_s": 10},
            )
        ],
        main,
    )


def test_a_deployment_timeout_is_a_504_naming_timeout_s(
    upstream: FakeOpenAIUpstream, marker: str
) -> None:
    async def main(router: Router) -> None:
        error = await failing(router, text=marker)
        assert isinstance(error, UpstreamTimeout) and error.status == 504
        assert "timeout_s (0.3 s)" in error.message

    slow = {**named(upstream, "slow:5", "slow"), "timeout_s": 0.3}
    run_with_router([model("m", slow, routing={"retries": 0, "timeout_s": 10})], main)


# -- fallbacks ------------------------------------------------------------------------


def test_fallback_model_serves_when_the_model_fails() -> None:
    async def main(router: Router) -> None:
        provider(router, "m").script = [UpstreamError("down")]
        lease = await chat(router)
        assert (lease.model, lease.deployment.label, lease.attempts) == ("n", "scripted:b", 2)

    run_with_router(
        [
            model("m", scripted("a"), fallbacks=["n"], routing={"retries": 0}),
            model("n", scripted("b")),
        ],
        main,
    )


def test_a_caller_error_does_not_fall_back() -> None:
    async def main(router: Router) -> None:
        provider(router, "m").script = [InvalidRequest("bad tools")]
        error = await failing(router)
        assert isinstance(error, InvalidRequest) and error.attempts == 1
        assert provider(router, "n").calls == []

    run_with_router([model("m", scripted("a"), fallbacks=["n"]), model("n", scripted("b"))], main)


def test_a_prompt_too_long_for_the_window_goes_to_a_larger_model() -> None:
    async def main(router: Router) -> None:
        lease = await chat(router, "small", prompt_tokens=500)
        assert (lease.model, lease.attempts) == ("large", 1)
        assert provider(router, "small").calls == []
        error = await router.run("small", "chat", attempt_for(chat_request()), 5000)
        raise AssertionError(f"served {error}")

    with pytest.raises(InvalidRequest) as info:
        run_with_router(
            [
                model("small", scripted("s"), context_window=100, fallbacks=["large"]),
                model("large", scripted("l"), context_window=1000),
            ],
            main,
        )
    assert info.value.code == "context_length_exceeded" and info.value.status == 400


def test_upstream_context_length_exceeded_falls_back() -> None:
    async def main(router: Router) -> None:
        provider(router, "small").script = [
            InvalidRequest("too long", code="context_length_exceeded")
        ]
        lease = await chat(router, "small")
        assert (lease.model, lease.attempts) == ("large", 2)

    run_with_router(
        [model("small", scripted("s"), fallbacks=["large"]), model("large", scripted("l"))], main
    )


# -- circuit breaker and readiness --------------------------------------------------------


def test_breaker_opens_then_recovers_through_a_half_open_probe() -> None:
    async def main(router: Router) -> None:
        p = provider(router, "m")
        p.script = [UpstreamError("down"), UpstreamError("down"), "ok"]
        state = router.routes["m"].deployments[0]
        for _ in range(2):
            assert isinstance(await failing(router), UpstreamError)
        assert state.breaker.state == "open"
        error = await failing(router)  # refused without calling the upstream
        assert isinstance(error, Unavailable) and error.code == "circuit_open"
        assert len(p.calls) == 2
        await asyncio.sleep(0.25)
        lease = await chat(router)  # the half-open probe
        assert lease.admission == "probe" and state.breaker.state == "closed"
        assert (await chat(router)).admission == "call"

    breaker = {"consecutive_failures": 2, "cooldown_s": 0.2}
    run_with_router([model("m", scripted("a"), routing={"retries": 0, "breaker": breaker})], main)


def test_rate_limits_do_not_open_the_circuit() -> None:
    async def main(router: Router) -> None:
        provider(router, "m").script = [RateLimited("busy", retry_after=0.01)] * 3 + ["ok"]
        lease = await chat(router)
        state = router.routes["m"].deployments[0]
        assert lease.attempts == 4 and state.breaker.state == "closed" and state.failures == 3

    breaker = {"consecutive_failures": 1}
    run_with_router([model("m", scripted("a"), routing={"retries": 3, "breaker": breaker})], main)


def test_open_circuit_is_skipped_without_an_attempt() -> None:
    async def main(router: Router) -> None:
        provider(router, "m", 0).script = [UpstreamError("down")]
        await chat(router)  # a fails (its circuit opens), b serves
        lease = await chat(router)
        assert (lease.deployment.label, lease.attempts) == ("b", 1)
        assert len(provider(router, "m", 0).calls) == 1

    breaker = {"consecutive_failures": 1, "cooldown_s": 60}
    run_with_router(
        [
            model(
                "m", scripted("a", name="a"), scripted("b", name="b"), routing={"breaker": breaker}
            )
        ],
        main,
    )


def test_deployments_still_loading_are_skipped() -> None:
    async def main(router: Router) -> None:
        provider(router, "m", 0).is_ready = False
        assert (await chat(router)).deployment.label == "b"
        provider(router, "m", 1).is_ready = False
        error = await failing(router)
        assert isinstance(error, Unavailable) and error.code == "model_loading"
        assert error.attempts == 0

    run_with_router([model("m", scripted("a", name="a"), scripted("b", name="b"))], main)


def test_a_cancelled_attempt_is_no_verdict() -> None:
    async def main(router: Router) -> None:
        provider(router, "m").script = [5.0]
        task = asyncio.create_task(chat(router))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        state = router.routes["m"].deployments[0]
        assert (state.in_flight, state.failures, state.breaker.state) == (0, 0, "closed")

    run_with_router([model("m", scripted("a"))], main)


@pytest.mark.parametrize(("deployment", "label"), [
    ({"provider": "local", "path": "/srv/cumulo/models/demo"}, "local:m"),
    ({"provider": "local", "path": "pkg_model", "name": "mine"}, "mine"),
    ({"provider": "openai", "model": "gpt-4o-mini", "base_url": "http://x/v1"},
     "openai:gpt-4o-mini"),
    ({"provider": "openai", "model": "/data/models/llama", "base_url": "http://x/v1"},
     "openai:m"),
    ({"provider": "openai", "model": "meta-llama/Llama-3.1-8B", "base_url": "http://x/v1"},
     "openai:m"),
    ({"provider": "openai", "model": "https://user:secret@host/m", "base_url": "http://x/v1"},
     "openai:m"),
    ({"provider": "bedrock", "model": "anthropic.claude-3-5-haiku-20241022-v1:0",
      "region": "us-east-1"}, "bedrock:anthropic.claude-3-5-haiku-20241022-v1:0"),
])  # fmt: skip
def test_a_label_never_holds_a_path_or_a_url(deployment: dict[str, Any], label: str) -> None:
    config = parse_config({"models": [model("m", deployment)]}, "test")
    assert deployment_labels(config.models[0]) == [label]


def test_labels_are_unique_within_a_model() -> None:
    local = {"provider": "local", "path": "/a"}
    config = parse_config(
        {"models": [model("m", local, {**local, "path": "/b"}, {**local, "name": "x"})]}, "test"
    )
    assert deployment_labels(config.models[0]) == ["local:m#1", "local:m#2", "x"]


def test_same_upstream_model_twice_gets_distinct_labels(upstream: FakeOpenAIUpstream) -> None:
    async def main(router: Router) -> None:
        assert [d.label for d in router.routes["m"].deployments] == [
            "openai:echo#1",
            "openai:echo#2",
            "named",
        ]

    dep = {**openai_deployment(upstream, "echo"), "api_key_env": None}
    run_with_router([model("m", dep, dep, {**dep, "name": "named"})], main)
