"""cumulo's own decode forward (engine/fastpath.py) and the deterministic mode.

The fast forward must give the tokens the Hugging Face forward gives (float32, where
rounding does not flip greedy choices), call the adapters hook on every projection, and
with `deterministic` a request's greedy tokens in bfloat16 are the same alone and batched.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cumulo.engine.fastpath import FastDecoder
from cumulo.engine.loader import CausalLM, load_causal_lm
from cumulo.engine.params import Finished, GenerationParams
from cumulo.engine.sampling import SamplingConfig
from cumulo.engine.scheduler import EngineLimits, Posted, Scheduler, Sequence

GREEDY = SamplingConfig(temperature=0.0)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def lm32(demo_dir: Path) -> CausalLM:
    return load_causal_lm(demo_dir, "float32")


@pytest.fixture(scope="module")
def lm16(demo_dir: Path) -> CausalLM:
    return load_causal_lm(demo_dir, "bfloat16")


def prompts(lm: CausalLM, n: int) -> list[list[int]]:
    words = ["storm", "light", "over", "a", "harbour", "where", "boats", "sleep", "at", "night"]
    texts = [" ".join(words[: 3 + (i * 3) % len(words)]) * (1 + i % 4) for i in range(n)]
    return [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


class Done:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.error: BaseException | None = None

    def __call__(self, item: Posted) -> bool:
        if isinstance(item, BaseException):
            self.error = item
        if isinstance(item, Finished | BaseException):
            self.event.set()
        return True


def run(engine: Scheduler, batch: list[tuple[list[int], int]]) -> list[list[int]]:
    """Submit every (prompt, new tokens) at once; the tokens each one got."""
    seqs, sinks = [], []
    for prompt, n in batch:
        sink = Done()
        seq = Sequence(prompt, GenerationParams(max_new_tokens=n, sampling=GREEDY), sink)
        engine.submit(seq)
        seqs.append(seq)
        sinks.append(sink)
    for sink in sinks:
        assert sink.event.wait(120), "a request did not finish"
        assert sink.error is None, sink.error
    return [seq.tokens for seq in seqs]


@pytest.fixture
def engines(lm32: CausalLM) -> Iterator[tuple[Scheduler, Scheduler]]:
    limits = EngineLimits(max_running=4, max_tokens_in_flight=4 * 256, prefill_chunk=32)
    fast, hf = Scheduler(lm32, limits), Scheduler(lm32, limits)
    hf._fast = None  # the Hugging Face forward, as for a model the fast path does not support
    yield fast, hf
    fast.close()
    hf.close()


def test_fast_decode_gives_the_hugging_face_forward_tokens(
    lm32: CausalLM, engines: tuple[Scheduler, Scheduler]
) -> None:
    fast, hf = engines
    assert fast._fast is not None and FastDecoder.supports(lm32.model)
    batch = [(p, 20) for p in prompts(lm32, 6)]  # 6 requests, 4 slots: batched and queued
    assert run(fast, batch) == run(hf, batch)


def test_every_projection_goes_through_the_adapters_hook(lm32: CausalLM) -> None:
    engine = Scheduler(lm32, EngineLimits(max_running=2, max_tokens_in_flight=512))
    engine.close()  # only its cache and fast forward are used here
    fast = engine._fast
    assert fast is not None
    layers = lm32.model.config.num_hidden_layers

    class Recorder:
        def __init__(self, bump: str | None = None) -> None:
            self.names: list[str] = []
            self.bump = bump

        def apply(self, name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            self.names.append(name)
            assert x.shape[0] == y.shape[0] == 2
            return y + 0.5 if name == self.bump else y

    def step(lora: Recorder | None) -> torch.Tensor:
        ids, pos = torch.tensor([5, 9]), torch.tensor([0, 0])
        with torch.inference_mode():
            return fast.forward(0, ids, pos, pos.clone(), 1, lora)

    plain = step(None)
    recorder = Recorder()
    assert torch.equal(step(recorder), plain)  # a hook that changes nothing changes nothing
    expected = [
        f"model.layers.{i}.{'mlp' if p in PROJECTIONS[4:] else 'self_attn'}.{p}"
        for i in range(layers)
        for p in PROJECTIONS
    ]
    assert sorted(recorder.names) == sorted(expected)
    bumped = step(Recorder(bump=f"model.layers.{layers - 1}.mlp.down_proj"))
    assert not torch.allclose(bumped, plain)


def test_deterministic_greedy_alone_equals_batched_in_bfloat16(lm16: CausalLM) -> None:
    assert lm16.dtype == torch.bfloat16
    engine = Scheduler(
        lm16,
        EngineLimits(
            max_running=4, max_tokens_in_flight=4 * 256, prefill_chunk=16, deterministic=True
        ),
    )
    try:
        # Prompts longer than a prefill chunk, more requests than slots, different lengths:
        # batches of every size and chunks read while others decode.
        batch = [(p, 24 - 4 * (i % 3)) for i, p in enumerate(prompts(lm16, 7))]
        alone = [run(engine, [item])[0] for item in batch]
        together = run(engine, batch)
        assert together == alone
    finally:
        engine.close()
