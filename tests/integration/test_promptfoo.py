"""promptfoo configs: `cumulo eval run promptfooconfig.yaml` and promptfoo's own CLI (the
npm package, `make promptfoo`) pointed at the same `cumulo serve` as its OpenAI provider
(`apiBaseUrl`) give the same pass counts on a config with two models of known behaviour
(right on 80% and 50% of the tests) and several assertion types; an unsupported assertion
or provider is refused before anything runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support import CUMULO_BIN, CumuloServer, clean_env
from support.batches import new_key
from support.evals import QuizUpstream, eval_config

PROMPTFOO = Path(
    os.environ.get("CUMULO_PROMPTFOO")
    or Path(sys.prefix) / "promptfoo" / "node_modules" / ".bin" / "promptfoo"
)
# promptfoo offline: no telemetry, update check or remote calls (an unreachable proxy for
# anything not on loopback), its state in the test's directory.
OFFLINE = {
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "127.0.0.1,localhost",
    "PROMPTFOO_DISABLE_TELEMETRY": "1",
    "PROMPTFOO_DISABLE_UPDATE": "1",
    "PROMPTFOO_DISABLE_REMOTE_GENERATION": "1",
    "PROMPTFOO_DISABLE_SHARING": "1",
    "PROMPTFOO_SELF_HOSTED": "1",
}
TESTS = 10


@pytest.fixture(scope="module")
def quiz() -> Iterator[QuizUpstream]:
    with QuizUpstream() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(quiz: QuizUpstream, cumulo_factory: Callable[..., CumuloServer]) -> CumuloServer:
    return cumulo_factory(eval_config(quiz))


@pytest.fixture
def token(server: CumuloServer) -> str:
    return new_key(server, "promptfoo")[1]


def config(url: str, token: str) -> dict[str, Any]:
    """Test i asks i + (10 + i): quiz-80 is right on i < 8, quiz-50 on i < 5; each test
    holds one assertion of its own besides the default ones, every type of the subset
    (but cost, which promptfoo knows only for OpenAI's own models) in turn."""
    api = {"apiBaseUrl": url + "/v1", "apiKey": token}
    own = [
        {"type": "equals", "value": "{{sum}}"},
        {"type": "icontains", "value": "{{sum}}"},
        {"type": "starts-with", "value": "{{sum}}"},
        {"type": "similar", "value": "{{sum}}"},
        {"type": "llm-rubric", "value": "The answer is {{sum}}"},
        {"type": "contains", "value": "{{sum}}"},
        {"type": "not-equals", "value": "{{wrong}}"},
        {"type": "regex", "value": "^{{sum}}$"},
        {"type": "not-icontains", "value": "{{wrong}}"},
        {"type": "similar", "value": "{{sum}}", "threshold": 0.9},
    ]
    return {
        "description": "quiz",
        "prompts": ["file://prompt.txt"],
        "providers": [
            {"id": "openai:chat:quiz-80", "config": {**api, "temperature": 0, "max_tokens": 16}},
            {"id": "openai:chat:quiz-50", "label": "fifty", "config": {**api, "max_tokens": 16}},
        ],
        "defaultTest": {
            "options": {
                "provider": {
                    "text": {"id": "openai:chat:judge-rubric", "config": api},
                    "embedding": {"id": "openai:embedding:embed", "config": api},
                }
            },
            "assert": [
                {"type": "is-json"},
                {"type": "regex", "value": "^\\d+$"},
                {"type": "not-contains", "value": "sorry"},
                {"type": "latency", "threshold": 60000},
            ],
        },
        "tests": [
            {
                "description": f"sum {i}",
                "vars": {"a": i, "b": 10 + i, "sum": 10 + 2 * i, "wrong": 11 + 2 * i},
                "assert": [own[i]],
            }
            for i in range(TESTS)
        ],
    }


def write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    (tmp_path / "prompt.txt").write_text("What is {{a}} + {{b}}? Answer with the number only.\n")
    path = tmp_path / "promptfooconfig.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def cumulo_eval(
    server: CumuloServer, token: str, path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CUMULO_BIN), "eval", "run", str(path), *args],
        cwd=path.parent,
        env=clean_env(CUMULO_URL=server.url, CUMULO_API_KEY=token),
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_counts(server: CumuloServer, token: str) -> dict[str, tuple[int, int, int]]:
    """(passed, failed, errored) of each run of the caller's newest eval, by run name."""
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        ev = http.get("/v1/evals", params={"limit": 1, "order": "desc"}).json()["data"][0]
        runs = http.get(f"/v1/evals/{ev['id']}/runs").json()["data"]
    return {
        r["name"]: tuple(r["result_counts"][k] for k in ("passed", "failed", "errored"))
        for r in runs
    }


def test_cumulo_runs_a_promptfoo_config(server: CumuloServer, token: str, tmp_path: Path) -> None:
    proc = cumulo_eval(server, token, write(tmp_path, config(server.url, token)))
    assert proc.returncode == 0, proc.stderr
    assert run_counts(server, token) == {"quiz-80": (8, 2, 0), "fifty": (5, 5, 0)}
    assert "fifty" in proc.stdout and "quiz-80" in proc.stdout  # the comparison table
    assert "LLM-RUBRIC" in proc.stdout and "NOT-ICONTAINS" in proc.stdout  # a column each
    assert (tmp_path / "report.html").read_text().count("<svg") == 3


def test_cost_is_the_deployments_price(server: CumuloServer, token: str, tmp_path: Path) -> None:
    """quiz-80 is priced 1000/2000 per million tokens and answers with 10 + 2 tokens: 0.014."""
    cfg = config(server.url, token)
    cfg["providers"] = cfg["providers"][:1]
    cfg["defaultTest"]["assert"] = []
    cfg["tests"] = [
        {"vars": {"a": 1, "b": 2}, "assert": [{"type": "cost", "threshold": t}]}
        for t in (0.01, 0.02)
    ]
    cfg["tests"].append(
        {"vars": {"a": 1, "b": 2}, "assert": [{"type": "not-cost", "threshold": 0.01}]}
    )
    proc = cumulo_eval(server, token, write(tmp_path, cfg))
    assert proc.returncode == 0, proc.stderr
    assert run_counts(server, token) == {"quiz-80": (2, 1, 0)}


@pytest.mark.parametrize(
    "bad, named",
    [
        (
            {
                "tests": [
                    {"vars": {"a": 1, "b": 2}},
                    {"vars": {"a": 1, "b": 2}, "assert": [{"type": "contains-any", "value": []}]},
                ]
            },
            "tests[1].assert[0].type: assertion type 'contains-any' is not supported",
        ),
        (
            {"providers": ["openai:chat:quiz-80", "anthropic:messages:claude"]},
            "providers[1].id: provider 'anthropic:messages:claude' is not supported",
        ),
        (
            {"tests": [{"vars": {"a": 1}, "assert": [{"type": "equals", "value": "1"}]}]},
            "tests[0]: prompt 'prompt.txt' uses {{b}}: no such var",
        ),
    ],
)
def test_outside_the_subset_is_refused_before_anything_runs(
    server: CumuloServer, tmp_path: Path, bad: dict[str, Any], named: str
) -> None:
    token = new_key(server, "promptfoo-refused")[1]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as h:
        before = h.get("/v1/evals", params={"limit": 100}).json()["data"]
        proc = cumulo_eval(server, token, write(tmp_path, {**config(server.url, token), **bad}))
        assert proc.returncode == 2, proc.stdout
        assert named in proc.stderr
        assert h.get("/v1/evals", params={"limit": 100}).json()["data"] == before  # none made


@pytest.mark.promptfoo
def test_promptfoo_itself_against_cumulo_gives_the_same_pass_counts(
    server: CumuloServer, token: str, tmp_path: Path
) -> None:
    if not PROMPTFOO.exists():
        if os.environ.get("CUMULO_REQUIRE_PROMPTFOO"):
            raise AssertionError(f"promptfoo is not installed at {PROMPTFOO}: `make promptfoo`")
        pytest.skip("promptfoo is not installed (`make promptfoo`)")
    path = write(tmp_path, config(server.url, token))
    env = clean_env(
        **OFFLINE,
        OPENAI_API_KEY=token,
        PROMPTFOO_CONFIG_DIR=str(tmp_path / ".pf"),
        HOME=str(tmp_path),
    )
    proc = subprocess.run(
        [
            str(PROMPTFOO),
            "eval",
            "-c",
            str(path),
            "-o",
            str(tmp_path / "out.json"),
            "--no-cache",
            "--no-write",
            "--no-table",
            "--no-progress-bar",
            "-j",
            "4",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = json.loads((tmp_path / "out.json").read_text())
    by: dict[str, list[int]] = {}
    for r in out["results"]["results"]:
        label = r["provider"].get("label") or r["provider"]["id"].removeprefix("openai:chat:")
        counts = by.setdefault(label, [0, 0, 0])
        counts[
            0 if r["success"] else 2 if r.get("error") and not r.get("gradingResult") else 1
        ] += 1
    theirs = {k: tuple(v) for k, v in by.items()}
    assert theirs == {"quiz-80": (8, 2, 0), "fifty": (5, 5, 0)}, proc.stdout + proc.stderr
    assert proc.returncode in (0, 100), proc.stderr  # 100: some tests failed

    assert cumulo_eval(server, token, path).returncode == 0
    assert run_counts(server, token) == theirs
