"""`cumulo models export`: a tuned model's adapter, its merged Hugging Face directory and
an ONNX export, downloaded through the API with the caller's key. transformers loads the
merged directory and decodes greedily the tokens cumulo serves; onnxruntime runs the ONNX
export and picks the same greedy tokens; another tenant cannot export it; the ledger
records each export with the SHA-256 of what was written."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from test_fine_tuning import (
    ANSWER,
    QUESTION,
    client,
    config,
    examples,
    tenant_key,
    upload,
    wait_status,
)

from cumulo.engine.demo import build_demo_model
from cumulo.jobs.finetune.hashes import sha256_of_dir
from fakes import FakeOpenAIUpstream
from support import CUMULO_BIN, UPSTREAM_KEY, CumuloServer, clean_env, start_cumulo

pytestmark = pytest.mark.slow

MAX_TOKENS = 12


@pytest.fixture(scope="module")
def demo_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("ft-export") / "demo-tiny", seed=0)


@pytest.fixture(scope="module")
def trained(demo_base: Path, upstream: FakeOpenAIUpstream,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CumuloServer, str, str]]:
    server = start_cumulo(config(demo_base, upstream), tmp_path_factory.mktemp("cumulo-export"),
                          ready_timeout=600, FAKE_UPSTREAM_KEY=UPSTREAM_KEY)
    try:
        token = tenant_key(server, "ft-export")
        with client(server, token) as c:
            job = c.fine_tuning.jobs.create(
                model="demo-tiny", training_file=upload(c, examples()), suffix="exp", seed=1,
                method={"type": "supervised", "supervised": {"hyperparameters": {
                    "n_epochs": 20, "batch_size": 2, "learning_rate_multiplier": 5.0}}})
            done = wait_status(c, job.id, {"succeeded"})
        yield server, token, str(done.fine_tuned_model)
    finally:
        server.stop()


def export(server: CumuloServer, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CUMULO_BIN), "--url", server.url, "--key", token,
                           "models", "export", *args], capture_output=True, text=True,
                          env=clean_env(), timeout=900)


def test_adapter_merged_and_onnx_exports_match_what_cumulo_serves(
    trained: tuple[CumuloServer, str, str], tmp_path: Path
) -> None:
    import torch
    from peft import PeftConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cumulo.jobs.finetune.onnx_export import greedy_onnx

    server, token, name = trained
    adapter = tmp_path / "adapter"
    r = export(server, token, name, str(adapter))
    assert r.returncode == 0, r.stderr
    assert {p.name for p in adapter.iterdir()} >= {"adapter_config.json",
                                                   "adapter_model.safetensors"}
    assert PeftConfig.from_pretrained(str(adapter)).r == 8
    merged = tmp_path / "merged"
    r = export(server, token, name, str(merged), "--merged", "--onnx")
    assert r.returncode == 0, r.stderr
    assert "onnxruntime's greedy tokens match" in r.stdout
    files = {p.name for p in merged.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= files, files
    # transformers loads the merged directory and decodes what cumulo serves, greedily.
    with client(server, token) as c:
        served = c.chat.completions.create(
            model=name, messages=[{"role": "user", "content": QUESTION}], temperature=0,
            max_tokens=MAX_TOKENS)
    tok = AutoTokenizer.from_pretrained(str(merged))
    model = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False,
                                     add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=MAX_TOKENS)[0, ids.shape[1]:].tolist()
    text = tok.decode(out, skip_special_tokens=True)
    assert text == served.choices[0].message.content
    assert ANSWER[:8] in text  # the tuned answer, not the base's noise
    # onnxruntime runs the ONNX export: the same greedy tokens (up to an end token).
    onnx_tokens = greedy_onnx(merged / "onnx" / "model.onnx", ids[0].tolist(), len(out))
    assert onnx_tokens[:len(out)] == out
    # The ledger records both exports, with the SHA-256 of what was written.
    rows = server.sql("SELECT data FROM ledger WHERE action = 'fine_tuning.exported' "
                      "ORDER BY seq")
    recorded = [json.loads(d) for (d,) in rows]
    assert [(e["model"], e["format"]) for e in recorded][-2:] == [(name, "adapter"),
                                                                  (name, "merged")]
    assert recorded[-2]["sha256"] == sha256_of_dir(adapter)
    lineage = subprocess.run([str(CUMULO_BIN), "ledger", "lineage", name], capture_output=True,
                             text=True, env=clean_env(CUMULO_HOME=str(server.home)), timeout=60)
    assert lineage.returncode == 0, lineage.stderr
    assert f"export         merged sha256 {recorded[-1]['sha256']}" in lineage.stdout


def test_only_its_tenant_exports_it_and_bad_input_is_refused(
    trained: tuple[CumuloServer, str, str], tmp_path: Path
) -> None:
    server, token, name = trained
    other = tenant_key(server, "ft-export-other")
    r = export(server, other, name, str(tmp_path / "x"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    assert not (tmp_path / "x").exists()
    r = export(server, token, name.rsplit(":", 1)[0] + ":ftjob-nope", str(tmp_path / "y"))
    assert r.returncode == 1 and "does not exist" in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    r = export(server, token, name, str(tmp_path / "full"))
    assert r.returncode == 2 and "not empty" in r.stderr
    r2 = httpx.get(f"{server.url}/v1/fine_tuning/models/{name}/export",
                   params={"format": "gguf"}, headers={"authorization": f"Bearer {token}"})
    assert r2.status_code == 400 and r2.json()["error"]["param"] == "format"
