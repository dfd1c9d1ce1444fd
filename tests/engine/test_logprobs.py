"""Log probabilities from the batching engine equal the model's own, run alone.

The scheduler computes them in its batched prefill chunks and decode steps; here prompts
longer than a prefill chunk (32 tokens) run next to others in one batch, and each
prompt token's log probability, its top tokens and each sampled token's log probability
are compared with one plain transformers forward over the whole sequence (float32).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from cumulo.engine.loader import CausalLM, load_causal_lm
from cumulo.engine.params import Finished, GenerationParams, TextPiece, TokenLogprobs
from cumulo.engine.sampling import SamplingConfig
from cumulo.engine.scheduler import EngineLimits, Scheduler, Sequence
from engine.test_scheduler import Collector, prompts

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def lm(demo_dir: object) -> CausalLM:
    return load_causal_lm(demo_dir, "float32")  # type: ignore[arg-type]


@pytest.fixture
def scheduler(lm: CausalLM) -> Iterator[Scheduler]:
    engine = Scheduler(
        lm,
        EngineLimits(max_running=4, max_tokens_in_flight=4 * 256, max_queue=16, prefill_chunk=32),
    )
    yield engine
    engine.close()


def reference(lm: CausalLM, ids: list[int]) -> torch.Tensor:
    """Log-softmax at every position of `ids`, from one forward of the model alone."""
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids], device=lm.device)).logits[0].float()
    return torch.log_softmax(logits, dim=-1).cpu()


def run(scheduler: Scheduler, prompt: list[int], max_new: int, top: int) -> Collector:
    sink = Collector()
    params = GenerationParams(
        max_new_tokens=max_new,
        sampling=SamplingConfig(temperature=0.0),
        logprobs=top,
        prompt_logprobs=top,
    )
    scheduler.submit(Sequence(prompt, params, sink))
    return sink


def test_prompt_and_token_logprobs_match_the_model_alone(
    lm: CausalLM, scheduler: Scheduler
) -> None:
    batch = [p * 4 for p in prompts(lm, 4)]  # several prefill chunks each
    assert max(len(p) for p in batch) > 64
    sinks = [run(scheduler, p, 5, 3) for p in batch]
    for prompt, sink in zip(batch, sinks, strict=True):
        end = sink.end
        events = [e for e in sink.events if isinstance(e, TokenLogprobs)]
        head, rest = events[0], events[1:]
        assert head.prompt and head.tokens == prompt[1:]
        assert all(not e.prompt and len(e.tokens) == 1 for e in rest)
        sampled = [e.tokens[0] for e in rest]
        assert len(sampled) == end.completion_tokens or (
            len(sampled) == end.completion_tokens - 1 and end.finish_reason == "stop"
        )
        ids = prompt + sampled
        want = reference(lm, ids)
        values = head.logprobs + [v for e in rest for v in e.logprobs]
        tops = head.top + [t for e in rest for t in e.top]
        for i, (value, best) in enumerate(zip(values, tops, strict=True), start=1):
            assert abs(value - want[i - 1, ids[i]].item()) < TOLERANCE
            expect = torch.topk(want[i - 1], 3)
            assert [t for t, _ in best] == expect.indices.tolist()
            assert (
                max(abs(p - q) for (_, p), q in zip(best, expect.values.tolist(), strict=True))
                < TOLERANCE
            )
        # Greedy: every sampled token is the most likely one.
        for e in rest:
            assert e.tokens[0] == e.top[0][0][0]


def test_max_new_tokens_zero_reads_the_prompt_only(lm: CausalLM, scheduler: Scheduler) -> None:
    prompt = prompts(lm, 3)[2] * 3
    sink = run(scheduler, prompt, 0, 1)
    end = sink.end
    assert isinstance(end, Finished) and end.finish_reason == "length"
    assert end.completion_tokens == 0 and end.prompt_tokens == len(prompt)
    assert not [e for e in sink.events if isinstance(e, TextPiece)]
    [head] = [e for e in sink.events if isinstance(e, TokenLogprobs)]
    want = reference(lm, prompt)
    got = torch.tensor(head.logprobs)
    expect = torch.tensor([want[i - 1, prompt[i]].item() for i in range(1, len(prompt))])
    assert torch.allclose(got, expect, atol=TOLERANCE)


def test_requests_without_logprobs_get_none(lm: CausalLM, scheduler: Scheduler) -> None:
    sink = Collector()
    scheduler.submit(
        Sequence(
            prompts(lm, 1)[0],
            GenerationParams(max_new_tokens=4, sampling=SamplingConfig(temperature=0.0)),
            sink,
        )
    )
    sink.end  # noqa: B018 - waits for the end
    assert not [e for e in sink.events if isinstance(e, TokenLogprobs)]
