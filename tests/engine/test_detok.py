"""Incremental detokenization: exact text, whole characters, stop strings held back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from cumulo.engine.detok import IncrementalText


@pytest.fixture(scope="module")
def tokenizer(demo_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(demo_dir, local_files_only=True)


def pieces(tokenizer: Any, text: str, stop: list[str]) -> tuple[list[str], bool]:
    inc = IncrementalText(tokenizer, stop)
    out = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        out.append(inc.push(token))
        if inc.stopped:
            break
    out.append(inc.flush())
    return [p for p in out if p], inc.stopped


def test_pieces_concatenate_to_text_without_partial_characters(tokenizer: Any) -> None:
    text = "Snow ❄ and rain ☔ in Zürich — naïve 雲 clouds."
    out, stopped = pieces(tokenizer, text, [])
    assert "".join(out) == text
    assert not stopped
    assert all("\ufffd" not in p for p in out)


@pytest.mark.parametrize(
    ("text", "stop", "expected"),
    [
        ("The rain falls. END more text", ["END"], "The rain falls. "),
        ("clouds over the hill", ["over", "clouds"], ""),
        ("a b c", ["c d"], "a b c"),  # a stop-string prefix at the end is released
        ("mixed ☁☁ weather", ["☁☁"], "mixed "),
    ],
)
def test_stop_strings(tokenizer: Any, text: str, stop: list[str], expected: str) -> None:
    out, stopped = pieces(tokenizer, text, stop)
    assert "".join(out) == expected
    assert stopped == (expected != text)
    assert not any(s in "".join(out) for s in stop)


def test_stop_prefix_is_held_back_while_streaming(tokenizer: Any) -> None:
    inc = IncrementalText(tokenizer, ["<stop>"])
    emitted = ""
    for token in tokenizer("say <sto", add_special_tokens=False)["input_ids"]:
        emitted += inc.push(token)
        assert "<" not in emitted
    assert emitted == "say "
    assert inc.flush() == "<sto"
