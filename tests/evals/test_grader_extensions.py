"""cumulo's extensions of OpenAI's testing criteria (what promptfoo's assertions map onto):
string_check's starts_with, regex and is_json, sample_metric on latency and cost, negate,
and only_items_with."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cumulo.evals.graders import CriterionInvalid, Grader, applies, check
from cumulo.evals.templates import sample_scope


def string(op: str, reference: str = "{{item.ref}}", **extra: Any) -> dict[str, Any]:
    c = {
        "type": "string_check",
        "name": op,
        "input": "{{sample.output_text}}",
        "reference": reference,
        "operation": op,
        **extra,
    }
    if op == "is_json":
        c.pop("reference")
    return check(c, 0)


def grade(c: dict[str, Any], output: str, item: dict[str, Any] | None = None, **facts: Any) -> Any:
    scope = {"item": item or {}, "sample": {**sample_scope(output), **facts}}
    return asyncio.run(Grader().grade(c, scope))


@pytest.mark.parametrize(
    "op, output, ref, passed",
    [
        ("starts_with", "Paris is the capital", "Paris", True),
        ("starts_with", "The capital is Paris", "Paris", False),
        ("regex", "order 1234 shipped", r"\d{4}", True),
        ("regex", "order shipped", r"\d{4}", False),
        ("regex", "ABC", "(?i)^abc$", True),
    ],
)
def test_string_extensions(op: str, output: str, ref: str, passed: bool) -> None:
    r = grade(string(op), output, {"ref": ref})
    assert (r.passed, r.error) == (passed, None)
    negated = grade(string(op, negate=True), output, {"ref": ref})
    assert (negated.passed, negated.error) == (not passed, None)


@pytest.mark.parametrize(
    "output, passed",
    [
        ('{"a": 1}', True),
        ("[1, 2]", True),
        ("42", True),
        ("not json", False),
        ("{'a': 1}", False),
    ],
)
def test_is_json(output: str, passed: bool) -> None:
    assert grade(string("is_json"), output).passed is passed


def test_a_bad_regex_is_refused_when_literal_and_errored_when_templated() -> None:
    with pytest.raises(CriterionInvalid) as caught:
        string("regex", "(unclosed")
    assert caught.value.param == "testing_criteria[0].reference"
    r = grade(string("regex"), "x", {"ref": "(unclosed"})
    assert not r.passed and "not a regular expression" in (r.error or "")


def test_sample_metric_latency_and_cost() -> None:
    lat = check({"type": "sample_metric", "name": "fast", "metric": "latency_ms", "max": 500}, 0)
    assert grade(lat, "x", latency_ms=120.0).passed
    assert not grade(lat, "x", latency_ms=800.0).passed
    assert grade({**lat, "negate": True}, "x", latency_ms=800.0).passed
    cost = check({"type": "sample_metric", "name": "cheap", "metric": "cost", "max": 0.01}, 0)
    r = grade(cost, "x", cost=0.014)
    assert (r.passed, r.score) == (False, 0.014)
    unknown = grade(cost, "x", cost=None)  # a deployment without a price
    assert not unknown.passed and unknown.error == "the sample has no cost"


@pytest.mark.parametrize(
    "criterion, param",
    [
        ({"type": "sample_metric", "name": "m", "metric": "tokens", "max": 1}, "metric"),
        ({"type": "sample_metric", "name": "m", "metric": "cost", "max": -1}, "max"),
        ({"type": "sample_metric", "name": "m", "metric": "cost"}, "max"),
        (
            {
                "type": "string_check",
                "name": "s",
                "input": "x",
                "reference": "y",
                "operation": "is_json",
            },
            "reference",
        ),
        (
            {
                "type": "string_check",
                "name": "s",
                "input": "x",
                "reference": "y",
                "operation": "eq",
                "negate": "yes",
            },
            "negate",
        ),
        (
            {
                "type": "label_model",
                "name": "j",
                "model": "m",
                "labels": ["a"],
                "passing_labels": ["a"],
                "input": [{"role": "user", "content": "x"}],
                "negate": True,
            },
            "negate",
        ),
        (
            {
                "type": "string_check",
                "name": "s",
                "input": "x",
                "reference": "y",
                "operation": "eq",
                "only_items_with": "a..b",
            },
            "only_items_with",
        ),
    ],
)
def test_bad_extensions_name_the_field(criterion: dict[str, Any], param: str) -> None:
    with pytest.raises(CriterionInvalid) as caught:
        check(criterion, 3)
    assert caught.value.param == f"testing_criteria[3].{param}"


def test_only_items_with_picks_the_items_holding_the_path() -> None:
    c = string("eq", only_items_with="expected.a1")
    assert c["only_items_with"] == "expected.a1"
    assert applies(c, {"expected": {"a1": "x"}})
    assert not applies(c, {"expected": {"a2": "x"}})
    assert not applies(c, {"expected": "a1"})
    assert applies(string("eq"), {})
