"""The gateway over the router: stream failover, usage records and metrics per request."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from cumulo.config import UsageConfig
from cumulo.errors import NotFound, UpstreamError
from cumulo.governance.identity.auth import Principal
from cumulo.governance.telemetry.usage import UsageRecord, UsageRecorder
from cumulo.observability.metrics import Metrics
from cumulo.request.gateway import Gateway
from cumulo.request.metering import BlockedStream
from cumulo.routing.router import Router
from cumulo.types import StreamEnd, TextDelta
from fakes import FakeOpenAIUpstream
from support import openai_deployment
from support.routing import chat_request, drain, provider, run_with_router, scripted

WHO = Principal("key1", "test", "caller")


def gateway(router: Router) -> tuple[Gateway, list[UsageRecord], Metrics]:
    """A gateway whose usage records stay queued in memory (the recorder is never started)."""
    usage = UsageRecorder(None, UsageConfig())  # type: ignore[arg-type]
    metrics = Metrics()
    metrics.watch(router)
    return Gateway(router, usage, metrics), usage._pending, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def models(*ms: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"routing": {"backoff_s": 0.01}, **m} for m in ms]


def test_stream_fails_over_before_the_first_event() -> None:
    async def main(router: Router) -> None:
        gw, records, _ = gateway(router)
        provider(router, "m", 0).script = [UpstreamError("dropped before the first byte")]
        stream = await gw.stream(WHO, chat_request(), "chat.completions")
        assert stream.info.headers() == {
            "x-cumulo-deployment": "b",
            "x-cumulo-attempts": "2",
            "x-cumulo-model": "m",
        }
        events = await drain(stream.events())
        assert [type(e) for e in events] == [TextDelta, StreamEnd]
        [rec] = records
        assert (rec.status, rec.deployment, rec.attempts, rec.served_model) == (200, "b", 2, "m")

    run_with_router(
        models({"name": "m", "deployments": [scripted("a", name="a"), scripted("b", name="b")]}),
        main,
    )


def test_stream_waiting_past_the_ttft_timeout_fails_over() -> None:
    async def main(router: Router) -> None:
        gw, _, _ = gateway(router)
        provider(router, "m", 0).script = [2.0]
        stream = await gw.stream(WHO, chat_request(), "chat.completions")
        assert (stream.info.deployment, stream.info.attempts) == ("b", 2)
        await drain(stream.events())

    run_with_router(
        models(
            {
                "name": "m",
                "routing": {"ttft_timeout_s": 0.1},
                "deployments": [scripted("a", name="a"), scripted("b", name="b")],
            }
        ),
        main,
    )


def test_stream_failing_after_the_first_event_ends_with_the_error(
    upstream: FakeOpenAIUpstream,
) -> None:
    async def main(router: Router) -> None:
        gw, records, metrics = gateway(router)
        stream = await gw.stream(WHO, chat_request("one two three"), "chat.completions")
        seen: list[Any] = []
        with pytest.raises(UpstreamError):
            async for ev in stream.events():
                seen.append(ev)
        assert seen and stream.info.attempts == 1  # no failover once events flowed
        [rec] = records
        assert (rec.status, rec.error_type, rec.deployment) == (502, "upstream_error", "dies")
        state = router.routes["m"].deployments[0]
        assert (state.failures, state.in_flight) == (1, 0)
        assert (
            sample(
                metrics, "cumulo_request_errors_total", model="m", deployment="dies", status="502"
            )
            == 1
        )

    dep = {**openai_deployment(upstream, "disconnect:2"), "api_key_env": None, "name": "dies"}
    echo = {**openai_deployment(upstream, "echo"), "api_key_env": None, "name": "echo"}
    run_with_router(models({"name": "m", "deployments": [dep, echo]}), main)


def test_a_stream_never_iterated_is_settled_when_dropped() -> None:
    async def main(router: Router) -> None:
        gw, records, _ = gateway(router)
        stream = await gw.stream(WHO, chat_request(), "chat.completions")
        state = router.routes["m"].deployments[0]
        assert state.in_flight == 1
        del stream
        gc.collect()
        await asyncio.sleep(0)
        assert state.in_flight == 0 and state.failures == 0
        [rec] = records
        assert (rec.status, rec.error_type, rec.deployment) == (499, "client_closed", "scripted:a")

    run_with_router(models({"name": "m", "deployments": [scripted("a")]}), main)


def test_requests_are_recorded_and_counted_whatever_the_outcome() -> None:
    async def main(router: Router) -> None:
        gw, records, metrics = gateway(router)
        provider(router, "m", 0).script = [UpstreamError("down"), "ok"]
        _, info = await gw.chat(WHO, chat_request(), "chat.completions")
        assert (info.deployment, info.attempts, info.model) == ("scripted:b", 2, "n")
        with pytest.raises(NotFound):
            await gw.stream(WHO, chat_request(model="no-such-model"), "chat.completions")
        slow = asyncio.create_task(gw.chat(WHO, chat_request(model="slow"), "chat.completions"))
        await asyncio.sleep(0.05)
        slow.cancel()  # the client went away
        with pytest.raises(asyncio.CancelledError):
            await slow
        assert [(r.model, r.served_model, r.status, r.attempts) for r in records] == [
            ("m", "n", 200, 2),
            ("_unknown", None, 404, 0),
            ("slow", None, 499, 0),
        ]
        assert (
            sample(
                metrics, "cumulo_requests_total", model="m", deployment="scripted:b", status="200"
            )
            == 1
        )
        assert (
            sample(
                metrics, "cumulo_tokens_total", model="m", deployment="scripted:b", type="prompt"
            )
            == 3
        )
        assert (
            sample(metrics, "cumulo_requests_total", model="_unknown", deployment="", status="404")
            == 1
        )
        assert (
            sample(metrics, "cumulo_request_duration_seconds_count", model="slow", deployment="")
            == 1
        )
        assert sample(metrics, "cumulo_circuit_state", model="m", deployment="scripted:a") == 0
        assert (
            sample(metrics, "cumulo_deployment_failures_total", model="m", deployment="scripted:a")
            == 1
        )
        assert (
            sample(metrics, "cumulo_deployment_in_flight", model="slow", deployment="scripted:s")
            == 0
        )

    run_with_router(
        models(
            {
                "name": "m",
                "deployments": [scripted("a")],
                "fallbacks": ["n"],
                "routing": {"retries": 0},
            },
            {"name": "n", "deployments": [scripted("b")]},
            {"name": "slow", "deployments": [scripted("s")]},
        ),
        lambda router: _slow_script(router, main),
    )


async def _slow_script(router: Router, main: Any) -> None:
    provider(router, "slow").script = [5.0]
    await main(router)


def test_a_deferred_request_is_accounted_when_its_deferred_work_runs() -> None:
    """A front door that sends first (`defer`) gets the response and its headers at once;
    the usage record, the deployment's health and the metrics follow when it runs the
    deferred work, exactly once."""

    async def main(router: Router) -> None:
        gw, records, metrics = gateway(router)
        deferred: list[Any] = []
        resp, info = await gw.chat(WHO, chat_request(), "chat.completions", defer=deferred.append)
        assert resp.message.content and info.headers()["x-cumulo-deployment"] == "scripted:a"
        assert records == [] and len(deferred) == 1
        assert router.routes["m"].deployments[0].in_flight == 1  # held until it is settled
        deferred.pop()()
        [rec] = records
        assert (rec.model, rec.status, rec.deployment) == ("m", 200, "scripted:a")
        assert rec.latency_ms > 0
        assert router.routes["m"].deployments[0].in_flight == 0
        assert (
            sample(
                metrics, "cumulo_requests_total", model="m", deployment="scripted:a", status="200"
            )
            == 1
        )

    run_with_router(models({"name": "m", "deployments": [scripted("a")]}), main)


def test_a_models_default_max_tokens_applies_when_the_request_gives_none() -> None:
    async def main(router: Router) -> None:
        gw, _, _ = gateway(router)
        await gw.chat(WHO, chat_request(), "chat.completions")
        asked = chat_request()
        asked.params.max_tokens = 5
        await gw.chat(WHO, asked, "chat.completions")
        await drain((await gw.stream(WHO, chat_request(), "chat.completions")).events())
        sent = [r.params.max_tokens for r in provider(router, "m").requests]
        assert sent == [12, 5, 12]
        # A fallback serves with its own default; a model without one sends none.
        provider(router, "m").script = [UpstreamError("down")]
        await gw.chat(WHO, chat_request(), "chat.completions")
        assert [r.params.max_tokens for r in provider(router, "fb").requests] == [30]
        await gw.chat(WHO, chat_request(model="plain"), "chat.completions")
        assert [r.params.max_tokens for r in provider(router, "plain").requests] == [None]

    run_with_router(
        models(
            {
                "name": "m",
                "default_max_tokens": 12,
                "fallbacks": ["fb"],
                "routing": {"retries": 0},
                "deployments": [scripted("a")],
            },
            {"name": "fb", "default_max_tokens": 30, "deployments": [scripted("b")]},
            {"name": "plain", "deployments": [scripted("c")]},
        ),
        main,
    )


def test_a_stream_is_recorded_before_its_last_event_is_handed_on() -> None:
    """The usage record (and its journal line) precede the stream's end: a front door
    sending the last event sends it after the record exists, so a crash cannot lose the
    record of a stream the client saw end."""

    async def main(router: Router) -> None:
        gw, records, _ = gateway(router)
        stream = await gw.stream(WHO, chat_request(), "chat.completions")
        assert not isinstance(stream, BlockedStream)
        events = stream.events()
        assert isinstance(await anext(events), TextDelta)
        assert records == []
        assert isinstance(await anext(events), StreamEnd)
        [rec] = records  # before the front door could send it
        assert (rec.status, rec.stream) == (200, True)
        with pytest.raises(StopAsyncIteration):
            await anext(events)
        assert len(records) == 1

    run_with_router(models({"name": "m", "deployments": [scripted("a")]}), main)
