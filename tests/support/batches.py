"""Helpers for batch tests: request files, waiting for a batch to end, reading results."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx

ENDED = ("completed", "failed", "expired", "cancelled")


def chat_line(custom_id: str, model: str, text: str, **body: Any) -> str:
    return json.dumps({
        "custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    })


def jsonl(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode()


def wait_batch(http: httpx.Client, batch_id: str, until: tuple[str, ...] = ENDED,
               timeout: float = 120, done_at_least: int | None = None) -> dict[str, Any]:
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
