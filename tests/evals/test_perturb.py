"""Perturbations of eval items: what each changes (and never changes), the same seed gives
the same inputs, and the robustness option is checked field by field."""

from __future__ import annotations

import re
from typing import Any

import pytest

from cumulo.evals.perturb import (
    NEIGHBOURS,
    RobustnessInvalid,
    check,
    check_marks,
    options_fields,
    perturb,
)

ITEM = {"question": "What is the Capital of France? Pick one.", "n": 7,
        "options": ["Paris", "Rome", "Madrid", "Berlin"], "ctx": {"hint": "It is in Europe"}}
SCHEMA = {"type": "object", "properties": {
    "question": {"type": "string"}, "n": {"type": "integer"},
    "options": {"type": "array", "items": {"type": "string"}, "x-cumulo-options": True}}}


def test_lowercase_touches_every_string_and_nothing_else() -> None:
    out = perturb(ITEM, "lowercase", 0, 3, ["options"])
    assert out == {"question": "what is the capital of france? pick one.", "n": 7,
                   "options": ["paris", "rome", "madrid", "berlin"],
                   "ctx": {"hint": "it is in europe"}}
    assert ITEM["question"].startswith("What")  # the original is left alone


@pytest.mark.parametrize("index", range(20))
def test_typos_change_letters_to_keyboard_neighbours_only(index: int) -> None:
    out = perturb(ITEM, "typos", 5, index, [])
    for before, after in ((ITEM["question"], out["question"]),
                          (ITEM["ctx"]["hint"], out["ctx"]["hint"]),
                          *zip(ITEM["options"], out["options"], strict=True)):
        assert len(after) == len(before) and after != before
        changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
        assert 1 <= len(changed) <= max(1, round(0.05 * len(before)))
        for a, b in changed:
            assert b.lower() in NEIGHBOURS[a.lower()] and a.isupper() == b.isupper()
    assert out["n"] == 7


@pytest.mark.parametrize("index", range(20))
def test_whitespace_only_widens_the_spaces_between_words(index: int) -> None:
    out = perturb(ITEM, "whitespace", 1, index, [])
    q = out["question"]
    assert q != ITEM["question"] and re.sub(r" +", " ", q) == ITEM["question"]
    assert max(len(run) for run in re.findall(r" +", q)) <= 4
    assert out["options"] == ITEM["options"]  # one word each: nothing to widen


@pytest.mark.parametrize("index", range(20))
def test_reorder_shuffles_the_marked_options_never_in_place(index: int) -> None:
    out = perturb(ITEM, "reorder_options", 2, index, ["options"])
    assert sorted(out["options"]) == sorted(ITEM["options"])
    assert out["options"] != ITEM["options"]
    assert {k: v for k, v in out.items() if k != "options"} == {
        k: v for k, v in ITEM.items() if k != "options"}
    two = perturb({"options": ["yes", "no"]}, "reorder_options", 2, index, ["options"])
    assert two["options"] == ["no", "yes"]


def test_the_same_seed_gives_the_same_inputs_another_seed_others() -> None:
    for name in ("typos", "whitespace", "reorder_options"):
        runs = [[perturb(ITEM, name, seed, i, ["options"]) for i in range(30)]
                for seed in (11, 11, 12)]
        assert runs[0] == runs[1]
        assert runs[0] != runs[2]
    # items differ from one another even with one seed
    assert len({perturb(ITEM, "typos", 0, i, [])["question"] for i in range(30)}) > 5


def test_the_option_is_checked_naming_the_field() -> None:
    assert check({"perturbations": ["typos", "reorder_options"], "seed": 4}, SCHEMA) == {
        "perturbations": ["typos", "reorder_options"], "seed": 4}
    assert check({"perturbations": ["lowercase"]}, SCHEMA)["seed"] == 0
    plain = {"type": "object", "properties": {"q": {"type": "string"}}}
    bad: list[tuple[Any, dict[str, Any], str]] = [
        ("all", SCHEMA, "data_source.robustness"),
        ({"perturbations": []}, SCHEMA, "data_source.robustness.perturbations"),
        ({"perturbations": ["caps"]}, SCHEMA, "data_source.robustness.perturbations[0]"),
        ({"perturbations": ["typos", "typos"]}, SCHEMA,
         "data_source.robustness.perturbations[1]"),
        ({"perturbations": ["reorder_options"]}, plain,
         "data_source.robustness.perturbations[0]"),
        ({"perturbations": ["typos"], "seed": -1}, SCHEMA, "data_source.robustness.seed"),
        ({"perturbations": ["typos"], "seed": True}, SCHEMA, "data_source.robustness.seed"),
        ({"perturbations": ["typos"], "rate": 2}, SCHEMA, "data_source.robustness.rate"),
    ]
    for raw, schema, param in bad:
        with pytest.raises(RobustnessInvalid) as e:
            check(raw, schema)
        assert e.value.param == param, raw


def test_options_marks() -> None:
    assert options_fields(SCHEMA) == ["options"]
    assert check_marks(SCHEMA) is None
    assert "array property only" in (check_marks(
        {"properties": {"q": {"type": "string", "x-cumulo-options": True}}}) or "")
    assert "true or false" in (check_marks(
        {"properties": {"o": {"type": "array", "x-cumulo-options": "yes"}}}) or "")
