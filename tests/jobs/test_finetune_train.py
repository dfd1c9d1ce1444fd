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
