"""Evals end to end: the official openai SDK's `client.evals` against `cumulo serve` in
front of fake models with known answers (right on 80% and 50% of items), judges (one that
answers garbage), pre-produced samples, the comparison and its report, cancellation,
a server killed mid-run, and tenant isolation."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from cumulo.cli.evals import EXAMPLES
from support import CUMULO_BIN, CumuloServer, clean_env, start_cumulo
from support.batches import new_key
from support.evals import (
    ITEM_SCHEMA,
    TEMPLATE,
    QuizUpstream,
    eval_config,
    quiz_answer,
    quiz_items,
    wait_run,
)

# The SDK marks client.evals deprecated (OpenAI retired its hosted product); cumulo serves it.
pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")

UPSTREAM_KEY = "sk-fake-upstream-" + "0" * 20


@pytest.fixture(scope="module")
def quiz() -> Iterator[QuizUpstream]:
    with QuizUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(quiz: QuizUpstream, cumulo_factory: Callable[..., CumuloServer]) -> CumuloServer:
    return cumulo_factory(eval_config(quiz))


def client(server: CumuloServer, token: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0, timeout=60)


@pytest.fixture
def token(server: CumuloServer) -> str:
    return new_key(server, "evals")[1]


@pytest.fixture
def http(server: CumuloServer, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as c:
        yield c


EXACT = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
FUZZY = {
    "type": "text_similarity",
    "name": "fuzzy",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 1.0,
}


def completions(model: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "completions",
        "model": model,
        "input_messages": {"type": "template", "template": TEMPLATE},
        "sampling_params": {"temperature": 0, "max_completion_tokens": 16},
        "source": {"type": "file_content", "content": items},
    }


def test_sdk_two_models_exact_counts_compare_and_report(
    server: CumuloServer, token: str, http: httpx.Client
) -> None:
    with client(server, token) as c:
        ev = c.evals.create(
            name="arithmetic",
            data_source_config={
                "type": "custom",
                "item_schema": ITEM_SCHEMA,
                "include_sample_schema": True,
            },
            testing_criteria=[EXACT, FUZZY],  # type: ignore[list-item]
        )
        assert ev.id.startswith("eval_") and ev.data_source_config.type == "custom"
        runs = {
            m: c.evals.runs.create(ev.id, name=m, data_source=completions(m, quiz_items(20)))
            for m in ("quiz-80", "quiz-50")
        }  # type: ignore[arg-type]
        done = {m: wait_run(http, ev.id, r.id) for m, r in runs.items()}
        for model, passed in (("quiz-80", 16), ("quiz-50", 10)):
            run = c.evals.runs.retrieve(runs[model].id, eval_id=ev.id)
            assert run.status == "completed", done[model]
            assert run.result_counts.model_dump() == {
                "total": 20,
                "passed": passed,
                "failed": 20 - passed,
                "errored": 0,
            }
            per = {
                r.testing_criteria: (r.passed, r.failed)
                for r in run.per_testing_criteria_results or []
            }
            assert per == {"exact": (passed, 20 - passed), "fuzzy": (passed, 20 - passed)}
            usage = run.per_model_usage or []
            assert [(u.model_name, u.invocation_count, u.total_tokens) for u in usage] == [
                (model, 20, 240)
            ]
            items = c.evals.runs.output_items.list(runs[model].id, eval_id=ev.id, limit=100)
            got = list(items)
            assert len(got) == 20
            for it in got:
                i = it.datasource_item_id
                right = i % 10 < (8 if model == "quiz-80" else 5)
                assert it.status == ("pass" if right else "fail")
                assert it.sample.output[0].content == str(3 * i if right else 3 * i + 1)
                assert it.sample.input[1].content == f"What is {i} + {2 * i}? (#{i})"
                assert it.sample.usage.total_tokens == 12
                extra = it.sample.model_extra or {}
                assert extra["latency_ms"] > 0 and 0 < extra["ttft_ms"] <= extra["latency_ms"]
                # $1000 / M input tokens, $2000 / M output: 10 and 2 tokens
                assert extra["cost"] == pytest.approx(0.014)
                assert [(r.name, r.passed, r.score) for r in it.results] == [
                    ("exact", right, 1.0 if right else 0.0),
                    ("fuzzy", right, pytest.approx(1.0) if right else it.results[1].score),
                ]
            one = c.evals.runs.output_items.retrieve(
                got[3].id, eval_id=ev.id, run_id=runs[model].id
            )
            assert one.datasource_item == {"question": "What is 3 + 6? (#3)", "answer": "9"}

    a, b = runs["quiz-80"].id, runs["quiz-50"].id
    for run_id in (a, b):
        ledger = server.sql("SELECT action FROM ledger WHERE target = ? ORDER BY seq", (run_id,))
        assert [x for (x,) in ledger] == ["eval.run.created", "eval.finished"]
        deadline = time.monotonic() + 30
        while (
            rows := server.sql(
                "SELECT origin, COUNT(*) FROM usage WHERE job_id = ? GROUP BY origin", (run_id,)
            )
        ) != [("eval", 20)]:
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
    cmp = http.get(f"/v1/evals/{ev.id}/compare", params={"runs": f"{a},{b}"}).json()
    m80, m50 = cmp["models"]
    assert (m80["model"], m80["overall"]["passed"], m80["overall"]["graded"]) == ("quiz-80", 16, 20)
    assert m80["overall"]["pass_rate"] == 0.8 and m50["overall"]["pass_rate"] == 0.5
    # Wilson 95% interval of 16/20 and 10/20: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    assert m80["overall"]["ci95"] == pytest.approx([0.583983, 0.919342], abs=2e-6)
    assert m50["criteria"]["exact"]["ci95"] == pytest.approx([0.299298, 0.700702], abs=2e-6)
    assert m80["criteria"]["exact"]["mean_score"] == 0.8
    assert m80["cost_per_1000_items"] == pytest.approx(14.0)
    assert m80["tokens"]["total_tokens"] == 240 and m80["errors"] == 0
    assert m80["latency_ms"]["p50"] > 0 and m80["ttft_ms"]["p95"] > 0
    # items 5, 6, 7, 15, 16, 17: quiz-80 right, quiz-50 wrong; never the reverse
    [pair] = cmp["pairs"]
    assert (pair["a_only_passed"], pair["b_only_passed"]) == (6, 0)
    assert pair["p_value"] == pytest.approx(2 * 0.5**6) and pair["significant"]
    assert [d["datasource_item_id"] for d in cmp["disagreements"]] == [5, 6, 7, 15, 16, 17]
    # Same cost, better quality: quiz-50 is on the frontier only if it was faster.
    faster = m50["latency_ms"]["p50"] < m80["latency_ms"]["p50"]
    assert cmp["non_dominated"] == ([a, b] if faster else [a])

    page = http.get(f"/v1/evals/{ev.id}/report", params={"runs": f"{a},{b}"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert text.count("<svg") == 3 and "quiz-80" in text and "What is 5 + 10? (#5)" in text
    assert "<script" not in text and "<link" not in text and 'src="http' not in text


def test_judges_label_score_and_garbage(
    server: CumuloServer, token: str, http: httpx.Client
) -> None:
    judge_input = [
        {"role": "user", "content": "answer: {{sample.output_text}}, expected: {{item.answer}}"}
    ]
    with client(server, token) as c:
        ev = c.evals.create(
            data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
            testing_criteria=[  # type: ignore[list-item]
                {
                    "type": "label_model",
                    "name": "label",
                    "model": "judge-label",
                    "input": judge_input,
                    "labels": ["correct", "wrong"],
                    "passing_labels": ["correct"],
                },
                {
                    "type": "score_model",
                    "name": "score",
                    "model": "judge-score",
                    "input": judge_input,
                    "range": [0, 1],
                    "pass_threshold": 0.5,
                },
            ],
        )
        run = c.evals.runs.create(ev.id, data_source=completions("quiz-80", quiz_items(10)))  # type: ignore[arg-type]
        done = wait_run(http, ev.id, run.id)
        assert done["result_counts"] == {"total": 10, "passed": 8, "failed": 2, "errored": 0}
        items = list(c.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100))
        scores = sorted({it.results[1].score for it in items})
        assert scores == [0.2, 0.9]
        # The judges' calls: in each result's sample and in per_model_usage, under the judge
        # model (judge-label has a price: $1000 / M input tokens, $2000 / M output).
        judged = items[0].results[0].sample or {}
        assert (judged["model"], judged["usage"]["total_tokens"]) == ("judge-label", 12)
        assert judged["cost"] == pytest.approx(0.014)
        per = {u["model_name"]: u for u in done["per_model_usage"]}
        assert {m: (u["invocation_count"], u["total_tokens"]) for m, u in per.items()} == {
            "quiz-80": (10, 120), "judge-label": (10, 120), "judge-score": (10, 120)}
        assert per["judge-label"]["cost"] == pytest.approx(0.14)
        assert per["judge-score"]["cost"] is None  # no price
        # ... and in usage (which budgets count), as the run's owner, in the run's job
        deadline = time.monotonic() + 30
        while len(rows := server.sql(
                "SELECT model, key_id, origin, COUNT(*), SUM(prompt_tokens), SUM(cost_usd) "
                "FROM usage WHERE job_id = ? GROUP BY model, key_id, origin ORDER BY model",
                (run.id,))) < 3 or sum(r[3] for r in rows) < 30:
            assert time.monotonic() < deadline, rows
            time.sleep(0.1)
        assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
            ("judge-label", "eval", 10, 100), ("judge-score", "eval", 10, 100),
            ("quiz-80", "eval", 10, 100)]
        assert len({r[1] for r in rows}) == 1  # one caller: the run's key
        assert rows[0][5] == pytest.approx(0.14) and rows[2][5] == pytest.approx(0.14)

        garbage = c.evals.create(
            data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
            testing_criteria=[  # type: ignore[list-item]
                EXACT,
                {
                    "type": "label_model",
                    "name": "garbage",
                    "model": "judge-garbage",
                    "input": judge_input,
                    "labels": ["correct", "wrong"],
                    "passing_labels": ["correct"],
                },
            ],
        )
        run = c.evals.runs.create(garbage.id, data_source=completions("quiz-80", quiz_items(10)))  # type: ignore[arg-type]
        done = wait_run(http, garbage.id, run.id)
        assert done["status"] == "completed"
        assert done["result_counts"] == {"total": 10, "passed": 0, "failed": 0, "errored": 10}
        assert {
            r["testing_criteria"]: (r["passed"], r["failed"])
            for r in done["per_testing_criteria_results"]
        } == {"exact": (8, 2), "garbage": (0, 0)}
        it = next(iter(c.evals.runs.output_items.list(run.id, eval_id=garbage.id)))
        assert it.status == "error"
        assert "names none of the labels" in (it.results[1].model_extra or {})["error"]
        # an answer that could not be read was still a call, and is counted
        assert {u["model_name"]: u["invocation_count"] for u in done["per_model_usage"]} == {
            "quiz-80": 10, "judge-garbage": 10}


def test_jsonl_samples_graded_without_generation(
    server: CumuloServer, token: str, http: httpx.Client, quiz: QuizUpstream
) -> None:
    rows = [
        {
            "item": {"question": f"jsonl-only q{i}", "answer": "Paris"},
            "sample": {"output_text": "Paris" if i < 3 else "paris, France"},
        }
        for i in range(5)
    ]
    with client(server, token) as c:
        ev = c.evals.create(
            data_source_config={
                "type": "custom",
                "item_schema": ITEM_SCHEMA,
                "include_sample_schema": True,
            },
            testing_criteria=[  # type: ignore[list-item]
                {**EXACT, "name": "eq"},
                {
                    "type": "string_check",
                    "name": "ilike",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}",
                    "operation": "ilike",
                },
                {
                    "type": "text_similarity",
                    "name": "rouge",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}",
                    "evaluation_metric": "rouge_l",
                    "pass_threshold": 0.6,
                },
                {
                    "type": "text_similarity",
                    "name": "cosine",
                    "input": "{{sample.output_text}}",
                    "reference": "{{item.answer}}",
                    "evaluation_metric": "cosine",
                    "pass_threshold": 0.9999,
                    "model": "embed",
                },
            ],
        )
        run = c.evals.runs.create(
            ev.id,
            data_source={  # type: ignore[arg-type]
                "type": "jsonl",
                "source": {"type": "file_content", "content": rows},
            },
        )
        done = wait_run(http, ev.id, run.id)
    assert done["result_counts"] == {"total": 5, "passed": 3, "failed": 2, "errored": 0}
    assert {r["testing_criteria"]: r["passed"] for r in done["per_testing_criteria_results"]} == {
        "eq": 3,
        "ilike": 5,
        "rouge": 5,  # "paris, France": rouge-L F = 2/3 with "Paris"
        "cosine": 3,
    }  # the embedding model's vectors (through the gateway) of equal texts
    assert quiz.answered("jsonl-only") == 0


def test_bad_input_is_a_400_naming_the_field(
    server: CumuloServer, token: str, http: httpx.Client
) -> None:
    def create(criteria: list[Any], schema: Any = ITEM_SCHEMA) -> httpx.Response:
        return http.post(
            "/v1/evals",
            json={
                "data_source_config": {"type": "custom", "item_schema": schema},
                "testing_criteria": criteria,
            },
        )

    r = create([{"type": "python", "name": "p", "source": "def grade(s, i): return 1"}])
    assert r.status_code == 400 and "arbitrary code" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "testing_criteria[0].type"
    r = create([{**EXACT, "operation": "glob"}])
    assert r.status_code == 400 and r.json()["error"]["param"] == "testing_criteria[0].operation"
    # cumulo's extensions (promptfoo's assertions map onto them) are checked as strictly
    r = create([EXACT, {"type": "sample_metric", "name": "m", "metric": "tokens", "max": 1}])
    assert r.status_code == 400 and r.json()["error"]["param"] == "testing_criteria[1].metric"
    r = create([{**EXACT, "operation": "regex", "reference": "(unclosed"}])
    assert r.status_code == 400 and r.json()["error"]["param"] == "testing_criteria[0].reference"
    r = create([{**EXACT, "only_items_with": "../x"}])
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "testing_criteria[0].only_items_with"
    r = create([EXACT], schema={"type": "nonsense"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "data_source_config.item_schema"
    ev = create([EXACT]).json()
    items = quiz_items(3)
    items[2] = {"item": {"question": "q", "answer": 7}}
    r = http.post(f"/v1/evals/{ev['id']}/runs", json={"data_source": completions("quiz-80", items)})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "data_source.source.content[2].item.answer"
    assert "item 2" in r.json()["error"]["message"]
    r = http.post(
        f"/v1/evals/{ev['id']}/runs",
        json={
            "data_source": {
                "type": "jsonl",
                "source": {"type": "file_content", "content": quiz_items(2)},
            }
        },
    )
    assert r.status_code == 400 and "sample" in r.json()["error"]["message"]


def test_cancel_and_tenant_isolation(server: CumuloServer, http: httpx.Client) -> None:
    with server.admin() as admin:
        t = admin.post("/admin/tenants", json={"name": "evals-other"})
        k = admin.post("/admin/keys", json={"name": "other", "tenant_id": t.json()["id"]})
    other = httpx.Client(
        base_url=server.url, timeout=30, headers={"Authorization": f"Bearer {k.json()['key']}"}
    )
    ev = http.post(
        "/v1/evals",
        json={
            "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
            "testing_criteria": [EXACT],
        },
    ).json()
    run = http.post(
        f"/v1/evals/{ev['id']}/runs",
        json={"data_source": completions("quiz-slow", quiz_items(200))},
    ).json()
    wait_run(http, ev["id"], run["id"], done_at_least=3)
    with other:
        for path in (
            f"/v1/evals/{ev['id']}",
            f"/v1/evals/{ev['id']}/runs",
            f"/v1/evals/{ev['id']}/runs/{run['id']}",
            f"/v1/evals/{ev['id']}/runs/{run['id']}/output_items",
            f"/v1/evals/{ev['id']}/report?runs={run['id']}",
            f"/v1/evals/{ev['id']}/compare?runs={run['id']}",
        ):
            r = other.get(path)
            assert r.status_code == 404, (path, r.text)
        assert other.post(f"/v1/evals/{ev['id']}/runs/{run['id']}").status_code == 404
        assert other.delete(f"/v1/evals/{ev['id']}").status_code == 404
        assert other.get("/v1/evals").json()["data"] == []
    r = http.post(f"/v1/evals/{ev['id']}/runs/{run['id']}")
    assert r.status_code == 200, r.text
    done = wait_run(http, ev["id"], run["id"])
    assert done["status"] == "canceled"
    counts = done["result_counts"]
    assert 3 <= counts["passed"] < 200 and counts["failed"] == counts["errored"] == 0
    listed = http.get(
        f"/v1/evals/{ev['id']}/runs/{run['id']}/output_items", params={"limit": 100}
    ).json()["data"]
    assert len(listed) == min(counts["passed"], 100)


def test_sigkill_mid_run_then_restart_grades_every_item_once(
    quiz: QuizUpstream, tmp_path: Path
) -> None:
    config = eval_config(quiz, lease_s=2)
    first = start_cumulo(config, tmp_path, FAKE_UPSTREAM_KEY=UPSTREAM_KEY)
    try:
        _, token = new_key(first, "killed")
        with httpx.Client(
            base_url=first.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as c:
            ev = c.post(
                "/v1/evals",
                json={
                    "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
                    "testing_criteria": [EXACT],
                },
            ).json()
            run = c.post(
                f"/v1/evals/{ev['id']}/runs",
                json={"data_source": completions("quiz-slow", quiz_items(60, tag="killed "))},
            ).json()
            wait_run(c, ev["id"], run["id"], done_at_least=10)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(10)
    finally:
        first.stop()
    second = start_cumulo(config, tmp_path, FAKE_UPSTREAM_KEY=UPSTREAM_KEY)
    try:
        with httpx.Client(
            base_url=second.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as c:
            done = wait_run(c, ev["id"], run["id"])
            items = c.get(
                f"/v1/evals/{ev['id']}/runs/{run['id']}/output_items", params={"limit": 100}
            ).json()["data"]
    finally:
        second.stop()
    assert done["status"] == "completed"
    assert done["result_counts"] == {"total": 60, "passed": 60, "failed": 0, "errored": 0}
    assert sorted(i["datasource_item_id"] for i in items) == list(range(60))
    assert quiz.answered("killed ") >= 60


def test_cli_eval_run_on_the_shipped_arithmetic_example(
    server: CumuloServer, token: str, tmp_path: Path
) -> None:
    env = clean_env(CUMULO_URL=server.url, CUMULO_API_KEY=token)
    proc = subprocess.run(
        [
            str(CUMULO_BIN),
            "eval",
            "run",
            "arithmetic",
            "--model",
            "quiz-80",
            "--model",
            "quiz-50",
            "--grader",
            "exact",
            "--grader",
            "fuzzy_match:0.99",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (EXAMPLES / "arithmetic.jsonl").read_text().splitlines()]
    firsts = [int(r["input"].split()[2]) for r in rows]  # "What is A + B? ..."
    right = {80: sum(a % 10 < 8 for a in firsts), 50: sum(a % 10 < 5 for a in firsts)}
    lines: dict[str, list[str]] = {}
    for line in proc.stdout.splitlines():
        if line.strip():
            lines.setdefault(line.split()[0], line.split())  # the table's row, not the tests'
    assert lines["quiz-80"][1] == f"{100 * right[80] / 20:.1f}%"
    assert lines["quiz-50"][1] == f"{100 * right[50] / 20:.1f}%"
    assert "quiz-80 vs quiz-50: differ significantly" in proc.stdout
    assert f"{right[80] - right[50]} items where the models disagree" in proc.stdout
    assert "quiz-80" in proc.stderr and "20/20 completed" in proc.stderr  # the progress bars
    report = (tmp_path / "report.html").read_text()
    assert report.count("<svg") == 3 and "What is" in report

    listed = subprocess.run(
        [str(CUMULO_BIN), "eval", "list", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    ev = json.loads(listed.stdout)["data"][0]
    assert ev["name"] == "arithmetic"
    shown = subprocess.run(
        [str(CUMULO_BIN), "eval", "show", ev["id"]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0 and shown.stdout.count("completed") == 2
    again = subprocess.run(
        [str(CUMULO_BIN), "eval", "compare", ev["id"], "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert [m["overall"]["passed"] for m in json.loads(again.stdout)["models"]] == [
        right[80],
        right[50],
    ]


def test_eval_crud_and_a_bad_file_fails_the_run_naming_the_item(http: httpx.Client) -> None:
    ev = http.post(
        "/v1/evals",
        json={
            "name": "before",
            "metadata": {"team": "a"},
            "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
            "testing_criteria": [EXACT],
        },
    ).json()
    r = http.post(f"/v1/evals/{ev['id']}", json={"name": "after", "metadata": {"team": "b"}})
    assert (r.json()["name"], r.json()["metadata"]) == ("after", {"team": "b"})
    assert ev["id"] in [
        e["id"] for e in http.get("/v1/evals", params={"limit": 100}).json()["data"]
    ]

    rows = [json.dumps(r) for r in quiz_items(3)] + ['{"item": {"question": "q"}}']
    up = http.post(
        "/v1/files",
        files={"file": ("rows.jsonl", "\n".join(rows).encode())},
        data={"purpose": "evals"},
    )
    assert up.status_code == 200, up.text
    run = http.post(
        f"/v1/evals/{ev['id']}/runs",
        json={
            "data_source": {
                **completions("quiz-80", []),
                "source": {"type": "file_id", "id": up.json()["id"]},
            }
        },
    ).json()
    done = wait_run(http, ev["id"], run["id"])
    assert done["status"] == "failed"
    assert (
        "item 3" in done["error"]["message"]
        and "'answer' is a required property" in done["error"]["message"]
    )

    good = http.post(
        f"/v1/evals/{ev['id']}/runs", json={"data_source": completions("quiz-80", quiz_items(2))}
    ).json()
    wait_run(http, ev["id"], good["id"])
    runs = http.get(f"/v1/evals/{ev['id']}/runs").json()["data"]
    assert [r["id"] for r in runs] == [run["id"], good["id"]]  # oldest first, as OpenAI lists
    gone = http.delete(f"/v1/evals/{ev['id']}/runs/{good['id']}")
    assert gone.json() == {"object": "eval.run.deleted", "deleted": True, "run_id": good["id"]}
    assert http.get(f"/v1/evals/{ev['id']}/runs/{good['id']}").status_code == 404
    assert http.delete(f"/v1/evals/{ev['id']}").json()["deleted"] is True
    assert http.get(f"/v1/evals/{ev['id']}").status_code == 404
    assert http.get(f"/v1/evals/{ev['id']}/runs/{run['id']}").status_code == 404


ROBUST = {"perturbations": ["lowercase", "typos", "whitespace"], "seed": 7}


def test_robustness_perturbed_samples_linked_counted_compared_and_reported(
    server: CumuloServer, token: str, http: httpx.Client
) -> None:
    """quiz-80 reads "What is A + B?" exactly; quiz-loose in any case and spacing; neither
    reads it misspelt. Both are right on 80% of the original items."""
    with client(server, token) as c:
        ev = c.evals.create(
            data_source_config={"type": "custom", "item_schema": ITEM_SCHEMA},
            testing_criteria=[EXACT],  # type: ignore[list-item]
        )
        runs = {m: c.evals.runs.create(ev.id, name=m, data_source={  # type: ignore[arg-type]
            **completions(m, quiz_items(20)), "robustness": ROBUST}).id
            for m in ("quiz-80", "quiz-loose")}
    done = {m: wait_run(http, ev.id, r) for m, r in runs.items()}
    items = {m: http.get(f"/v1/evals/{ev.id}/runs/{r}/output_items",
                         params={"limit": 100}).json()["data"] for m, r in runs.items()}
    expected: dict[str, dict[str, int]] = {}
    for model, run in done.items():
        assert run["status"] == "completed", run
        # result_counts and the criteria are of the 20 original items
        assert run["result_counts"] == {"total": 20, "passed": 16, "failed": 4, "errored": 0}
        assert run["per_testing_criteria_results"] == [
            {"testing_criteria": "exact", "passed": 16, "failed": 4}]
        [usage] = run["per_model_usage"]  # every generation, perturbed ones too
        assert (usage["model_name"], usage["invocation_count"], usage["total_tokens"]) == (
            model, 80, 960)
        assert usage["cost"] == pytest.approx(80 * 0.014)
        got = items[model]
        assert len(got) == 80
        originals = {it["datasource_item_id"]: it for it in got if "perturbation" not in it}
        assert sorted(originals) == list(range(20))
        passed = {"lowercase": 0, "typos": 0, "whitespace": 0}
        for it in got:
            p = it.get("perturbation")
            if p is None:
                continue
            i = it["datasource_item_id"]
            original = originals[i]
            assert p["original_id"] == original["id"] and it["id"] != original["id"]
            assert it["datasource_item"] == original["datasource_item"]  # graded on it
            question = original["datasource_item"]["question"]
            sent = it["sample"]["input"][1]["content"]
            assert p["item"]["question"] == sent and sent != question
            assert it["sample"]["input"][0] == original["sample"]["input"][0]  # template kept
            if p["type"] == "lowercase":
                assert sent == question.lower()
            elif p["type"] == "whitespace":
                assert " ".join(sent.split(" ")).split() == question.split()
                assert len(sent) > len(question)
            else:
                assert len(sent) == len(question) and re.findall(r"\d+", sent) == \
                    re.findall(r"\d+", question)
            # the fake's own rule on what it was sent, against the original answer
            answer = quiz_answer(sent, 80, loose=model == "quiz-loose")
            right = answer == original["datasource_item"]["answer"]
            assert it["status"] == ("pass" if right else "fail"), (model, p["type"], sent)
            passed[p["type"]] += right
        assert run["robustness"]["perturbations"] == ROBUST["perturbations"]
        assert run["robustness"]["result_counts"] == {
            name: {"total": 20, "passed": n, "failed": 20 - n, "errored": 0}
            for name, n in passed.items()}
        expected[model] = passed
    # Known behaviour: the strict model loses every lower-cased item, the loose one none;
    # a typo in "What is" is lost by both.
    assert expected["quiz-80"]["lowercase"] == 0 and expected["quiz-loose"]["lowercase"] == 16
    assert expected["quiz-loose"]["whitespace"] == 16
    assert expected["quiz-80"]["whitespace"] < 16  # most spacings break the exact reading
    assert expected["quiz-80"]["typos"] == expected["quiz-loose"]["typos"] == 0

    a, b = runs["quiz-80"], runs["quiz-loose"]
    cmp = http.get(f"/v1/evals/{ev.id}/compare", params={"runs": f"{a},{b}"}).json()
    assert cmp["perturbations"] == ROBUST["perturbations"]
    strict, loose = cmp["models"]
    for m in (strict, loose):  # the main figures are of the originals alone
        assert (m["overall"]["passed"], m["overall"]["graded"], m["items"]) == (16, 20, 20)
        assert m["robustness"]["original"]["pass_rate"] == 0.8
    assert cmp["disagreements"] == [] and cmp["pairs"][0]["items"] == 20
    low = strict["robustness"]["perturbations"]["lowercase"]
    assert (low["pass_rate"], low["drop"], low["lost"], low["gained"]) == (0.0, 0.8, 16, 0)
    assert low["p_value"] == pytest.approx(2 * 0.5 ** 16, abs=1e-6) and low["significant"]
    steady = loose["robustness"]["perturbations"]["lowercase"]
    assert (steady["drop"], steady["lost"], steady["p_value"], steady["significant"]) == (
        0.0, 0, 1.0, False)
    ws = strict["robustness"]["perturbations"]["whitespace"]
    assert ws["drop"] == pytest.approx(0.8 - expected["quiz-80"]["whitespace"] / 20)

    page = http.get(f"/v1/evals/{ev.id}/report", params={"runs": f"{a},{b}"}).text
    assert page.count("<svg") == 4 and "<h2>Robustness</h2>" in page
    assert "0.0% (0/20)" in page and "+80.0 pts" in page  # quiz-80 lower-cased: the drop


def test_robustness_reorders_the_options_the_schema_marks(
    server: CumuloServer, http: httpx.Client
) -> None:
    """pick-first answers the first option: right on every original (the right option
    comes first), wrong on every reordered one (two options: always swapped)."""
    schema = {"type": "object", "required": ["question", "options", "answer"], "properties": {
        "question": {"type": "string"}, "answer": {"type": "string"},
        "options": {"type": "array", "items": {"type": "string"}, "x-cumulo-options": True}}}
    ev = http.post("/v1/evals", json={
        "data_source_config": {"type": "custom", "item_schema": schema},
        "testing_criteria": [EXACT]}).json()
    rows = [{"item": {"question": f"Which is city {i}?", "options": [f"city {i}", f"town {i}"],
                      "answer": f"city {i}"}} for i in range(6)]
    run = http.post(f"/v1/evals/{ev['id']}/runs", json={"data_source": {
        "type": "completions", "model": "pick-first",
        "input_messages": {"type": "template", "template": [
            {"role": "user", "content": "{{item.question}} Options: {{item.options}}"}]},
        "source": {"type": "file_content", "content": rows},
        "robustness": {"perturbations": ["reorder_options"], "seed": 1}}})
    assert run.status_code == 200, run.text
    done = wait_run(http, ev["id"], run.json()["id"])
    assert done["result_counts"] == {"total": 6, "passed": 6, "failed": 0, "errored": 0}
    assert done["robustness"]["result_counts"] == {
        "reorder_options": {"total": 6, "passed": 0, "failed": 6, "errored": 0}}
    out = http.get(f"/v1/evals/{ev['id']}/runs/{done['id']}/output_items",
                   params={"limit": 100}).json()["data"]
    shuffled = [it for it in out if "perturbation" in it]
    assert len(shuffled) == 6
    for it in shuffled:
        i = it["datasource_item_id"]
        assert it["perturbation"]["item"]["options"] == [f"town {i}", f"city {i}"]
        assert it["sample"]["output"][0]["content"] == f"town {i}"


def test_robustness_option_bad_input_is_a_400_naming_the_field(http: httpx.Client) -> None:
    r = http.post("/v1/evals", json={
        "data_source_config": {"type": "custom", "item_schema": {
            "type": "object", "properties": {"q": {"type": "string", "x-cumulo-options": True}}}},
        "testing_criteria": [EXACT]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "data_source_config.item_schema"
    assert "array property only" in r.json()["error"]["message"]
    ev = http.post("/v1/evals", json={
        "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
        "testing_criteria": [EXACT]}).json()

    def run(robustness: Any, source: dict[str, Any] | None = None) -> httpx.Response:
        ds = source or completions("quiz-80", quiz_items(2))
        return http.post(f"/v1/evals/{ev['id']}/runs",
                         json={"data_source": {**ds, "robustness": robustness}})

    for robustness, param, words in [
        ({"perturbations": ["shout"]}, "data_source.robustness.perturbations[0]", "one of"),
        ({"perturbations": ["reorder_options"]}, "data_source.robustness.perturbations[0]",
         "x-cumulo-options"),
        ({"perturbations": ["typos"], "seed": "x"}, "data_source.robustness.seed", "integer"),
        ([], "data_source.robustness", "object"),
    ]:
        r = run(robustness)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param and words in r.json()["error"]["message"]
    rows = [{"item": {"question": "q", "answer": "a"}, "sample": {"output_text": "a"}}]
    r = run({"perturbations": ["typos"]},
            {"type": "jsonl", "source": {"type": "file_content", "content": rows}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "data_source.robustness"
    assert "completions" in r.json()["error"]["message"]


def test_cli_eval_run_with_robustness_prints_each_models_drop(
    server: CumuloServer, token: str, tmp_path: Path
) -> None:
    env = clean_env(CUMULO_URL=server.url, CUMULO_API_KEY=token)
    proc = subprocess.run(
        [str(CUMULO_BIN), "eval", "run", "arithmetic", "--model", "quiz-80", "--model",
         "quiz-loose", "--robustness", "--robustness-seed", "3"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (EXAMPLES / "arithmetic.jsonl").read_text().splitlines()]
    right = sum(int(r["input"].split()[2]) % 10 < 8 for r in rows)
    pct = f"{100 * right / 20:.1f}%"
    main_table, table = proc.stdout.split("Robustness:")
    assert "quiz-80 vs quiz-loose" in main_table
    lines = {ln.split()[0]: ln.split() for ln in table.splitlines()[1:] if ln.strip()}
    assert lines["MODEL"] == ["MODEL", "ORIGINAL", "LOWERCASE", "TYPOS", "WHITESPACE"]
    # quiz-80 reads only "What is" as written: lower case loses every item it got right
    assert lines["quiz-80"][1:4] == [pct, "0.0%", f"({-100 * right / 20:+.1f})*"]
    assert lines["quiz-loose"][1:4] == [pct, pct, "(+0.0)"]
    assert "80/80 completed" in proc.stderr  # progress: each item and its 3 perturbations
    bad = subprocess.run([str(CUMULO_BIN), "eval", "run", "arithmetic", "-m", "quiz-80",
                          "--robustness", "shout"], env=env, capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert bad.returncode == 2 and "--robustness" in bad.stderr and "'shout'" in bad.stderr
