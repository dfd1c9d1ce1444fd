"""lm-evaluation-harness end to end: `lm_eval --model local-completions` against cumulo.

Two tiny tasks shipped in tests/data/lm_eval (local JSONL, no downloads): a
loglikelihood task (multiple choice) and a generation task. lm_eval runs as a
subprocess with cumulo's remote tokenizer (`tokenizer_backend=remote`: it reads
/tokenizer_info and calls /tokenize and /detokenize), sends token-id prompts with `echo`
and `logprobs`, and its figures are checked against the demo model run directly with
transformers: each choice's log-likelihood, the accuracy, and each greedy generation.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cumulo.engine.demo import build_demo_model
from support import CumuloServer
from support.cumulo import clean_env

TASKS = Path(__file__).parent.parent / "data" / "lm_eval"
LM_EVAL = Path(sys.executable).parent / "lm_eval"


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("lm-eval") / "demo-tiny", seed=0)


@pytest.fixture(scope="module")
def server(demo_path: Path, cumulo_factory: Any) -> CumuloServer:
    return cumulo_factory(
        {
            "models": [
                {
                    "name": "demo-tiny",
                    "deployments": [
                        {
                            "provider": "local",
                            "path": str(demo_path),
                            "dtype": "float32",
                            "max_running": 4,
                            "max_tokens_in_flight": 4096,
                        }
                    ],
                }
            ]
        }
    )


def lm_eval(server: CumuloServer, token: str, tasks: str, out: Path) -> dict[str, Any]:
    """Run lm_eval on `tasks`; its results JSON, and the logged samples beside it."""
    home = out / "hf-home"
    env = clean_env(
        OPENAI_API_KEY=token,
        HF_HOME=str(home),
        HF_DATASETS_OFFLINE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_CACHE=str(home / "datasets"),
    )
    args = [
        str(LM_EVAL),
        "--model",
        "local-completions",
        "--model_args",
        f"base_url={server.url}/models/demo-tiny/v1/completions,model=demo-tiny,"
        "tokenizer_backend=remote,"
        f"auth_token={token},max_length=512",
        "--batch_size",
        "4",
        "--tasks",
        tasks,
        "--include_path",
        str(TASKS),
        "--output_path",
        str(out / "results"),
        "--log_samples",
    ]
    done = subprocess.run(
        args,
        cwd=TASKS.parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [results] = list((out / "results").rglob("results_*.json"))
    data: dict[str, Any] = json.loads(results.read_text())
    data["samples"] = {
        task: [
            json.loads(line)
            for line in next(results.parent.glob(f"samples_{task}_*.jsonl"))
            .read_text()
            .splitlines()
        ]
        for task in tasks.split(",")
    }
    return data


@pytest.fixture(scope="module")
def results(server: CumuloServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    key = server.create_key("lm-eval")
    return lm_eval(
        server,
        key.token,
        "cumulo_tiny_choice,cumulo_tiny_echo",
        tmp_path_factory.mktemp("lm-eval-out"),
    )


@pytest.fixture(scope="module")
def reference(demo_path: Path) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(demo_path, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(demo_path)


def loglikelihood(model: Any, tok: Any, context: str, continuation: str) -> float:
    """As lm-evaluation-harness scores a choice: the whole text encoded, the context's
    tokens split off, the continuation's log probabilities summed."""
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(logp[i - 1, whole[i]].item() for i in range(len(ctx), len(whole)))


def test_loglikelihood_task_matches_transformers(
    results: dict[str, Any], reference: tuple[Any, Any]
) -> None:
    model, tok = reference
    docs = [json.loads(line) for line in (TASKS / "tiny_choice.jsonl").read_text().splitlines()]
    samples = sorted(results["samples"]["cumulo_tiny_choice"], key=lambda s: s["doc_id"])
    assert len(samples) == len(docs)
    correct = 0
    for doc, sample in zip(docs, samples, strict=True):
        scores = [loglikelihood(model, tok, doc["question"], " " + c) for c in doc["choices"]]
        served = [float(r[0][0]) for r in sample["resps"]]
        assert served == pytest.approx(scores, abs=1e-3)
        correct += scores.index(max(scores)) == doc["answer"]
    acc = results["results"]["cumulo_tiny_choice"]["acc,none"]
    assert acc == pytest.approx(correct / len(docs))


def test_generation_task_matches_transformers_greedy(
    results: dict[str, Any], reference: tuple[Any, Any]
) -> None:
    model, tok = reference
    docs = [json.loads(line) for line in (TASKS / "tiny_echo.jsonl").read_text().splitlines()]
    samples = sorted(results["samples"]["cumulo_tiny_echo"], key=lambda s: s["doc_id"])
    matches = 0
    for doc, sample in zip(docs, samples, strict=True):
        ids = tok(doc["prompt"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                max_new_tokens=8,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        text = tok.decode(out[0, len(ids) :], skip_special_tokens=True)
        for stop in ("\n", tok.eos_token):
            text = text.split(stop)[0]
        assert sample["resps"][0][0] == text
        matches += text.strip() == doc["target"]
    em = results["results"]["cumulo_tiny_echo"]["exact_match,none"]
    assert em == pytest.approx(matches / len(docs))
