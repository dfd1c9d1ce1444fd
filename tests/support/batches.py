"""Helpers for batch tests: request files, waiting for a batch to end, reading results."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx

from fakes import FakeOpenAIUpstream
from support.cumulo import CumuloServer, openai_deployment

ENDED = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, model: str, text: str, **body: Any) -> str:
    return json.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
        }
    )


def jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def wait_batch(
    http: httpx.Client,
    batch_id: str,
    until: tuple[str, ...] = ENDED,
    timeout: float = 120,
    done_at_least: int | None = None,
) -> dict[str, Any]:
    """The batch once its status is in `until` (or `done_at_least` lines are finished)."""
    deadline = time.monotonic() + timeout
    while True:
        b = http.get(f"/v1/batches/{batch_id}").json()
        counts = b["request_counts"]
        if b["status"] in until:
            return b
        if done_at_least is not None and counts["completed"] + counts["failed"] >= done_at_least:
            return b
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} did not get there in {timeout} s: {b}")
        time.sleep(0.1)


def result_lines(http: httpx.Client, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    resp = http.get(f"/v1/files/{file_id}/content")
    assert resp.status_code == 200, resp.text
    return [json.loads(line) for line in resp.text.splitlines() if line]


def custom_ids(lines: list[dict[str, Any]]) -> Counter[str]:
    return Counter(line["custom_id"] for line in lines)


NO_RETRY = {"retries": 0, "breaker": {"consecutive_failures": 1_000_000, "error_rate": 1.0}}
PRICE = {"input_per_mtok": 100_000.0, "output_per_mtok": 100_000.0}  # $0.1 a token


def batch_config(upstream: FakeOpenAIUpstream, **jobs: Any) -> dict[str, Any]:
    def chat(name: str, model: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "chat",
            "routing": NO_RETRY,
            "deployments": [openai_deployment(upstream, model, **extra)],
        }

    return {
        "usage": {"flush_interval_s": 0.1},
        "jobs": {"poll_interval_s": 0.2, "lease_s": 3, **jobs},
        "models": [
            chat("chat-echo", "echo"),
            chat("chat-slow", "slow:0.3"),
            chat("chat-slower", "slow:20"),
            chat("chat-upstream-400", "status:400"),
            chat("chat-priced", "echo", price=PRICE),
            {**chat("chat-private", "echo"), "guardrails": ["pii-anonymize"]},
            {
                "name": "embed",
                "kind": "embedding",
                "routing": NO_RETRY,
                "deployments": [openai_deployment(upstream, "embed")],
            },
        ],
    }


def new_key(server: CumuloServer, name: str, **fields: Any) -> tuple[str, str]:
    with server.admin() as admin:
        resp = admin.post("/admin/keys", json={"name": name, "role": "caller", **fields})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"], resp.json()["key"]


def submit(
    http: httpx.Client, data: bytes, endpoint: str = "/v1/chat/completions", **extra: Any
) -> dict[str, Any]:
    up = http.post("/v1/files", files={"file": ("in.jsonl", data)}, data={"purpose": "batch"})
    assert up.status_code == 200, up.text
    resp = http.post(
        "/v1/batches",
        json={
            "input_file_id": up.json()["id"],
            "endpoint": endpoint,
            "completion_window": "24h",
            **extra,
        },
    )
    assert resp.status_code == 200, resp.text
    return dict(resp.json())
