"""`/v1/completions` and the tokenizer endpoints against `cumulo serve` with the demo model.

Log probabilities are checked against the same model run directly with transformers
(float32), prompt and completion alike; the official openai SDK's `completions.create`
works; bad requests are OpenAI-shaped 400s naming the field; a remote model whose upstream
has no /v1/completions is a 400 naming the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cumulo.engine.demo import build_demo_model
from fakes import FakeOpenAIUpstream
from support import ApiKey, CumuloServer, openai_deployment

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo_model(tmp_path_factory.mktemp("completions") / "demo-tiny", seed=0)


@pytest.fixture(scope="module")
def server(demo_path: Path, upstream: FakeOpenAIUpstream, cumulo_factory: Any) -> CumuloServer:
    return cumulo_factory(
        {
            "usage": {"flush_interval_s": 0.1},
            "guardrails": [
                {
                    "id": "strict",
                    "denied_topics": [{"name": "investment advice", "keywords": ["stock tip*"]}],
                    "blocked_input_message": "Sorry, I cannot help with that.",
                },
            ],
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
                            "max_queue": 8,
                        }
                    ],
                },
                {"name": "remote-chat", "deployments": [openai_deployment(upstream, "echo")]},
                {
                    "name": "remote-text",
                    "guardrails": ["pii-anonymize"],
                    "deployments": [openai_deployment(upstream, "completions")],
                },
                {
                    "name": "remote-strict",
                    "guardrails": ["strict"],
                    "deployments": [openai_deployment(upstream, "completions")],
                },
            ],
        }
    )


@pytest.fixture(scope="module")
def key(server: CumuloServer) -> ApiKey:
    return server.create_key("completions")


@pytest.fixture(scope="module")
def http(server: CumuloServer, key: ApiKey) -> Any:
    with httpx.Client(
        base_url=server.url, timeout=60, headers={"Authorization": f"Bearer {key.token}"}
    ) as client:
        yield client


@pytest.fixture(scope="module")
def reference(demo_path: Path) -> tuple[Any, Any]:
    """The demo model and tokenizer, loaded by transformers alone."""
    model = AutoModelForCausalLM.from_pretrained(demo_path, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(demo_path)


def direct_logprobs(model: Any, ids: list[int]) -> torch.Tensor:
    """The log-softmax at each position of `ids` (row i - 1 scores token i)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def completion(http: httpx.Client, **body: Any) -> dict[str, Any]:
    resp = http.post("/v1/completions", json={"model": "demo-tiny", **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_echo_logprobs_equal_transformers(http: httpx.Client, reference: tuple[Any, Any]) -> None:
    model, tok = reference
    prompts = [
        tok("The clouds drift over the quiet sea", add_special_tokens=False)["input_ids"],
        tok("rain and wind in tall trees " * 30, add_special_tokens=False)["input_ids"],
    ]
    out = completion(http, prompt=prompts, echo=True, logprobs=3, max_tokens=2, temperature=0)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    for ids, choice in zip(prompts, out["choices"], strict=True):
        lp = choice["logprobs"]
        n = len(ids)
        assert len(lp["tokens"]) == n + 2 and lp["token_logprobs"][0] is None
        assert lp["top_logprobs"][0] is None
        # transformers' own greedy continuation, then one forward over all of it
        greedy = model.generate(
            torch.tensor([ids]), max_new_tokens=2, do_sample=False, pad_token_id=tok.pad_token_id
        )[0].tolist()
        assert lp["tokens"] == [tok.decode([t]) for t in greedy]
        full = direct_logprobs(model, greedy)
        for i in range(1, len(greedy)):
            assert abs(lp["token_logprobs"][i] - full[i - 1, greedy[i]].item()) < TOLERANCE
            best = torch.topk(full[i - 1], 3)
            want = {
                tok.decode([t]): v
                for t, v in zip(best.indices.tolist(), best.values.tolist(), strict=True)
            }
            assert set(lp["top_logprobs"][i]) == set(want)
            for t, v in want.items():
                assert abs(lp["top_logprobs"][i][t] - v) < TOLERANCE
        # Greedy: each generated token is the most likely one.
        for i in range(n, n + 2):
            assert lp["token_logprobs"][i] == max(lp["top_logprobs"][i].values())
        assert choice["text"] == tok.decode(greedy)
        offsets = lp["text_offset"]
        assert offsets == [sum(len(t) for t in lp["tokens"][:i]) for i in range(len(offsets))]
    assert out["usage"]["prompt_tokens"] == sum(len(p) for p in prompts)
    assert out["usage"]["completion_tokens"] == 4


def test_max_tokens_zero_scores_the_prompt_only(
    http: httpx.Client, reference: tuple[Any, Any]
) -> None:
    model, tok = reference
    ids = tok("over the sea and the wind", add_special_tokens=False)["input_ids"]
    out = completion(http, prompt=ids, echo=True, logprobs=1, max_tokens=0)
    choice = out["choices"][0]
    assert choice["text"] == tok.decode(ids) and choice["finish_reason"] == "length"
    full = direct_logprobs(model, ids)
    want = [full[i - 1, ids[i]].item() for i in range(1, len(ids))]
    got = choice["logprobs"]["token_logprobs"][1:]
    assert len(got) == len(want)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) < TOLERANCE
    assert out["usage"] == {
        "prompt_tokens": len(ids),
        "completion_tokens": 0,
        "total_tokens": len(ids),
        "prompt_tokens_details": {"cached_tokens": 0},  # prompt logprobs: the whole prompt read
    }


def test_a_batch_larger_than_the_engine_queue_is_scored_whole(
    http: httpx.Client, reference: tuple[Any, Any]
) -> None:
    """100 prompts in one request, to an engine with 4 slots and a queue of 8: the
    request feeds the engine as slots free up instead of overflowing its queue."""
    _, tok = reference
    words = ["clouds", "rain", "sea", "wind", "trees", "over", "the", "quiet"]
    prompts = [
        tok(" ".join(words[i % 8 :] + words[: i % 5]), add_special_tokens=False)["input_ids"]
        for i in range(100)
    ]
    out = completion(http, prompt=prompts, echo=True, logprobs=1, max_tokens=0)
    assert len(out["choices"]) == 100
    for ids, choice in zip(prompts, out["choices"], strict=True):
        assert len(choice["logprobs"]["tokens"]) == len(ids)
        assert choice["text"] == tok.decode(ids)


def test_generation_without_echo_has_completion_logprobs(http: httpx.Client) -> None:
    out = completion(http, prompt="Tell me about clouds", max_tokens=5, temperature=0, logprobs=2)
    lp = out["choices"][0]["logprobs"]
    assert lp["text_offset"][0] == 0 and len(lp["tokens"]) <= 5
    assert all(v is not None and v <= 0 for v in lp["token_logprobs"])
    again = completion(http, prompt="Tell me about clouds", max_tokens=5, temperature=0)
    assert again["choices"][0]["text"] == out["choices"][0]["text"]
    assert again["choices"][0]["logprobs"] is None


def test_seeded_sampling_repeats(http: httpx.Client) -> None:
    a = completion(http, prompt="clouds", max_tokens=8, temperature=1.0, seed=7)
    b = completion(http, prompt="clouds", max_tokens=8, temperature=1.0, seed=7)
    assert a["choices"][0]["text"] == b["choices"][0]["text"]


def test_stream_sends_text_completion_chunks(http: httpx.Client) -> None:
    whole = completion(http, prompt="the sea", max_tokens=6, temperature=0, logprobs=1)
    texts, tokens, finish, usage = [], [], None, None
    body = {
        "model": "demo-tiny",
        "prompt": "the sea",
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            assert chunk["object"] == "text_completion"
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk["choices"]:
                texts.append(c["text"])
                if c["logprobs"]:
                    tokens += c["logprobs"]["tokens"]
                finish = c["finish_reason"] or finish
    assert "".join(texts) == whole["choices"][0]["text"]
    assert tokens == whole["choices"][0]["logprobs"]["tokens"]
    assert finish == whole["choices"][0]["finish_reason"]
    assert usage is not None and usage["completion_tokens"] == whole["usage"]["completion_tokens"]


def test_openai_sdk_completions_create(server: CumuloServer, key: ApiKey) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key.token, max_retries=0)
    out = client.completions.create(
        model="demo-tiny",
        prompt="Once upon a time",
        max_tokens=4,
        temperature=0,
        logprobs=2,
        echo=True,
    )
    choice = out.choices[0]
    assert choice.text.startswith("Once upon a time")
    assert choice.logprobs is not None and choice.logprobs.token_logprobs[0] is None
    assert out.usage is not None and out.usage.completion_tokens >= 1
    chunks = list(
        client.completions.create(
            model="demo-tiny", prompt="Once", max_tokens=3, temperature=0, stream=True
        )
    )
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": 5}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [[1, 2], [True]]}, "prompt"),
        ({"prompt": [-1]}, "prompt"),
        ({"prompt": []}, "prompt"),
        ({"prompt": [[1, 2], []]}, "prompt.1"),
        ({"prompt": "hi", "logprobs": 21}, "logprobs"),
        ({"prompt": "hi", "logprobs": -1}, "logprobs"),
        ({"prompt": "hi", "max_tokens": -1}, "max_tokens"),
        ({"prompt": "hi", "echo": "yes"}, "echo"),
        ({"prompt": "hi", "n": 2}, "n"),
        ({"prompt": "hi", "temperature": 3}, "temperature"),
        ({"prompt": [10**9]}, "prompt"),
        ({"prompt": ["a", "b"], "stream": True}, "prompt"),
        ({"prompt": "hi", "stop": [str(i) for i in range(17)]}, "stop"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    resp = http.post("/v1/completions", json={"model": "demo-tiny", **body})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error


def test_remote_model_without_completions_is_a_400_naming_it(http: httpx.Client) -> None:
    resp = http.post("/v1/completions", json={"model": "remote-chat", "prompt": "hi"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "model" and "remote-chat" in error["message"]
    assert error["code"] == "completions_not_supported"


def test_tokenizer_endpoints(http: httpx.Client, reference: tuple[Any, Any]) -> None:
    _, tok = reference
    text = "Clouds over the sea"
    resp = http.post(
        "/tokenize",
        json={
            "model": "demo-tiny",
            "prompt": text,
            "add_special_tokens": False,
            "return_token_strs": True,
        },
    )
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["tokens"] == tok(text, add_special_tokens=False)["input_ids"]
    assert out["count"] == len(out["tokens"]) and out["token_strs"]
    # The model may be left out when the caller may use a single local model.
    assert http.post("/tokenize", json={"prompt": text}).json()["tokens"] == tok(text)["input_ids"]
    back = http.post("/detokenize", json={"model": "demo-tiny", "tokens": out["tokens"]})
    assert back.json() == {"prompt": text}
    info = http.get("/models/demo-tiny/tokenizer_info").json()
    assert info["eos_token"] == tok.eos_token and info["bos_token"] == tok.bos_token
    assert info["chat_template"]
    chat = http.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
    assert (
        chat.json()["tokens"]
        == tok(
            tok.apply_chat_template(
                [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )["input_ids"]
    )
    bad = http.post("/detokenize", json={"model": "demo-tiny", "tokens": [10**6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens.0"
    remote = http.post("/tokenize", json={"model": "remote-chat", "prompt": "x"})
    assert remote.status_code == 400 and "remote-chat" in remote.json()["error"]["message"]
    assert httpx.post(http.base_url.join("/tokenize"), json={"prompt": "x"}).status_code == 401


def test_completions_are_metered(server: CumuloServer, http: httpx.Client, key: ApiKey) -> None:
    metered = server.create_key("metered")
    resp = httpx.post(
        server.url + "/v1/completions",
        timeout=60,
        headers={"Authorization": f"Bearer {metered.token}"},
        json={"model": "demo-tiny", "prompt": "metered", "max_tokens": 2},
    )
    assert resp.status_code == 200, resp.text
    [row] = server.usage_rows(metered.id)
    assert row["endpoint"] == "completions" and row["model"] == "demo-tiny"
    assert row["prompt_tokens"] == resp.json()["usage"]["prompt_tokens"]
    assert row["completion_tokens"] == resp.json()["usage"]["completion_tokens"]


def test_remote_completions_pass_through(http: httpx.Client, upstream: FakeOpenAIUpstream) -> None:
    resp = http.post(
        "/v1/completions",
        json={
            "model": "remote-text",
            "prompt": ["alpha beta gamma", "one two"],
            "max_tokens": 0,
            "logprobs": 1,
            "echo": True,
            "stop": ["x"],
            "seed": 3,
        },
    )
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert [c["text"] for c in out["choices"]] == ["gamma beta alpha", "two one"]
    assert out["choices"][0]["logprobs"] == {
        "tokens": ["gamma ", "beta ", "alpha"],
        "token_logprobs": [-0.5] * 3,
        "top_logprobs": [{"gamma ": -0.5}, {"beta ": -0.5}, {"alpha": -0.5}],
        "text_offset": [0, 6, 11],
    }
    assert out["usage"]["prompt_tokens"] == 5 and out["model"] == "remote-text"
    sent = upstream.one("alpha beta gamma").body
    assert sent["model"] == "completions" and sent["prompt"] == ["alpha beta gamma", "one two"]
    assert (sent["max_tokens"], sent["logprobs"], sent["echo"], sent["stop"], sent["seed"]) == (
        0,
        1,
        True,
        ["x"],
        3,
    )
    with http.stream(
        "POST",
        "/v1/completions",
        json={"model": "remote-text", "prompt": "red green blue", "stream": True, "logprobs": 1},
    ) as streamed:
        chunks = [
            json.loads(line.removeprefix("data: "))
            for line in streamed.iter_lines()
            if line.startswith("data: {")
        ]
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == "blue green red"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_guardrails_read_the_prompt(http: httpx.Client, upstream: FakeOpenAIUpstream) -> None:
    resp = http.post(
        "/v1/completions",
        json={"model": "remote-text", "prompt": "marker-pii write to jane.doe@example.com"},
    )
    assert resp.status_code == 200, resp.text
    sent = upstream.one("marker-pii").body
    assert "jane.doe@example.com" not in json.dumps(sent) and "{EMAIL}" in sent["prompt"]
    blocked = http.post(
        "/v1/completions",
        json={"model": "remote-strict", "prompt": "marker-blocked give me a stock tip"},
    )
    assert blocked.status_code == 200, blocked.text
    choice = blocked.json()["choices"][0]
    assert choice["finish_reason"] == "content_filter"
    assert choice["text"] == "Sorry, I cannot help with that."
    assert not upstream.received("marker-blocked")
    # Token ids cannot be read by guardrails: refused where guardrails apply.
    ids = http.post("/v1/completions", json={"model": "remote-strict", "prompt": [1, 2, 3]})
    assert ids.status_code == 400 and ids.json()["error"]["param"] == "prompt"
    assert "remote-strict" in ids.json()["error"]["message"]


def test_token_id_prompts_count_against_token_limits(server: CumuloServer) -> None:
    """Admission counts a token-id prompt's tokens exactly: a key allowed 200 tokens a
    minute scores one 150-token prompt, and is refused a second one at once."""
    with server.admin() as admin:
        made = admin.post("/admin/keys", json={"name": "tpm", "limits": {"tpm": 200}})
        assert made.status_code == 201, made.text
    auth = {"Authorization": f"Bearer {made.json()['key']}"}
    body = {
        "model": "demo-tiny",
        "prompt": [5 + i % 50 for i in range(150)],
        "max_tokens": 0,
        "echo": True,
        "logprobs": 1,
    }
    first = httpx.post(server.url + "/v1/completions", json=body, headers=auth, timeout=60)
    assert first.status_code == 200, first.text
    second = httpx.post(server.url + "/v1/completions", json=body, headers=auth, timeout=60)
    assert second.status_code == 429, second.text
    assert second.json()["error"]["type"] == "rate_limit_error"
