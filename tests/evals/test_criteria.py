"""The testing criteria built from short grader names (what `cumulo eval run --grader` and
the console's Evaluations form offer): each is a criterion `POST /v1/evals` accepts, and a
bad choice names what to fix."""

from __future__ import annotations

import pytest

from cumulo.evals import CriterionInvalid, check
from cumulo.evals.criteria import GRADERS, criterion, from_spec


def test_every_grader_builds_a_criterion_the_api_accepts() -> None:
    for i, name in enumerate(g for g in GRADERS if g != "meteor"):  # meteor needs WordNet
        c = criterion(name, 0.5, judge="judge-model", embedder="embed-model")
        assert check(c, i)["name"] == name
    assert criterion("exact")["operation"] == "eq"
    assert criterion("contains")["operation"] == "ilike"
    assert criterion("bleu")["pass_threshold"] == 0.8  # the default threshold
    assert criterion("rouge_l", 0.25)["evaluation_metric"] == "rouge_l"
    assert criterion("cosine", embedder="e")["model"] == "e"
    judge = criterion("judge", judge="j")
    assert judge["type"] == "label_model" and judge["model"] == "j"
    assert judge["passing_labels"] == ["correct"]


def test_specs_take_a_threshold_after_a_colon() -> None:
    assert from_spec("fuzzy_match:0.95")["pass_threshold"] == 0.95
    assert from_spec("fuzzy_match:")["pass_threshold"] == 0.8
    assert from_spec("exact") == criterion("exact")


@pytest.mark.parametrize(
    ("spec", "judge", "embedder", "param"),
    [
        ("judge", None, None, "judge"),
        ("cosine", None, None, "embedding_model"),
        ("bleu:high", None, None, "threshold"),
        ("bleu:1.5", None, None, "threshold"),
        ("bleu:nan", None, None, "threshold"),
        ("exact:0.5", None, None, "grader"),
        ("python", None, None, "grader"),
    ],
)
def test_a_bad_choice_names_what_to_fix(
    spec: str, judge: str | None, embedder: str | None, param: str
) -> None:
    with pytest.raises(CriterionInvalid) as caught:
        from_spec(spec, judge, embedder)
    assert caught.value.param == param
