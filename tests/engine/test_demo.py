"""The offline demo model: deterministic, atomic, with a working tokenizer and template."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

from cumulo.engine.demo import build_demo_model, demo_corpus, is_demo_built


def test_build_is_deterministic_per_seed(demo_dir: Path, tmp_path: Path) -> None:
    again = build_demo_model(tmp_path / "again", seed=0)
    other = build_demo_model(tmp_path / "other", seed=1)
    weights = (demo_dir / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (again / "tokenizer.json").read_bytes() == (demo_dir / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() != weights
    # The tokenizer does not depend on the seed, only the weights do.
    assert (other / "tokenizer.json").read_bytes() == (demo_dir / "tokenizer.json").read_bytes()


def test_marker_and_config(demo_dir: Path) -> None:
    marker = json.loads((demo_dir / "cumulo.json").read_text())
    assert marker["untrained"] is True
    assert marker["built_by"] == "cumulo models build-demo"
    assert is_demo_built(demo_dir)
    config = AutoConfig.from_pretrained(demo_dir, local_files_only=True)
    assert config.model_type == "llama"
    assert config.max_position_embeddings == 2048
    assert 2000 <= config.vocab_size <= 4000


def test_is_demo_built_rejects_incomplete_dirs(demo_dir: Path, tmp_path: Path) -> None:
    assert not is_demo_built(tmp_path / "missing")
    assert not is_demo_built(tmp_path)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "cumulo.json").write_text((demo_dir / "cumulo.json").read_text())
    assert not is_demo_built(partial)


def test_rebuild_replaces_target_and_leaves_no_temp_dirs(tmp_path: Path) -> None:
    target = tmp_path / "demo"
    build_demo_model(target, seed=3)
    (target / "stale.txt").write_text("from an older build")
    build_demo_model(target, seed=3)
    assert not (target / "stale.txt").exists()
    assert is_demo_built(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


def test_tokenizer_round_trips_text(demo_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(demo_dir, local_files_only=True)
    samples = [p for p in demo_corpus().split("\n\n") if p.strip()][::7]
    samples.append("Unseen words, digits 12345, café, naïve — and a cloud ☁ in the sky.")
    for text in samples:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text
    # Trained on the corpus: common words are single tokens, not bytes.
    assert len(tok(" the weather", add_special_tokens=False)["input_ids"]) == 2


def test_chat_template_renders_roles(demo_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(demo_dir, local_files_only=True)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Sunny."},
        {"role": "tool", "content": '{"temp": 21}'},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == (
        "<|bos|><|system|>\nBe brief.<|end|>\n<|user|>\nWeather?<|end|>\n"
        '<|assistant|>\nSunny.<|end|>\n<|tool|>\n{"temp": 21}<|end|>\n'
    )
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWeather?<|end|>\n<|assistant|>\n")
    assert tok.eos_token == "<|eos|>"
    special = tok.convert_tokens_to_ids(["<|user|>", "<|end|>"])
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert all(i in ids for i in special)
