"""Graders on their own: each metric is the library's figure, judges' answers are read
leniently and an unreadable one is an errored result, criteria are checked field by field."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import pytest
import sacrebleu
from nltk.translate.gleu_score import sentence_gleu
from rapidfuzz import fuzz
from rouge_score import rouge_scorer

from cumulo.evals.graders import (
    Call,
    CriterionInvalid,
    Grader,
    check,
    meteor_available,
    parse_label,
    parse_score,
)
from cumulo.evals.templates import TemplateError, render, sample_scope

HYP = "the quick brown fox jumps over the lazy dog"
REF = "a quick brown fox jumped over the lazy dog"


def sim(metric: str, threshold: float = 0.5) -> dict[str, Any]:
    return check(
        {
            "type": "text_similarity",
            "name": metric,
            "input": "{{sample.output_text}}",
            "reference": "{{item.ref}}",
            "evaluation_metric": metric,
            "pass_threshold": threshold,
        },
        0,
    )


def grade(
    c: dict[str, Any], output: str, item: dict[str, Any], grader: Grader | None = None
) -> Any:
    scope = {"item": item, "sample": sample_scope(output)}
    return asyncio.run((grader or Grader()).grade(c, scope))


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("fuzzy_match", fuzz.ratio(HYP, REF) / 100),
        ("bleu", sacrebleu.sentence_bleu(HYP, [REF]).score / 100),
        ("gleu", sentence_gleu([REF.split()], HYP.split())),
        ("rouge_1", rouge_scorer.RougeScorer(["rouge1"]).score(REF, HYP)["rouge1"].fmeasure),
        ("rouge_3", rouge_scorer.RougeScorer(["rouge3"]).score(REF, HYP)["rouge3"].fmeasure),
        ("rouge_l", rouge_scorer.RougeScorer(["rougeL"]).score(REF, HYP)["rougeL"].fmeasure),
    ],
)
def test_similarity_scores_are_the_libraries(metric: str, expected: float) -> None:
    r = grade(sim(metric, 0.5), HYP, {"ref": REF})
    assert r.score == pytest.approx(expected) and 0 < r.score < 1
    assert r.passed == (expected >= 0.5)
    assert grade(sim(metric, 0.99), REF, {"ref": REF}).passed  # identical texts


def test_meteor_matches_wordnet_synonyms() -> None:
    """WordNet comes from Debian's wordnet-base (`make wordnet`; the test suite installs it)."""
    assert meteor_available(), "meteor needs WordNet: install Debian's wordnet-base"
    # "motorcar" matches "car" only through WordNet (a lemma of car.n.01): all 4 words in
    # one chunk, so Fmean = 1 and the fragmentation penalty is 0.5 * (1/4)^3.
    r = grade(sim("meteor", 0.99), "the motorcar is red", {"ref": "the car is red"})
    assert r.score == pytest.approx(1 - 0.5 * (1 / 4) ** 3) and r.passed
    # "banana" does not: 3 of 4 words in 2 chunks, Fmean 0.75, penalty 0.5 * (2/3)^3
    r = grade(sim("meteor"), "the banana is red", {"ref": "the car is red"})
    assert r.score == pytest.approx(0.75 * (1 - 0.5 * (2 / 3) ** 3))
    r = grade(sim("meteor", 0.5), HYP, {"ref": REF})
    assert 0.5 < r.score < 1 and r.passed


def test_meteor_without_wordnet_is_refused_naming_the_field(tmp_path: Any) -> None:
    code = (
        "from cumulo.evals.graders import CriterionInvalid, check\n"
        "try:\n"
        "    check({'type': 'text_similarity', 'name': 'm', 'input': 'a', 'reference': 'b',"
        " 'evaluation_metric': 'meteor', 'pass_threshold': 0.5}, 3)\n"
        "except CriterionInvalid as e:\n"
        "    print(e.param, '|', e)\n"
    )
    env = {**os.environ, "WNSEARCHDIR": str(tmp_path), "NLTK_DATA": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    param, _, message = out.stdout.partition(" | ")
    assert param == "testing_criteria[3].evaluation_metric"
    assert "meteor needs WordNet" in message and "wordnet-base" in message


@pytest.mark.parametrize(
    ("op", "output", "passed"),
    [
        ("eq", "Paris", True),
        ("eq", "paris", False),
        ("ne", "Lyon", True),
        ("like", "It is Paris.", True),
        ("like", "It is paris.", False),
        ("ilike", "IT IS PARIS", True),
        ("ilike", "Lyon", False),
    ],
)
def test_string_check(op: str, output: str, passed: bool) -> None:
    c = check(
        {
            "type": "string_check",
            "name": "s",
            "input": "{{sample.output_text}}",
            "reference": "{{item.city}}",
            "operation": op,
        },
        0,
    )
    r = grade(c, output, {"city": "Paris"})
    assert (r.passed, r.score) == (passed, 1.0 if passed else 0.0)


def test_templates_reach_into_items_and_json_outputs() -> None:
    scope = {"item": {"a": {"b": [1, {"c": "deep"}]}}, "sample": sample_scope('{"x": 3}')}
    assert (
        render("{{item.a.b.1.c}} {{ sample.output_json.x }} {{item.a.b}}", scope)
        == 'deep 3 [1,{"c":"deep"}]'
    )
    with pytest.raises(TemplateError, match="no 'nope'"):
        render("{{item.nope}}", scope)
    c = check(
        {
            "type": "string_check",
            "name": "s",
            "input": "{{sample.output_text}}",
            "reference": "{{item.missing}}",
            "operation": "eq",
        },
        0,
    )
    r = grade(c, "x", {})
    assert r.error is not None and "missing" in r.error and not r.passed


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ('{"label": "Correct"}', "correct"),
        ("Label: wrong", "wrong"),
        ("correct.", "correct"),
        ("After thinking, the answer is wrong", "wrong"),
        ("**incorrect**", "incorrect"),
        ("correct or wrong, hard to say", None),
        ("I cannot decide.", None),
        ("", None),
    ],
)
def test_label_parsing(answer: str, label: str | None) -> None:
    assert parse_label(answer, ["correct", "wrong", "incorrect"]) == label


@pytest.mark.parametrize(
    ("answer", "score"),
    [
        ('{"score": 0.7}', 0.7),
        ("Score: 4", 4.0),
        ("I'd give it 3", 3.0),
        ("3 or 4", None),
        ("no idea", None),
        ('{"score": "high"}', None),
    ],
)
def test_score_parsing(answer: str, score: float | None) -> None:
    assert parse_score(answer) == score


def test_judges_through_a_chat_callable_and_garbage_is_errored() -> None:
    asked: list[Any] = []

    def judge_with(answer: str) -> Grader:
        async def chat(
            model: str, messages: list[dict[str, str]], params: dict[str, Any]
        ) -> tuple[str, Call]:
            asked.append((model, messages, params))
            return answer, Call(model, 30, len(answer), 0.25)

        return Grader(chat=chat)

    label = check(
        {
            "type": "label_model",
            "name": "j",
            "model": "judge",
            "input": [{"role": "user", "content": "Is {{sample.output_text}} {{item.x}}?"}],
            "labels": ["yes", "no"],
            "passing_labels": ["yes"],
        },
        0,
    )
    yes = grade(label, "4", {"x": "even"}, judge_with("Yes"))
    assert yes.passed
    # The judge's call is in the result's sample: its model, tokens and cost.
    sample = yes.as_dict()["sample"]
    assert (sample["model"], sample["usage"], sample["cost"], sample["label"]) == (
        "judge",
        {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33, "cached_tokens": 0},
        0.25,
        "yes",
    )
    model, messages, _ = asked[-1]
    assert model == "judge" and messages[-1]["content"] == "Is 4 even?"
    assert "yes, no" in messages[0]["content"]
    r = grade(label, "4", {"x": "even"}, judge_with("banana"))
    assert r.error is not None and not r.passed and r.sample["output"][0]["content"] == "banana"
    assert r.as_dict()["sample"]["usage"]["completion_tokens"] == 6  # an answer, paid for
    score = check(
        {
            "type": "score_model",
            "name": "s",
            "model": "judge",
            "range": [1, 5],
            "pass_threshold": 4,
            "sampling_params": {"temperature": 0, "seed": 3},
            "input": [{"role": "user", "content": "{{sample.output_text}}"}],
        },
        0,
    )
    assert grade(score, "x", {}, judge_with("Score: 4")).passed
    assert not grade(score, "x", {}, judge_with("Score: 2")).passed
    out_of_range = grade(score, "x", {}, judge_with("Score: 9"))
    assert out_of_range.error is not None and "no score in [1, 5]" in out_of_range.error
    assert asked[-1][2] == {"temperature": 0.0, "seed": 3}


def test_cosine_uses_the_embedding_callable() -> None:
    async def embed(model: str, texts: list[str]) -> tuple[list[list[float]], Call]:
        assert model == "emb"
        return [[1.0, 0.0] if t == "a" else [1.0, 1.0] for t in texts], Call(model, 2)

    c = check(
        {
            "type": "text_similarity",
            "name": "cos",
            "input": "{{sample.output_text}}",
            "reference": "{{item.r}}",
            "evaluation_metric": "cosine",
            "pass_threshold": 0.8,
            "model": "emb",
        },
        0,
    )
    r = grade(c, "a", {"r": "b"}, Grader(embed=embed))
    assert r.score == pytest.approx(2**-0.5) and not r.passed
    assert r.as_dict()["sample"] == {
        "model": "emb",
        "cost": None,
        "usage": {
            "prompt_tokens": 2,
            "completion_tokens": 0,
            "total_tokens": 2,
            "cached_tokens": 0,
        },
    }


@pytest.mark.parametrize(
    ("criterion", "param"),
    [
        ({"type": "python", "name": "p", "source": "x"}, "testing_criteria[0].type"),
        (
            {"type": "string_check", "name": "s", "input": "", "reference": ""},
            "testing_criteria[0].operation",
        ),
        (
            {
                "type": "text_similarity",
                "name": "t",
                "input": "",
                "reference": "",
                "evaluation_metric": "bleu",
            },
            "testing_criteria[0].pass_threshold",
        ),
        (
            {
                "type": "label_model",
                "name": "l",
                "model": "m",
                "input": [{"role": "user", "content": "x"}],
                "labels": ["a"],
                "passing_labels": ["b"],
            },
            "testing_criteria[0].passing_labels",
        ),
        (
            {
                "type": "score_model",
                "name": "s",
                "model": "m",
                "range": [5, 1],
                "input": [{"role": "user", "content": "x"}],
            },
            "testing_criteria[0].range",
        ),
        (
            {
                "type": "label_model",
                "name": "l",
                "model": "m",
                "labels": ["a"],
                "passing_labels": ["a"],
                "input": [{"role": "user", "content": {"type": "input_image", "image_url": "x"}}],
            },
            "testing_criteria[0].input[0].content",
        ),
        ({"type": "multi", "name": "m"}, "testing_criteria[0].type"),
    ],
)
def test_bad_criteria_name_the_field(criterion: dict[str, Any], param: str) -> None:
    with pytest.raises(CriterionInvalid) as exc:
        check(criterion, 0)
    assert exc.value.param == param
