"""A fake upstream with known answers for eval tests, and helpers to wait for runs.

Models (the deployment's upstream model id):

    quiz:<p>       answers "What is A + B?" with A + B when A % 10 < p / 10, else
                   A + B + 1: right on exactly p% of ten consecutive As; streams in
                   two pieces, with usage
    quiz-loose:<p> like quiz:<p>, reading "what is A + B" in any case and spacing (but
                   not misspelt): unmoved by lower case and extra whitespace, lost to typos
    quiz-slow:<s>  like quiz:100, after <s> seconds
    pick-first     answers the first of the options listed after "Options: " (a JSON
                   array): right while the right option comes first
    judge:label    reads "answer: X, expected: Y" in the prompt; {"label": "correct"} when
                   X == Y, else "Label: wrong"
    judge:score    the same, "Score: 0.9" or "I would say 0.2"
    judge:garbage  "I cannot decide." (no label, no score)
    judge:rubric   promptfoo's llm-rubric exchange: reads the last "<Output>X</Output>" and
                   "<Rubric>... Y</Rubric>" (Y its last word) of the last user message;
                   {"reason", "pass", "score"} as JSON, passing when X == Y
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import httpx
from aiohttp import web

from fakes import FakeOpenAIUpstream
from fakes.openai_upstream import last_user_text
from support.cumulo import openai_deployment

QUESTION = re.compile(r"What is (\d+) \+ (\d+)\?")
LOOSE = re.compile(r"what\s+is\s+(\d+)\s*\+\s*(\d+)\s*\?", re.IGNORECASE)
OPTIONS = re.compile(r"Options: (\[.*\])", re.IGNORECASE)
JUDGED = re.compile(r"answer: (.*?), expected: (.*?)(?:$|\n)")
RUBRIC = re.compile(r"<Output>\s*(.*?)\s*</Output>\s*<Rubric>\s*(.*?)\s*</Rubric>", re.S)
ENDED = ("completed", "failed", "canceled")


def quiz_answer(text: str, percent: int, loose: bool = False) -> str:
    m = (LOOSE if loose else QUESTION).search(text)
    if m is None:
        return "I do not know."
    a, b = (int(g) for g in m.groups())
    return str(a + b if a % 10 < percent // 10 else a + b + 1)


def rubric_answer(text: str) -> str:
    found = RUBRIC.findall(text)
    ok = bool(found) and found[-1][0].strip() == found[-1][1].split()[-1].strip(".")
    return json.dumps({"reason": "compared", "pass": ok, "score": 1.0 if ok else 0.0})


def judge_answer(text: str, how: str) -> str:
    if how == "garbage":
        return "I cannot decide."
    m = JUDGED.search(text)
    right = m is not None and m.group(1).strip() == m.group(2).strip()
    if how == "label":
        return '{"label": "correct"}' if right else "Label: wrong"
    return "Score: 0.9" if right else "I would say 0.2"


class QuizUpstream(FakeOpenAIUpstream):
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw)
        model = str(body.get("model", ""))
        behaviour, _, arg = model.partition(":")
        if behaviour not in ("quiz", "quiz-loose", "quiz-slow", "judge", "pick-first"):
            return await super()._handle(_Replay(request, raw))  # type: ignore[arg-type]
        text = last_user_text(body)
        if behaviour == "quiz-slow":
            await asyncio.sleep(float(arg))
            answer = quiz_answer(text, 100)
        elif behaviour in ("quiz", "quiz-loose"):
            answer = quiz_answer(text, int(arg), loose=behaviour == "quiz-loose")
        elif behaviour == "pick-first":
            m = OPTIONS.search(text)
            answer = str(json.loads(m.group(1))[0]) if m else "no options"
        elif arg == "rubric":
            answer = rubric_answer(text)
        else:
            answer = judge_answer("\n".join(m.get("content") or "" for m in body["messages"]), arg)
        with self._lock:
            self.requests.append(_recorded(request, body))
        usage = {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-quiz",
                    "object": "chat.completion",
                    "created": 1,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": answer},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish: str | None, u: Any = None) -> bytes:
            c = {
                "id": "chatcmpl-quiz",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if u is not None:
                c = {**c, "choices": [], "usage": u}
            return b"data: " + json.dumps(c).encode() + b"\n\n"

        half = len(answer) // 2
        await resp.write(chunk({"role": "assistant", "content": answer[:half]}, None))
        await resp.write(chunk({"content": answer[half:]}, None))
        await resp.write(chunk({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(chunk({}, None, usage))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def answered(self, needle: str) -> int:
        with self._lock:
            return sum(needle in json.dumps(r.body) for r in self.requests)


class _Replay:
    """The request again, its body already read."""

    def __init__(self, request: web.Request, raw: bytes) -> None:
        self._request = request
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    async def read(self) -> bytes:
        return self._raw


def _recorded(request: web.Request, body: Any) -> Any:
    from fakes.openai_upstream import Recorded

    return Recorded(
        request.method,
        request.path,
        dict(request.query),
        {k.lower(): v for k, v in request.headers.items()},
        body,
    )


NO_RETRY = {"retries": 0, "breaker": {"consecutive_failures": 1_000_000, "error_rate": 1.0}}
PRICE = {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}


def eval_config(upstream: FakeOpenAIUpstream, **jobs: Any) -> dict[str, Any]:
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
            chat("quiz-80", "quiz:80", price=PRICE),
            chat("quiz-50", "quiz:50", price=PRICE),
            chat("quiz-loose", "quiz-loose:80", price=PRICE),
            chat("pick-first", "pick-first"),
            chat("quiz-slow", "quiz-slow:0.4"),
            chat("judge-label", "judge:label", price=PRICE),
            chat("judge-score", "judge:score"),
            chat("judge-garbage", "judge:garbage"),
            chat("judge-rubric", "judge:rubric"),
            {
                "name": "embed",
                "kind": "embedding",
                "routing": NO_RETRY,
                "deployments": [openai_deployment(upstream, "embed")],
            },
        ],
    }


def quiz_items(n: int, tag: str = "") -> list[dict[str, Any]]:
    """Item i asks "What is i + 2i? (#i)"; its answer is 3i."""
    return [
        {"item": {"question": f"{tag}What is {i} + {2 * i}? (#{i})", "answer": str(3 * i)}}
        for i in range(n)
    ]


ITEM_SCHEMA = {
    "type": "object",
    "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["question", "answer"],
}
TEMPLATE = [
    {"role": "system", "content": "Answer with the number only."},
    {"role": "user", "content": "{{item.question}}"},
]


def wait_run(
    http: httpx.Client,
    eval_id: str,
    run_id: str,
    until: tuple[str, ...] = ENDED,
    timeout: float = 120,
    done_at_least: int | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = http.get(f"/v1/evals/{eval_id}/runs/{run_id}")
        assert r.status_code == 200, r.text
        run = r.json()
        if run["status"] in until:
            return dict(run)
        if done_at_least is not None and run["progress"]["done"] >= done_at_least:
            return dict(run)
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} did not get there in {timeout} s: {run}")
        time.sleep(0.1)
