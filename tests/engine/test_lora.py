"""LoRA adapters on the loaded base (engine.lora), on the demo model in float32.

Two random PEFT adapters (different ranks, targets and alphas) and the base itself share
one running batch: each request's greedy tokens equal the same request run alone, and
those equal PEFT's own model with that adapter. The registry checks adapters against the
base, and keeps at most `cache_size` of them loaded, least recently used dropped first.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cumulo.engine.loader import CausalLM, load_causal_lm
from cumulo.engine.lora import AdapterRegistry, LoraBatch
from cumulo.engine.params import Finished, GenerationParams
from cumulo.engine.sampling import SamplingConfig
from cumulo.engine.scheduler import EngineLimits, Posted, Scheduler, Sequence
from cumulo.errors import ConfigError, Unavailable

GREEDY = SamplingConfig(temperature=0.0)
NEW = 16


@pytest.fixture(scope="module")
def lm(demo_dir: Path) -> CausalLM:
    return load_causal_lm(demo_dir, "float32")


def make_adapter(base: Path, out: Path, seed: int, **lora: object) -> Path:
    """A PEFT LoRA adapter with random A and B (an untrained one has B = 0: no effect)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft = get_peft_model(
            model, LoraConfig(task_type="CAUSAL_LM", init_lora_weights=False, **lora)
        )  # type: ignore[arg-type]
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.3)
    peft.save_pretrained(str(out), save_embedding_layers=False)
    return out


@pytest.fixture(scope="module")
def adapters(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    return {
        "ft:a": make_adapter(
            demo_dir,
            root / "a",
            1,
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        ),
        "ft:b": make_adapter(
            demo_dir,
            root / "b",
            2,
            r=4,
            lora_alpha=8,
            use_rslora=True,
            target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
            alpha_pattern={"down_proj": 2},
        ),
    }


@pytest.fixture
def registry(lm: CausalLM, adapters: dict[str, Path]) -> AdapterRegistry:
    reg = AdapterRegistry(lm.model, lm.device, cache_size=4)
    for name, path in adapters.items():
        reg.register(name, path)
    return reg


@pytest.fixture
def scheduler(lm: CausalLM) -> Iterator[Scheduler]:
    engine = Scheduler(
        lm,
        EngineLimits(max_running=8, max_tokens_in_flight=8 * 128, max_queue=16, prefill_chunk=24),
    )
    yield engine
    engine.close()


class Collector:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.last: Posted | None = None

    def __call__(self, item: Posted) -> bool:
        if isinstance(item, Finished | BaseException):
            self.last = item
            self.done.set()
        return True


def prompts(lm: CausalLM) -> list[list[int]]:
    texts = ["clouds over the sea", "rain and wind in tall trees " * 3, "the sea", "wind in"]
    return [lm.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def run(
    engine: Scheduler, registry: AdapterRegistry, requests: list[tuple[list[int], str | None]]
) -> list[list[int]]:
    """Submit every request at once; their greedy tokens."""
    seqs = []
    for prompt, adapter in requests:
        lora = None if adapter is None else registry.get(adapter)
        seq = Sequence(
            prompt,
            GenerationParams(max_new_tokens=NEW, sampling=GREEDY),
            Collector(),
            adapter=adapter,
            lora=lora,
        )
        engine.submit(seq)
        seqs.append(seq)
    for seq in seqs:
        sink = seq.sink
        assert isinstance(sink, Collector) and sink.done.wait(60)
        assert isinstance(sink.last, Finished), sink.last
    return [seq.tokens for seq in seqs]


def test_mixed_adapter_batch_equals_each_alone_and_peft(
    lm: CausalLM,
    registry: AdapterRegistry,
    scheduler: Scheduler,
    adapters: dict[str, Path],
    demo_dir: Path,
) -> None:
    ps = prompts(lm)
    # Adapters interleaved over the slots (rows of one adapter are not adjacent), the base too.
    # 10 requests on 8 slots: two wait, then join the running batch.
    requests = [(p, a) for p in ps[:3] for a in (None, "ft:a", "ft:b")] + [(ps[3], "ft:a")]
    alone = [run(scheduler, registry, [r])[0] for r in requests]
    mixed = run(scheduler, registry, requests)
    assert mixed == alone
    # Each adapter changes what the model says (or this test could not fail).
    by = {(tuple(p), a): t for (p, a), t in zip(requests, alone, strict=True)}
    for p in ps[:2]:
        assert by[(tuple(p), "ft:a")] != by[(tuple(p), None)]
        assert by[(tuple(p), "ft:b")] != by[(tuple(p), None)]
        assert by[(tuple(p), "ft:a")] != by[(tuple(p), "ft:b")]
    # PEFT's own model with each adapter gives the same greedy tokens.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for name in ("ft:a", "ft:b"):
        base = AutoModelForCausalLM.from_pretrained(str(demo_dir), dtype=torch.float32)
        peft = PeftModel.from_pretrained(base, str(adapters[name])).eval()
        for p in ps[:2]:
            with torch.inference_mode():
                out = peft.generate(
                    input_ids=torch.tensor([p]),
                    max_new_tokens=NEW,
                    do_sample=False,
                    pad_token_id=0,
                    eos_token_id=list(lm.stop_token_ids),
                )
            assert out[0, len(p) :].tolist() == by[(tuple(p), name)], name
    # The base's rows stay the base's: alone it agrees with transformers' greedy generate.
    with torch.inference_mode():
        out = lm.model.generate(
            torch.tensor([ps[0]]),
            max_new_tokens=NEW,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=list(lm.stop_token_ids),
        )
    assert out[0, len(ps[0]) :].tolist() == by[(tuple(ps[0]), None)]


def test_lora_batch_leaves_base_rows_untouched(registry: AdapterRegistry) -> None:
    a = registry.get("ft:a")
    w = a.modules["model.layers.0.self_attn.q_proj"]
    x = torch.randn(4, 3, w.a.shape[1])
    y = torch.randn(4, 3, w.b.shape[0])
    step = LoraBatch.of([None, a, None, a], torch.device("cpu"))
    assert step is not None and LoraBatch.of([None, None], torch.device("cpu")) is None
    out = step.apply("model.layers.0.self_attn.q_proj", x, y.clone())
    assert torch.equal(out[0], y[0]) and torch.equal(out[2], y[2])
    for i in (1, 3):
        assert torch.allclose(out[i], y[i] + w.scale * (x[i] @ w.a.T) @ w.b.T, atol=1e-5)
    # A projection the adapter does not target is left as it is.
    assert torch.equal(step.apply("model.layers.0.mlp.up_proj", x, y.clone()), y)


def test_lru_cache_keeps_at_most_its_size(lm: CausalLM, adapters: dict[str, Path]) -> None:
    reg = AdapterRegistry(lm.model, lm.device, cache_size=1)
    for name, path in adapters.items():
        reg.register(name, path)
    a = reg.get("ft:a")
    assert reg.cached() == ["ft:a"] and reg.loads == 1
    reg.get("ft:b")
    assert reg.cached() == ["ft:b"] and reg.loads == 2
    # Dropped from the cache but still held (a running request): the same copy, not read again.
    assert reg.get("ft:a") is a and reg.loads == 2 and reg.cached() == ["ft:a"]
    del a
    reg.get("ft:b")
    reg.get("ft:a")
    assert reg.loads == 4  # gone from memory once nobody held it: read again
    reg.unregister("ft:a")
    with pytest.raises(Unavailable):
        reg.get("ft:a")
    with pytest.raises(ValueError):
        AdapterRegistry(lm.model, lm.device, cache_size=0)


def test_adapters_that_do_not_fit_the_base_are_refused(
    lm: CausalLM, demo_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    reg = AdapterRegistry(lm.model, lm.device, cache_size=2)
    head = make_adapter(demo_dir, tmp_path / "head", 3, r=2, target_modules=["lm_head"])
    with pytest.raises(ConfigError, match="targets 'lm_head', which is not a linear layer"):
        reg.register("ft:head", head)
    with pytest.raises(ConfigError, match="cannot read"):
        reg.register("ft:none", tmp_path / "missing")
    dora = tmp_path / "dora"
    dora.mkdir()
    (dora / "adapter_model.safetensors").write_bytes(
        (adapters["ft:a"] / "adapter_model.safetensors").read_bytes()
    )
    config = json.loads((adapters["ft:a"] / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ConfigError, match="use_dora"):
        reg.register("ft:dora", dora)
    assert reg.names() == []
