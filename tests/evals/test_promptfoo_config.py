"""promptfoo configs read into cumulo evals: prompts, providers, tests and assertions mapped
onto testing criteria that the Evals API accepts, and everything outside the subset refused
naming the file, the key path and the test's index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from cumulo.evals.graders import check
from cumulo.evals.promptfoo import ConfigInvalid, load, model_of


def write(tmp_path: Path, cfg: dict[str, Any], name: str = "promptfooconfig.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


BASE: dict[str, Any] = {
    "prompts": ["Capital of {{country}}?"],
    "providers": ["openai:chat:model-a"],
    "tests": [{"vars": {"country": "France"}, "assert": [{"type": "icontains", "value": "Paris"}]}],
}


@pytest.mark.parametrize(
    "pid, model",
    [
        ("openai:chat:model-a", "model-a"),
        ("openai:model-a", "model-a"),
        ("model-a", "model-a"),
        ("openai:chat:org/model:v1", "org/model:v1"),
        ("openai:embedding:embed", "embed"),
    ],
)
def test_provider_ids_name_cumulo_models(pid: str, model: str) -> None:
    assert model_of(pid, "providers[0].id") == model


@pytest.mark.parametrize(
    "pid",
    [
        "anthropic:messages:claude",
        "openai:completion:m",
        "openai:responses:m",
        "file://provider.py",
        "exec:./x.sh",
    ],
)
def test_other_providers_are_refused(tmp_path: Path, pid: str) -> None:
    with pytest.raises(ConfigInvalid, match=r"providers\[1\]\.id: provider .* is not supported"):
        load(write(tmp_path, {**BASE, "providers": ["model-a", pid]}))


def test_a_full_config_maps_onto_criteria_the_api_accepts(tmp_path: Path) -> None:
    (tmp_path / "chat.json").write_text(
        '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "{{q}}"}]'
    )
    (tmp_path / "tests.csv").write_text("q,answer\nWhat is 2 + 2?,4\nWhat is 3 + 3?,6\n")
    cfg = {
        "description": "sums",
        "prompts": ["file://chat.json", "Answer: {{ q }}"],
        "providers": [
            {
                "id": "openai:chat:model-a",
                "label": "a",
                "config": {
                    "temperature": 0.5,
                    "max_tokens": 32,
                    "apiBaseUrl": "http://127.0.0.1:8080/v1",
                },
            },
            {"openai:model-b": {"config": {"seed": 7}}},
        ],
        "defaultTest": {
            "options": {
                "provider": {
                    "text": "openai:chat:judge",
                    "embedding": {"id": "openai:embedding:embed"},
                }
            },
            "assert": [
                {"type": "equals", "value": "{{answer}}"},
                {"type": "similar", "value": "{{answer}}"},
                {"type": "llm-rubric", "value": "says {{answer}}", "threshold": 0.8},
                {"type": "not-regex", "value": "[a-z]"},
                {"type": "latency", "threshold": 5000},
                {"type": "is-json"},
            ],
        },
        "tests": "file://tests.csv",
    }
    plan = load(write(tmp_path, cfg))
    assert plan.name == "sums"
    assert [(r.label, r.model) for r in plan.runs] == [
        ("a [chat.json]", "model-a"),
        ("a [prompt 2]", "model-a"),
        ("model-b [chat.json]", "model-b"),
        ("model-b [prompt 2]", "model-b"),
    ]
    assert plan.runs[0].template == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "{{item.vars.q}}"},
    ]
    assert plan.runs[1].template == [{"role": "user", "content": "Answer: {{item.vars.q}}"}]
    assert plan.runs[0].sampling == {"temperature": 0.5, "max_completion_tokens": 32}
    assert plan.runs[2].sampling == {"temperature": 0, "max_completion_tokens": None, "seed": 7}
    checked = [check(c, i) for i, c in enumerate(plan.criteria)]  # as POST /v1/evals does
    by = {c["name"]: c for c in checked}
    assert list(by) == ["equals", "similar", "llm-rubric", "not-regex", "latency", "is-json"]
    assert by["similar"]["pass_threshold"] == 0.75 and by["similar"]["model"] == "embed"
    assert by["llm-rubric"]["model"] == "judge" and by["llm-rubric"]["pass_threshold"] == 0.8
    assert by["not-regex"]["negate"] is True and by["not-regex"]["operation"] == "regex"
    assert by["latency"] == {
        "type": "sample_metric",
        "name": "latency",
        "metric": "latency_ms",
        "max": 5000.0,
        "only_items_with": "expected.a4",
    }
    assert plan.items[1] == {
        "vars": {"q": "What is 3 + 3?", "answer": "6"},
        "expected": {"a0": "6", "a1": "6", "a2": "says 6", "a3": "[a-z]", "a4": True, "a5": True},
    }


def test_assertions_of_some_tests_grade_only_those(tmp_path: Path) -> None:
    cfg = {
        **BASE,
        "tests": [
            {"vars": {"country": "France"}, "assert": [{"type": "contains", "value": "Paris"}]},
            {
                "vars": {"country": "Japan"},
                "assert": [
                    {"type": "starts-with", "value": "Tokyo"},
                    {"type": "contains", "value": "Tokyo"},
                ],
            },
            {
                "vars": {"country": "Peru"},
                "assert": [
                    {"type": "contains", "value": "Lima"},
                    {"type": "contains", "value": "Peru"},
                ],
            },
        ],
    }
    plan = load(write(tmp_path, cfg))
    assert [c["name"] for c in plan.criteria] == ["contains", "starts-with", "contains-3"]
    assert [it["expected"] for it in plan.items] == [
        {"a0": "Paris"},
        {"a1": "Tokyo", "a0": "Tokyo"},
        {"a0": "Lima", "a2": "Peru"},
    ]


def test_judge_and_embedder_from_the_command_line(tmp_path: Path) -> None:
    cfg = {
        **BASE,
        "tests": [
            {
                "vars": {"country": "France"},
                "assert": [
                    {"type": "llm-rubric", "value": "names Paris"},
                    {"type": "not-similar", "value": "x"},
                ],
            }
        ],
    }
    with pytest.raises(ConfigInvalid, match=r"tests\[0\]\.assert\[0\]: llm-rubric needs a judge"):
        load(write(tmp_path, cfg))
    with pytest.raises(ConfigInvalid, match=r"tests\[0\]\.assert\[1\]: similar needs an embed"):
        load(write(tmp_path, cfg), judge="judge")
    plan = load(write(tmp_path, cfg), judge="judge", embedding_model="embed")
    assert [c["model"] for c in plan.criteria] == ["judge", "embed"]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {
                "tests": [
                    {"vars": {"country": "x"}},
                    {"vars": {"country": "y"}, "assert": [{"type": "javascript", "value": "1"}]},
                ]
            },
            r"tests\[1\]\.assert\[0\]\.type: assertion type 'javascript' is not supported",
        ),
        (
            {"defaultTest": {"assert": [{"type": "not-llm-rubric", "value": "x"}]}},
            r"defaultTest\.assert\[0\]\.type: assertion type 'not-llm-rubric' is not supported",
        ),
        (
            {"tests": [{"vars": {"country": "x"}, "assert": [{"type": "is-json", "value": "{}"}]}]},
            r"tests\[0\]\.assert\[0\]\.value: is-json with a JSON schema is not supported",
        ),
        (
            {"tests": [{"vars": {"country": "x"}, "assert": [{"type": "latency"}]}]},
            r"tests\[0\]\.assert\[0\]\.threshold: latency needs a threshold",
        ),
        (
            {
                "tests": [
                    {"vars": {"country": "x"}, "assert": [{"type": "equals", "value": "{{nope}}"}]}
                ]
            },
            r"tests\[0\]\.assert\[0\]\.value: \{\{nope\}\}: no such var",
        ),
        ({"tests": [{"vars": {"country": ["x", "y"]}}]}, r"tests\[0\]\.vars\.country: a list"),
        (
            {"tests": [{"vars": {"country": "x"}, "threshold": 0.5}]},
            r"tests\[0\]\.threshold: not sup",
        ),
        ({"prompts": ["{{ country | upper }}"]}, r"prompts\[0\]: only \{\{var\}\} templating"),
        ({"prompts": ["{% if x %}y{% endif %}"]}, r"prompts\[0\]: only \{\{var\}\} templating"),
        (
            {"providers": [{"id": "m", "config": {"functions": []}}]},
            r"providers\[0\]\.config\.functions: not supported",
        ),
        ({"tests": [{"vars": {"country": "x"}}]}, r"tests: no assertions"),
    ],
)
def test_outside_the_subset_names_where(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = write(tmp_path, {**BASE, **change})
    with pytest.raises(ConfigInvalid, match=message) as caught:
        load(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_prompt_files_split_on_dashes_and_yaml_tests(tmp_path: Path) -> None:
    (tmp_path / "prompts.txt").write_text("One {{country}}\n---\nTwo {{country}}\n")
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(BASE["tests"]))
    plan = load(
        write(tmp_path, {**BASE, "prompts": "file://prompts.txt", "tests": "file://tests.yaml"})
    )
    assert [r.template[0]["content"] for r in plan.runs] == [
        "One {{item.vars.country}}",
        "Two {{item.vars.country}}",
    ]
    (tmp_path / "bad.jsonl").write_text('{"vars": \n')
    with pytest.raises(ConfigInvalid, match=r"tests: file://bad.jsonl: "):
        load(write(tmp_path, {**BASE, "tests": "file://bad.jsonl"}))
    with pytest.raises(ConfigInvalid, match=r"prompts\[0\]: file://gone.txt: no such file"):
        load(write(tmp_path, {**BASE, "prompts": ["file://gone.txt"]}))


def test_the_shipped_example_loads() -> None:
    from cumulo.cli.evals import EXAMPLES

    plan = load(EXAMPLES / "promptfooconfig.yaml")
    assert [r.model for r in plan.runs] == ["demo-tiny", "demo-tiny"]
    for i, c in enumerate(plan.criteria):
        check(c, i)
