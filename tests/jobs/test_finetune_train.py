"""The LoRA trainer on the demo model: what carries loss, determinism under a seed, and a
run stopped at a checkpoint then resumed ending exactly as one run straight through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from cumulo.engine.demo import build_demo_model
from cumulo.jobs.finetune.data import parse_file
from cumulo.jobs.finetune.train import Stopped, TrainSpec, checkpoints, encode_example, train

pytestmark = pytest.mark.slow

EXAMPLES = [
    [
        {"role": "user", "content": f"Question {i}?"},
        {"role": "assistant", "content": f"Answer {i}."},
    ]
    for i in range(5)
]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("ft-train") / "demo-tiny", seed=0)


def spec(demo: Path, out: Path, **kw: Any) -> TrainSpec:
    return TrainSpec(
        demo,
        out,
        EXAMPLES,
        n_epochs=2,
        batch_size=2,
        seed=3,
        dropout=0.1,
        checkpoint_every=2,
        threads=1,
        **kw,
    )


def adapter(path: Path) -> dict[str, Any]:
    return load_file(str(path / "adapter" / "adapter_model.safetensors"))


def test_only_assistant_turns_with_weight_carry_loss(demo: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "Skipped reply", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Learned reply"},
    ]
    enc = encode_example(tok, messages)
    trained = tok.decode([i for i, label in zip(enc.ids, enc.labels, strict=True) if label != -100])
    assert trained.startswith("Learned reply")
    assert "Skipped" not in trained and "Hello" not in trained and "Again" not in trained
    served = tok.apply_chat_template(messages, tokenize=False)
    assert tok.decode(enc.ids) == served  # trained on exactly the template's text


def test_same_seed_same_adapter_and_resume_equals_one_run(demo: Path, tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    train(spec(demo, tmp_path / "a"), events.append, lambda: False)
    train(spec(demo, tmp_path / "b"), lambda e: None, lambda: False)
    a, b = adapter(tmp_path / "a"), adapter(tmp_path / "b")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    steps = [e["step"] for e in events if e["type"] == "metrics"]
    assert steps == [1, 2, 3, 4, 5, 6]  # 5 examples in batches of 2: 3 steps an epoch
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 3, 4, 6]
    # Stopped after step 2, then resumed: the same adapter as the run straight through.
    calls = {"n": 0}

    def stop_after_two() -> bool:
        calls["n"] += 1
        return calls["n"] >= 2

    with pytest.raises(Stopped):
        train(spec(demo, tmp_path / "c"), lambda e: None, stop_after_two)
    assert [s for s, _ in checkpoints(tmp_path / "c")] == [2]
    resumed: list[dict[str, Any]] = []
    train(spec(demo, tmp_path / "c"), resumed.append, lambda: False)
    assert [e["step"] for e in resumed if e["type"] == "metrics"] == [3, 4, 5, 6]
    c = adapter(tmp_path / "c")
    assert all(((a[k] - c[k]).abs() < 1e-6).all() for k in a)
    other = tmp_path / "d"
    train(
        TrainSpec(demo, other, EXAMPLES, n_epochs=2, batch_size=2, seed=4, dropout=0.1, threads=1),
        lambda e: None,
        lambda: False,
    )
    d = adapter(other)
    assert any(not (a[k] == d[k]).all() for k in a)  # another seed: another adapter


def test_a_cancel_stops_at_the_step_boundary_and_writes_nothing_more(
    demo: Path, tmp_path: Path
) -> None:
    events: list[dict[str, Any]] = []
    with pytest.raises(Stopped):
        # Cancelled during step 4, a checkpoint step: no checkpoint for it, no adapter.
        train(
            spec(demo, tmp_path / "x"),
            events.append,
            lambda: False,
            discard=lambda: len([e for e in events if e["type"] == "metrics"]) >= 4,
        )
    assert [e["step"] for e in events if e["type"] == "checkpoint"] == [2, 3]
    assert [s for s, _ in checkpoints(tmp_path / "x")] == [2, 3]
    assert not (tmp_path / "x" / "adapter").exists()


def test_file_errors_name_line_and_field() -> None:
    content = (
        b'{"messages": [{"role": "user", "content": "hi"}, '
        b'{"role": "assistant", "content": "yo"}]}\n\n'
        b'{"messages": [{"role": "robot", "content": "hi"}]}\n'
        b"not json\n"
        b'{"messages": [{"role": "user", "content": "a", "weight": 1}]}\n'
        b'{"messages": [{"role": "user", "content": "a"}, '
        b'{"role": "assistant", "content": "b", "weight": 0}]}\n'
    )
    examples, errors = parse_file(content)
    assert len(examples) == 1
    assert [(e["line"], e["param"]) for e in errors] == [
        (3, "messages[0].role"),
        (4, None),
        (5, "messages[0].weight"),
        (6, "messages"),
    ]
    assert all(e["message"].startswith(f"line {e['line']}:") for e in errors)


def test_a_padded_pass_equals_each_example_alone(demo: Path) -> None:
    """Examples of one forward pass are rows of their own: right padding and the mask keep
    each one's loss what it is alone (no attention across examples, no loss on padding)."""
    import torch

    from cumulo.jobs.finetune.train import load_model, loss_of

    tok, model = load_model(TrainSpec(demo, Path("unused"), EXAMPLES, seed=1))
    model.eval()
    long = [{"role": "user", "content": "A much longer question, with many more words in it?"},
            {"role": "assistant", "content": "And a longer answer too, to pad the others."}]
    encoded = [encode_example(tok, ex) for ex in [*EXAMPLES[:2], long]]
    assert len({len(e.ids) for e in encoded}) > 1
    with torch.no_grad():
        together, n = loss_of(model, encoded)
        alone = [loss_of(model, [e]) for e in encoded]
    assert n == sum(k for _, k in alone) == sum(e.trained_tokens for e in encoded)
    assert abs(float(together) - sum(float(x) for x, _ in alone)) < 1e-3


def test_batches_bucket_by_length_and_cover_each_example_once() -> None:
    from cumulo.jobs.finetune.train import (
        BUCKET_BATCHES,
        epoch_batches,
        micro_batches,
        steps_per_epoch,
    )

    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    batches = epoch_batches(lengths, 4, seed=5, epoch=0)
    assert len(batches) == steps_per_epoch(200, 4) == 50
    assert sorted(i for b in batches for i in b) == list(range(200))
    assert batches == epoch_batches(lengths, 4, seed=5, epoch=0)
    assert batches != epoch_batches(lengths, 4, seed=5, epoch=1)
    # Within a window the batches are length-sorted slices: their spreads are small.
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    shuffled = [list(range(200))[k:k + 4] for k in range(0, 200, 4)]
    assert spread * 3 < sum(max(lengths[i] for i in b) - min(lengths[i] for i in b)
                            for b in shuffled)
    assert BUCKET_BATCHES * 4 < 200  # several windows were drawn
    from cumulo.jobs.finetune.train import Encoded

    exs = [Encoded([1] * n, [1] * n) for n in (10, 30, 20, 50)]
    parts = micro_batches(exs, 60)
    assert [[len(e.ids) for e in p] for p in parts] == [[50], [30, 20], [10]]
    assert all(len(p) * len(p[0].ids) <= 60 for p in parts)


def test_training_threads_and_niceness_hold_for_the_training_thread_only() -> None:
    import os
    import threading

    import torch

    from cumulo.jobs.finetune.train import limit_threads

    before = torch.get_num_threads()
    seen: dict[str, int] = {}

    def trainer() -> None:
        limit_threads(1, 7)
        seen["threads"] = torch.get_num_threads()
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

        def other() -> None:
            seen["other"] = torch.get_num_threads()

        t = threading.Thread(target=other)
        t.start()
        t.join()

    t = threading.Thread(target=trainer)
    t.start()
    t.join()
    assert seen["threads"] == 1 and seen["nice"] == 7
    assert torch.get_num_threads() == before
    assert seen["other"] == before  # a thread started later keeps the process's count
    assert os.getpriority(os.PRIO_PROCESS, 0) == 0


def test_dtype_auto_is_fp32_on_cpu_and_bf16_trains_when_asked(demo: Path, tmp_path: Path) -> None:
    import torch

    from cumulo.jobs.finetune.train import resolve_dtype

    if not torch.cuda.is_available():
        assert resolve_dtype("auto") == (torch.float32, "cpu")
    assert resolve_dtype("bf16")[0] == torch.bfloat16
    with pytest.raises(ValueError, match="fp32"):
        resolve_dtype("fp16")
    events: list[dict[str, Any]] = []
    train(spec(demo, tmp_path / "bf16", dtype="bf16"), events.append, lambda: False)
    losses = [e["train_loss"] for e in events if e["type"] == "metrics"]
    assert len(losses) == 6 and all(0 < x < 100 for x in losses)
    a = adapter(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 for v in a.values())  # the adapter itself stays fp32
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16" / "model"))
    assert next(merged.parameters()).dtype == torch.bfloat16
