"""The prefix cache: reuse of prompt KV across requests, eviction, reference counts.

The demo model runs in float32, where a row's greedy tokens do not depend on how its
prompt's KV was computed (chunked, batched or copied from the cache).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cumulo.engine.kvcache import KVLayout, SlotCache
from cumulo.engine.loader import CausalLM, load_causal_lm
from cumulo.engine.params import Finished, GenerationParams, TokenLogprobs
from cumulo.engine.prefix import PrefixCache
from cumulo.engine.sampling import SamplingConfig
from cumulo.engine.scheduler import EngineLimits, Posted, Scheduler, Sequence

GREEDY = SamplingConfig(temperature=0.0)


@pytest.fixture(scope="module")
def lm(demo_dir: Path) -> CausalLM:
    return load_causal_lm(demo_dir, "float32")


def limits(cache_tokens: int, **kw: int) -> EngineLimits:
    base = {"max_running": 4, "max_tokens_in_flight": 4 * 512, "prefill_chunk": 64}
    base.update(kw)
    return EngineLimits(prefix_cache_tokens=cache_tokens, **base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cached(lm: CausalLM) -> Iterator[Scheduler]:
    engine = Scheduler(lm, limits(4096))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def uncached(lm: CausalLM) -> Iterator[Scheduler]:
    engine = Scheduler(lm, limits(0))
    yield engine
    engine.close()


class Collector:
    def __init__(self) -> None:
        self.events: list[Posted] = []
        self.done = threading.Event()

    def __call__(self, item: Posted) -> bool:
        self.events.append(item)
        if isinstance(item, Finished | BaseException):
            self.done.set()
        return True

    @property
    def end(self) -> Finished:
        assert self.done.wait(60), "the request did not finish"
        last = self.events[-1]
        assert isinstance(last, Finished), last
        return last


def run(
    engine: Scheduler, prompt: list[int], max_new: int = 12, **kw: object
) -> tuple[Sequence, Collector]:
    sink = Collector()
    salt = kw.pop("cache_salt", None)
    params = GenerationParams(max_new_tokens=max_new, sampling=GREEDY, **kw)  # type: ignore[arg-type]
    seq = Sequence(prompt, params, sink, cache_salt=salt)  # type: ignore[arg-type]
    engine.submit(seq)
    return seq, sink


def text_ids(lm: CausalLM, text: str) -> list[int]:
    ids: list[int] = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


@pytest.fixture(scope="module")
def prefix(lm: CausalLM) -> list[int]:
    words = "the system prompt says clouds rain over the sea and wind in tall trees "
    return text_ids(lm, words * 12)[:200]


def test_a_cached_prefix_gives_the_same_greedy_tokens(
    lm: CausalLM, cached: Scheduler, uncached: Scheduler, prefix: list[int]
) -> None:
    first = prefix + text_ids(lm, " first question about rain")
    second = prefix + text_ids(lm, " another question about wind, rain, clouds and the sea")
    a, sink_a = run(cached, first)
    assert sink_a.end.cached_tokens == 0  # nothing cached yet
    b, sink_b = run(cached, second)
    hit = sink_b.end.cached_tokens
    assert hit == len(prefix) // 16 * 16  # every full block the prompts share
    assert sink_b.end.prompt_tokens == len(second)
    ref_a, sink_ref_a = run(uncached, first)
    ref_b, sink_ref = run(uncached, second)
    assert sink_ref.end.cached_tokens == sink_ref_a.end.cached_tokens == 0
    assert (a.tokens, b.tokens) == (ref_a.tokens, ref_b.tokens)
    # The same prompt again reuses all but its last partial block (at least one token is
    # always prefilled, for the logits of the first reply token).
    assert len(second) - 1 >= hit + 16
    c, sink_c = run(cached, second)
    assert sink_c.end.cached_tokens == (len(second) - 1) // 16 * 16 > hit
    assert c.tokens == ref_b.tokens
    stats = cached.stats()
    assert stats.prefix_cached_tokens >= hit + sink_c.end.cached_tokens
    assert stats.prefix_cache_tokens == 4096 and stats.prefix_cache_bytes > 0
    assert 0 < stats.prefix_cache_used_tokens <= 4096


def test_prompt_logprobs_requests_read_their_whole_prompt(
    lm: CausalLM, cached: Scheduler, uncached: Scheduler, prefix: list[int]
) -> None:
    prompt = prefix + text_ids(lm, " a question with its log probabilities")
    run(cached, prompt)[1].end  # noqa: B018 - warms the cache
    sink = run(cached, prompt, 0, prompt_logprobs=2)[1]
    assert sink.end.cached_tokens == 0
    ref_sink = run(uncached, prompt, 0, prompt_logprobs=2)[1]
    ref_sink.end  # noqa: B018 - waits for it
    got = [e for e in sink.events if isinstance(e, TokenLogprobs)]
    want = [e for e in ref_sink.events if isinstance(e, TokenLogprobs)]
    assert len(got[0].tokens) == len(prompt) - 1
    assert got[0].tokens == want[0].tokens
    assert got[0].logprobs == pytest.approx(want[0].logprobs, abs=1e-4)


def test_a_salt_keeps_kv_apart(lm: CausalLM, cached: Scheduler, prefix: list[int]) -> None:
    prompt = prefix + text_ids(lm, " the same words under an adapter")
    assert run(cached, prompt)[1].end.cached_tokens > 0  # the base model's blocks
    assert run(cached, prompt, cache_salt="adapter-a")[1].end.cached_tokens == 0
    assert run(cached, prompt, cache_salt="adapter-a")[1].end.cached_tokens > 0
    assert run(cached, prompt, cache_salt="adapter-b")[1].end.cached_tokens == 0


def test_requests_sharing_a_prefix_prefill_it_once(
    lm: CausalLM, uncached: Scheduler, prefix: list[int]
) -> None:
    # A fresh engine, four requests at once with the same 200-token prefix: the first
    # computes it (in chunks of 64), the others wait for its blocks and copy them.
    engine = Scheduler(lm, limits(4096))
    try:
        prompts = [prefix + text_ids(lm, f" question number {i} about rain") for i in range(4)]
        runs = [run(engine, p) for p in prompts]
        ends = [sink.end for _, sink in runs]
        shared = len(prefix) // 16 * 16
        assert sorted(e.cached_tokens for e in ends) == [0, shared, shared, shared]
        for (seq, _), p in zip(runs, prompts, strict=True):
            ref, ref_sink = run(uncached, p)
            ref_sink.end  # noqa: B018 - waits for it
            assert seq.tokens == ref.tokens
    finally:
        engine.close()


def test_a_cancelled_leader_does_not_hold_up_its_followers(lm: CausalLM, prefix: list[int]) -> None:
    engine = Scheduler(lm, limits(4096, prefill_chunk=16))
    try:
        leader, _ = run(engine, prefix + text_ids(lm, " the leader"))
        sink = run(engine, prefix + text_ids(lm, " the follower"))[1]
        engine.cancel(leader)
        assert sink.end.completion_tokens > 0  # it computed the prefix itself, or part of it
        assert engine.prefix.pending == {}
    finally:
        engine.close()


def test_a_full_cache_still_serves_requests_sharing_a_prefix(
    lm: CausalLM, prefix: list[int]
) -> None:
    # Two blocks of budget, both held by a long-running request: the next request cannot
    # store its blocks, and those sharing its prefix compute it themselves.
    engine = Scheduler(lm, limits(32, prefill_chunk=16))
    try:
        holder, _ = run(engine, list(reversed(prefix)), 250)
        others = [run(engine, prefix + text_ids(lm, f" request {i}")) for i in range(3)]
        for _, sink in others:
            assert sink.end.completion_tokens > 0
            assert sink.end.cached_tokens == 0  # no room to cache their shared prefix
        assert not holder.done and holder.blocks is not None and len(holder.blocks.held) == 2
        engine.cancel(holder)
    finally:
        engine.close()


def test_eviction_under_a_tiny_budget(lm: CausalLM, prefix: list[int]) -> None:
    engine = Scheduler(lm, limits(64))  # 4 blocks of 16 tokens
    try:
        a = prefix[:100]
        b = list(reversed(prefix[:100]))
        run(engine, a)[1].end  # noqa: B018 - caches a's first 4 blocks (the budget)
        assert engine.stats().prefix_cache_used_tokens == 64
        assert run(engine, a)[1].end.cached_tokens == 64
        run(engine, b)[1].end  # noqa: B018 - b's blocks evict a's, least recently used first
        assert engine.stats().prefix_cache_used_tokens == 64
        assert run(engine, b)[1].end.cached_tokens == 64
        assert run(engine, a)[1].end.cached_tokens == 0
    finally:
        engine.close()


def test_a_held_block_is_never_evicted() -> None:
    layout = KVLayout(layers=2, kv_heads=2, head_dim=4, slots=2, slot_len=64, dtype=torch.float32)
    slots = SlotCache(layout, torch.device("cpu"))
    for k, v in zip(slots.keys, slots.values, strict=True):
        k.normal_()
        v.normal_()
    cache = PrefixCache(layout, torch.device("cpu"), capacity_tokens=32, block_tokens=16)
    one, two = list(range(40)), list(range(100, 140))
    first = cache.open(one, None, reuse=True)
    cache.store(first, "first", slots, 0, len(one))  # 2 blocks: the whole budget, held
    assert cache.refs(one) == [1, 1]
    second = cache.open(two, None, reuse=True)
    cache.store(second, "second", slots, 1, len(two))  # no room: held blocks stay
    assert cache.refs(one) == [1, 1] and cache.refs(two) == [] and second.held == []
    # Another reader of the same prefix holds the blocks too: copied into its slot.
    reader = cache.open(one, None, reuse=True)
    assert cache.load(reader, slots, 1, 0) == 32
    assert cache.refs(one) == [2, 2]
    for k in slots.keys:
        assert torch.equal(k[1, :, :32], k[0, :, :32])
    cache.release(first, "first")
    assert cache.refs(one) == [1, 1]
    third = cache.open(two, None, reuse=True)
    cache.store(third, "third", slots, 1, len(two))
    assert cache.refs(two) == []  # still held by the reader
    cache.release(reader, "reader")
    assert cache.refs(one) == [0, 0]
    fourth = cache.open(two, None, reuse=True)
    cache.store(fourth, "fourth", slots, 1, len(two))  # now they may go
    assert cache.refs(two) == [1, 1] and cache.refs(one) == []
    assert cache.stats().used_tokens == 32
