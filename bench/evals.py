"""Evals: generation items/s of eval runs vs the same requests from a client, and grading
time per item of each grader kind inside a run, in one run of this script.

    . .venv/bin/activate
    python bench/evals.py                        # a few minutes
    python bench/evals.py --items 1000 --concurrency 32 --rounds 3

Starts `bench/upstream.py` (the fast fake upstream: a fixed answer, streamed when asked;
a judge's verdict to models named `*judge*`; fixed embedding vectors) and `cumulo serve`
in front of it with three chat models (`bench-a`, `bench-b`, `bench-c`), a judge model
and an embedding model, on `jobs.concurrency` = `jobs.batch_concurrency` = C.

(a) generation. An eval of N items (`string_check`) runs over the three models: one upload
    of the items (purpose `evals`), three runs created at once, polled every `--poll` s
    until all completed; the clock runs from the upload to the last run completed. Its
    baseline, in the same round: the same 3N chat requests (the template rendered over each
    item, the run's sampling parameters, streamed as the runs stream) sent by an aiohttp
    client to cumulo's `/v1/chat/completions` with C requests at once. Items/s of each and
    eval/client: the median of the rounds' ratios (each round runs both, in alternating
    order). Target >= 0.9x. For scale, the same client straight to the upstream (no cumulo).
(b) grading. For each grader kind, a `jsonl` run (samples given, nothing generated) of the
    N items with that one criterion; per item: the run's wall time / N and cumulo's CPU
    time / N, and the CPU it adds over the `string_check` run (the runner's own cost per
    item, the floor). `bench/eval_graders.py` times the graders in-process against their
    libraries called directly. `label_model`, `score_model`
    and `cosine` call the fake judge and embedding model through the gateway, so theirs
    include a gateway call to the fast upstream. meteor is included when WordNet is there.

cumulo's CPU per item (from /proc) is printed next to each figure: it moves less with the
machine's other load than a rate does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from gateway import HOST, Procs, cpu_seconds, free_port, http, wait_until

HERE = Path(__file__).resolve().parent
ADMIN_KEY = "bench-admin-key-not-secret"
MODELS = ("bench-a", "bench-b", "bench-c")
SYSTEM = "Answer in one short sentence."
ANSWER = "Hello! How can I help you today?"  # what the fake upstream says
SCHEMA = {
    "type": "object",
    "properties": {"input": {"type": "string"}, "ideal": {"type": "string"}},
    "required": ["input", "ideal"],
}
MAX_TOKENS = 16


def items(n: int) -> list[dict[str, Any]]:
    return [
        {"input": f"Say hello to visitor number {i} of the cloud museum.", "ideal": ANSWER}
        for i in range(n)
    ]


def criterion(kind: str) -> dict[str, Any]:
    io = {"input": "{{sample.output_text}}", "reference": "{{item.ideal}}"}
    if kind == "string_check":
        return {"type": kind, "name": kind, **io, "operation": "eq"}
    if kind in ("label_model", "score_model"):
        extra: dict[str, Any] = (
            {"labels": ["correct", "wrong"], "passing_labels": ["correct"]}
            if kind == "label_model"
            else {"range": [0, 1], "pass_threshold": 0.5}
        )
        return {
            "type": kind,
            "name": kind,
            "model": "bench-judge",
            **extra,
            "input": [
                {
                    "role": "user",
                    "content": "Answer: {{sample.output_text}}\nReference: "
                    "{{item.ideal}}\nIs the answer right?",
                }
            ],
        }
    return {
        "type": "text_similarity",
        "name": kind,
        **io,
        "evaluation_metric": kind,
        "pass_threshold": 0.5,
        **({"model": "bench-embed"} if kind == "cosine" else {}),
    }


def config(upstream: str, c: int) -> str:
    def model(name: str, kind: str = "chat") -> str:
        return (
            f"  - name: {name}\n    kind: {kind}\n    deployments:\n"
            f"      - provider: openai\n        model: {name}\n        base_url: {upstream}\n"
        )

    return (
        f"jobs: {{concurrency: {c}, batch_concurrency: {c}, poll_interval_s: 0.2}}\n"
        "usage: {flush_interval_s: 0.5}\nmodels:\n"
        + "".join(model(m) for m in (*MODELS, "bench-judge"))
        + model("bench-embed", "embedding")
    )


def start_cumulo(procs: Procs, tmp: Path, cfg: str) -> tuple[str, str, int]:
    (tmp / "cumulo.yaml").write_text(cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env.update(CUMULO_HOME=str(tmp / "home"), CUMULO_ADMIN_KEY=ADMIN_KEY)
    port = free_port()
    argv = [
        sys.executable,
        "-c",
        "from cumulo.cli import main; main()",
        "serve",
        "--config",
        str(tmp / "cumulo.yaml"),
        "--port",
        str(port),
        "--workers",
        "1",
        "--log-level",
        "warning",
    ]
    proc = procs.start("cumulo", argv, env=env)
    url = f"http://{HOST}:{port}"
    wait_until(procs, "cumulo", lambda: http("GET", url + "/health/ready")[0] == 200, timeout=300)
    status, raw = http(
        "POST", url + "/admin/keys", json.dumps({"name": "bench"}).encode(), ADMIN_KEY
    )
    if status != 201:
        raise RuntimeError(f"creating a key answered {status}: {raw[:300]!r}")
    return url, json.loads(raw)["key"], proc.pid


# -- the client baseline -----------------------------------------------------------------


def chat_bodies(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The requests the three runs send: the template over each item, for each model."""
    return [
        {
            "model": m,
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": r["input"]},
            ],
            "temperature": 0.0,
            "max_tokens": MAX_TOKENS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for m in MODELS
        for r in rows
    ]


async def client_run(url: str, key: str | None, bodies: list[dict[str, Any]], c: int) -> float:
    """Send `bodies` (streamed) with `c` at once, reading each stream to its end; seconds."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    queue = list(reversed(bodies))

    async def one(session: aiohttp.ClientSession) -> None:
        while queue:
            body = queue.pop()
            async with session.post(
                url + "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"{resp.status}: {(await resp.text())[:300]}")
                text = (await resp.read()).decode()
                if "[DONE]" not in text:
                    raise RuntimeError(f"a stream without its end: {text[:300]}")

    conn = aiohttp.TCPConnector(limit=c)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(600)) as s:
        start = time.perf_counter()
        await asyncio.gather(*(one(s) for _ in range(c)))
        return time.perf_counter() - start


# -- eval runs -------------------------------------------------------------------------


class Evals:
    def __init__(self, url: str, key: str, poll: float) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}"}
        self.poll = poll

    async def _json(
        self, s: aiohttp.ClientSession, method: str, path: str, **kw: Any
    ) -> dict[str, Any]:
        async with s.request(method, self.url + path, **kw) as resp:
            data: dict[str, Any] = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path}: {resp.status} {data}")
            return data

    async def create(self, criteria: list[dict[str, Any]], sample: bool = False) -> str:
        async with aiohttp.ClientSession(headers=self.headers) as s:
            ev = await self._json(
                s,
                "POST",
                "/v1/evals",
                json={
                    "name": "bench",
                    "data_source_config": {
                        "type": "custom",
                        "item_schema": SCHEMA,
                        "include_sample_schema": sample,
                    },
                    "testing_criteria": criteria,
                },
            )
            return str(ev["id"])

    async def run(
        self, eval_id: str, rows: list[dict[str, Any]], models: tuple[str, ...] | None
    ) -> float:
        """Upload the rows, create one run per model (none: one `jsonl` run), wait for all
        to complete; seconds from the upload."""
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        async with aiohttp.ClientSession(headers=self.headers) as s:
            start = time.perf_counter()
            form = aiohttp.FormData()
            form.add_field("purpose", "evals")
            form.add_field("file", data, filename="items.jsonl")
            up = await self._json(s, "POST", "/v1/files", data=form)
            source = {"type": "file_id", "id": up["id"]}
            if models is None:
                sources: list[dict[str, Any]] = [{"type": "jsonl", "source": source}]
            else:
                sources = [
                    {
                        "type": "completions",
                        "model": m,
                        "source": source,
                        "input_messages": {
                            "type": "template",
                            "template": [
                                {"role": "system", "content": SYSTEM},
                                {"role": "user", "content": "{{item.input}}"},
                            ],
                        },
                        "sampling_params": {"temperature": 0, "max_completion_tokens": MAX_TOKENS},
                    }
                    for m in models
                ]
            runs = [
                await self._json(s, "POST", f"/v1/evals/{eval_id}/runs", json={"data_source": d})
                for d in sources
            ]
            left = {r["id"] for r in runs}
            while left:
                await asyncio.sleep(self.poll)
                for run_id in list(left):
                    run = await self._json(s, "GET", f"/v1/evals/{eval_id}/runs/{run_id}")
                    if run["status"] in ("failed", "canceled"):
                        raise RuntimeError(f"run {run_id} {run['status']}: {run.get('error')}")
                    if run["status"] == "completed":
                        counts = run["result_counts"]
                        if counts["errored"] or counts["total"] != len(rows):
                            raise RuntimeError(f"run {run_id}: {counts}")
                        left.discard(run_id)
            return time.perf_counter() - start


def measured(pid: int, fn: Any) -> tuple[float, float]:
    """(seconds, cumulo CPU seconds) of running the coroutine `fn()`."""
    before = cpu_seconds(pid) or 0.0
    took = asyncio.run(fn())
    return took, (cpu_seconds(pid) or 0.0) - before


def bench(args: argparse.Namespace, tmp: Path) -> None:
    procs = Procs(tmp)
    try:
        port = free_port()
        procs.start("upstream", [sys.executable, str(HERE / "upstream.py"), "--port", str(port)])
        upstream = f"http://{HOST}:{port}"
        wait_until(
            procs,
            "upstream",
            lambda: http("POST", upstream + "/v1/chat/completions", b"{}")[0] == 200,
        )
        c = args.concurrency
        url, key, pid = start_cumulo(procs, tmp, config(upstream + "/v1", c))
        rows = items(args.items)
        bodies = chat_bodies(rows)
        ev = Evals(url, key, args.poll)
        eval_id = asyncio.run(ev.create([criterion("string_check")]))
        asyncio.run(client_run(url, key, bodies[:300], c))  # warm-up
        asyncio.run(ev.run(eval_id, rows[:50], MODELS))
        rates: dict[str, list[float]] = {"eval": [], "client": [], "upstream": []}
        cpu: dict[str, list[float]] = {"eval": [], "client": []}
        n = len(bodies)
        for r in range(args.rounds):
            order = ("client", "eval") if r % 2 == 0 else ("eval", "client")
            for name in (*order, "upstream"):
                if name == "eval":
                    took, used = measured(pid, lambda: ev.run(eval_id, rows, MODELS))
                elif name == "client":
                    took, used = measured(pid, lambda: client_run(url, key, bodies, c))
                else:
                    took, used = asyncio.run(client_run(upstream, None, bodies, c)), 0.0
                rates[name].append(n / took)
                if name in cpu:
                    cpu[name].append(used / n * 1e6)
                extra = f", cumulo CPU {cpu[name][-1]:5.0f} us/item" if name in cpu else ""
                print(f"  {name:8} round {r + 1}: {n / took:7.0f} items/s{extra}", flush=True)
        ratio = statistics.median(
            e / cl for e, cl in zip(rates["eval"], rates["client"], strict=True)
        )
        print(
            f"(a) {args.items} items x {len(MODELS)} models, fast upstream, concurrency {c}: "
            f"eval runs {statistics.median(rates['eval']):.0f} items/s, client through "
            f"cumulo {statistics.median(rates['client']):.0f} items/s, eval/client "
            f"{ratio:.2f}x (median of the rounds' ratios; target >= 0.9x); client straight "
            f"to the upstream {statistics.median(rates['upstream']):.0f} items/s; cumulo CPU "
            f"per item: eval {statistics.median(cpu['eval']):.0f} us, client "
            f"{statistics.median(cpu['client']):.0f} us",
            flush=True,
        )

        if args.only == "generation":
            procs.check_alive()
            return
        from cumulo.evals.criteria import SIMILARITY
        from cumulo.evals.graders import meteor_available

        metrics = [m for m in SIMILARITY if m != "meteor" or meteor_available()]
        kinds = ["string_check", *metrics, "label_model", "score_model"]
        sampled = [{"item": r, "sample": {"output_text": ANSWER}} for r in rows]
        evals = {k: asyncio.run(ev.create([criterion(k)], sample=True)) for k in kinds}
        for k in kinds:  # imports, scorers and connections made once, outside the clock
            asyncio.run(ev.run(evals[k], sampled[:20], None))
        times: dict[str, list[float]] = {k: [] for k in kinds}
        cpus: dict[str, list[float]] = {k: [] for k in kinds}
        for r in range(args.grading_rounds):
            # each round starts one kind further on, so that no kind always runs first
            # (after the generation rounds' writes) or after the same one
            for k in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
                took, used = measured(pid, lambda k=k: ev.run(evals[k], sampled, None))
                times[k].append(took / len(rows))
                cpus[k].append(used / len(rows))
        procs.check_alive()
    finally:
        procs.stop_all()
    floor = statistics.median(times["string_check"])
    floor_cpu = statistics.median(cpus["string_check"])
    print(
        f"(b) grading, jsonl runs of {args.items} items, one criterion each (median of "
        f"{args.grading_rounds} rounds); a run's own cost per item (string_check): "
        f"{floor * 1e6:.0f} us wall, {floor_cpu * 1e6:.0f} us cumulo CPU. The wall time of a "
        "run is mostly the runner's (claims, writes, polls) and moves with the machine's "
        "load; the CPU added over string_check is the grader's own cost"
    )
    print(f"    {'grader':14} {'run us/item':>12} {'CPU us/item':>12} {'CPU added':>10}")
    for k in kinds:
        t, u = statistics.median(times[k]), statistics.median(cpus[k])
        print(f"    {k:14} {t * 1e6:12.0f} {u * 1e6:12.0f} {(u - floor_cpu) * 1e6:10.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description="Eval runs: generation and grading speed.")
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--grading-rounds", type=int, default=3)
    parser.add_argument("--only", choices=("generation",), help="(a) alone")
    parser.add_argument(
        "--poll", type=float, default=0.1, help="seconds between polls of each run's status"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-evals-") as d:
        bench(args, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
