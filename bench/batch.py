"""Batches: throughput through the job runner vs the same requests from a client, and
interactive time to first token on a local model while a batch runs.

    . .venv/bin/activate
    python bench/batch.py                      # all three, a few minutes
    python bench/batch.py --only upstream --lines 10000 --concurrency 32
    python bench/batch.py --only local --model-dir ~/.cache/cumulo-bench/qwen05b

(a) upstream: `bench/upstream.py` (the fast fake upstream) behind `cumulo serve`. The same
    N chat requests are sent (1) by an aiohttp client at C concurrent requests to
    `/v1/chat/completions`, and (2) as one batch with `concurrency: C` (upload, create, poll
    until completed; the clock runs from the upload to completed, validation and output
    file included). Lines/s of each, and batch/client: the median of the rounds' ratios
    (each round runs both, in alternating order). Target >= 0.9x.
(b) local: a local chat model (default: the demo model, built offline into a temp dir;
    `--model-dir` for another) with `max_running: 16`. Completion tokens/s of a batch of L
    lines (`concurrency: 16`) vs the same L requests from 16 concurrent interactive clients.
    Target >= 0.9x. Each round runs the batch, then the interactive clients, and the
    ratio is the median of the rounds' ratios (the machine's load drifts less within a
    round). A round starts `RESERVE_S` after the last interactive request: while they come,
    the engine keeps one slot free of batch lines, and (b) is about a batch running alone
    ((c) is the mix).
(c) local, time to first token of interactive streaming requests, one after another: on the
    idle server, then while a batch runs. During/idle p50. Target <= 2x.

Everything runs in one process tree on this machine, in the same run; compare ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from cumulo.engine.scheduler import RESERVE_S
from gateway import HOST, Procs, cpu_seconds, free_port, http, wait_until

ADMIN_KEY = "bench-admin-key-not-secret"
HERE = Path(__file__).resolve().parent


def cumulo_argv() -> list[str]:
    py = sys.executable
    cumulo = shutil.which("cumulo", path=str(Path(py).parent)) or shutil.which("cumulo")
    return [cumulo] if cumulo else [py, "-c", "from cumulo.cli import main; main()"]


def start_cumulo(procs: Procs, tmp: Path, name: str, config: str) -> tuple[str, str, int]:
    """`cumulo serve` with `config`; its base URL, a caller key and its pid."""
    (tmp / f"{name}.yaml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env.update(CUMULO_HOME=str(tmp / f"{name}-home"), CUMULO_ADMIN_KEY=ADMIN_KEY)
    port = free_port()
    proc = procs.start(
        name,
        [
            *cumulo_argv(),
            "serve",
            "--config",
            str(tmp / f"{name}.yaml"),
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    url = f"http://{HOST}:{port}"
    wait_until(procs, name, lambda: http("GET", url + "/health/ready")[0] == 200, timeout=600)
    status, raw = http(
        "POST", url + "/admin/keys", json.dumps({"name": "bench"}).encode(), ADMIN_KEY
    )
    if status != 201:
        raise RuntimeError(f"creating a key answered {status}: {raw[:300]!r}")
    return url, json.loads(raw)["key"], proc.pid


def chat_body(model: str, i: int, max_tokens: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {
                "role": "user",
                "content": f"Write a short story about clouds and the sea, number {i}.",
            }
        ],
    }
    if max_tokens is not None:
        body |= {"max_tokens": max_tokens, "temperature": 0}
    return body


async def client_run(
    url: str, key: str, bodies: list[dict[str, Any]], concurrency: int
) -> tuple[float, int]:
    """Send `bodies` with `concurrency` at once; (seconds, completion tokens)."""
    headers = {"Authorization": f"Bearer {key}"}
    queue = list(reversed(bodies))
    tokens = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        while queue:
            body = queue.pop()
            async with session.post(
                url + "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                data = await resp.json()
                if resp.status != 200:
                    raise RuntimeError(f"{resp.status}: {str(data)[:300]}")
                tokens += data["usage"]["completion_tokens"]

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(600)) as s:
        start = time.perf_counter()
        await asyncio.gather(*(one(s) for _ in range(concurrency)))
        return time.perf_counter() - start, tokens


async def submit_batch(url: str, key: str, bodies: list[dict[str, Any]], concurrency: int) -> str:
    lines = "".join(
        json.dumps(
            {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
        )
        + "\n"
        for i, b in enumerate(bodies)
    )
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", lines.encode(), filename="bench.jsonl")
        async with s.post(url + "/v1/files", data=form) as resp:
            up = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"upload: {resp.status} {up}")
        body = {
            "input_file_id": up["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "concurrency": concurrency,
        }
        async with s.post(url + "/v1/batches", json=body) as resp:
            b = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"create: {resp.status} {b}")
        return str(b["id"])


async def wait_batch(url: str, key: str, batch_id: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(headers=headers) as s:
        while True:
            async with s.get(f"{url}/v1/batches/{batch_id}") as resp:
                b: dict[str, Any] = await resp.json()
            if b["status"] in ("completed", "failed", "expired", "cancelled"):
                return b
            await asyncio.sleep(0.05)


async def batch_run(
    url: str, key: str, bodies: list[dict[str, Any]], concurrency: int
) -> tuple[float, int]:
    """Run `bodies` as a batch; (seconds from create to completed, completion tokens)."""
    start = time.perf_counter()
    batch_id = await submit_batch(url, key, bodies, concurrency)
    b = await wait_batch(url, key, batch_id)
    took = time.perf_counter() - start
    if b["status"] != "completed" or b["request_counts"]["failed"]:
        raise RuntimeError(f"batch ended {b['status']}: {b['request_counts']} {b.get('errors')}")
    tokens = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.get(f"{url}/v1/files/{b['output_file_id']}/content") as resp,
    ):
        for line in (await resp.text()).splitlines():
            tokens += json.loads(line)["response"]["body"]["usage"]["completion_tokens"]
    return took, tokens


async def ttft(url: str, key: str, model: str, i: int, max_tokens: int) -> float:
    body = chat_body(model, 1000 + i, max_tokens) | {"stream": True}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        start = time.perf_counter()
        async with s.post(url + "/v1/chat/completions", json=body) as resp:
            async for raw in resp.content:
                line = raw.decode().strip()
                if (
                    line.startswith("data: {")
                    and '"content":"' in line
                    and '"content":""' not in line
                ):
                    return time.perf_counter() - start
    raise RuntimeError("the stream ended without a token")


def bench_upstream(args: argparse.Namespace, tmp: Path) -> None:
    procs = Procs(tmp)
    try:
        port = free_port()
        procs.start("upstream", [sys.executable, str(HERE / "upstream.py"), "--port", str(port)])
        wait_until(
            procs,
            "upstream",
            lambda: http("POST", f"http://{HOST}:{port}/v1/chat/completions", b"{}")[0] == 200,
        )
        c = args.concurrency
        url, key, pid = start_cumulo(
            procs,
            tmp,
            "cumulo-upstream",
            (
                f"jobs: {{concurrency: {c}, batch_concurrency: {c}, poll_interval_s: 0.2}}\n"
                "models:\n  - name: bench-model\n    deployments:\n      - provider: openai\n"
                f"        model: gpt-bench\n        base_url: http://{HOST}:{port}/v1\n"
            ),
        )
        bodies = [chat_body("bench-model", i) for i in range(args.lines)]
        asyncio.run(client_run(url, key, bodies[:200], c))  # warm-up
        results: dict[str, list[float]] = {"client": [], "batch": []}
        cpu: dict[str, list[float]] = {"client": [], "batch": []}
        for r in range(args.rounds):  # alternated, so the machine's load hits both alike
            order = ("client", "batch") if r % 2 == 0 else ("batch", "client")
            for name in order:
                run = client_run if name == "client" else batch_run
                before = cpu_seconds(pid) or 0.0
                took, _ = asyncio.run(run(url, key, bodies, c))
                used = (cpu_seconds(pid) or 0.0) - before
                results[name].append(len(bodies) / took)
                cpu[name].append(used / len(bodies) * 1e6)
                print(
                    f"  {name:6} round {r + 1}: {len(bodies) / took:8.0f} lines/s, cumulo "
                    f"CPU {cpu[name][-1]:5.0f} us/line",
                    flush=True,
                )
        procs.check_alive()
    finally:
        procs.stop_all()
    client, batch = statistics.median(results["client"]), statistics.median(results["batch"])
    ratio = statistics.median(
        b / c for b, c in zip(results["batch"], results["client"], strict=True)
    )
    print(
        f"(a) {args.lines} chat lines, fast upstream, concurrency {c}: "
        f"client {client:.0f} lines/s, batch {batch:.0f} lines/s, "
        f"batch/client {ratio:.2f}x (median of the rounds' ratios; target >= 0.9x); "
        "cumulo CPU per line: client "
        f"{statistics.median(cpu['client']):.0f} us, batch {statistics.median(cpu['batch']):.0f} us"
    )


def local_model(args: argparse.Namespace, tmp: Path) -> Path:
    if args.model_dir is not None:
        return Path(args.model_dir)
    from cumulo.engine.demo import build_demo_model

    return build_demo_model(tmp / "demo-model", seed=0)


def bench_local(args: argparse.Namespace, tmp: Path) -> None:
    model_dir = local_model(args, tmp)
    bc = args.batch_concurrency
    procs = Procs(tmp)
    try:
        url, key, _ = start_cumulo(
            procs,
            tmp,
            "cumulo-local",
            (
                f"jobs: {{concurrency: {bc}, batch_concurrency: {bc}, poll_interval_s: 0.2}}\n"
                "models:\n  - name: local-chat\n    kind: chat\n    untrained: true\n"
                f"    deployments:\n      - provider: local\n        path: {model_dir}\n"
                "        max_running: 16\n"
            ),
        )
        n, tokens = args.local_lines, args.local_tokens
        bodies = [chat_body("local-chat", i, tokens) for i in range(n)]
        asyncio.run(client_run(url, key, bodies[:16], 16))  # warm-up
        rates: dict[str, list[float]] = {"interactive": [], "batch": []}
        for r in range(args.rounds):
            # Batch first: recent interactive traffic would make the engine keep a slot free.
            time.sleep(RESERVE_S + 1)
            for name in ("batch", "interactive"):
                if name == "batch":
                    took, made = asyncio.run(batch_run(url, key, bodies, bc))
                else:
                    took, made = asyncio.run(client_run(url, key, bodies, 16))
                rates[name].append(made / took)
                print(
                    f"  {name:11} round {r + 1}: {made / took:8.1f} tokens/s "
                    f"({made} tokens, {took:.1f} s)",
                    flush=True,
                )
        ratio = statistics.median(
            b / i for b, i in zip(rates["batch"], rates["interactive"], strict=True)
        )
        inter, batch = statistics.median(rates["interactive"]), statistics.median(rates["batch"])
        print(
            f"(b) local model, {n} requests x {tokens} tokens: 16 interactive clients "
            f"{inter:.1f} tok/s, batch (concurrency {bc}) {batch:.1f} tok/s, "
            f"batch/interactive {ratio:.2f}x (median of the rounds' ratios; target >= 0.9x)",
            flush=True,
        )

        k = args.ttft_requests
        idle = [asyncio.run(ttft(url, key, "local-chat", i, 8)) for i in range(k)]

        async def during() -> list[float]:
            big = [chat_body("local-chat", i, tokens) for i in range(n * 4)]
            batch_id = await submit_batch(url, key, big, bc)
            headers = {"Authorization": f"Bearer {key}"}
            async with aiohttp.ClientSession(headers=headers) as s:
                while True:  # until the batch's lines run
                    async with s.get(f"{url}/v1/batches/{batch_id}") as resp:
                        b = await resp.json()
                    if b["status"] == "in_progress" and b["request_counts"]["completed"] >= 16:
                        break
                    await asyncio.sleep(0.05)
            out = [await ttft(url, key, "local-chat", i, 8) for i in range(k)]
            async with aiohttp.ClientSession(headers=headers) as s:
                async with s.get(f"{url}/v1/batches/{batch_id}") as resp:
                    b = await resp.json()
                if b["status"] != "in_progress":
                    print(f"  (warning: the batch was {b['status']} before the last request)")
                await s.post(f"{url}/v1/batches/{batch_id}/cancel")
            return out

        busy = asyncio.run(during())
        procs.check_alive()
    finally:
        procs.stop_all()
    i50, b50 = statistics.median(idle), statistics.median(busy)
    print(
        f"(c) interactive TTFT on the local model, {k} requests one after another: idle "
        f"p50 {i50 * 1000:.0f} ms, during a batch p50 {b50 * 1000:.0f} ms, "
        f"during/idle {b50 / i50:.2f}x (target <= 2x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="Batch throughput and interactive priority.")
    parser.add_argument("--only", choices=("upstream", "local"))
    parser.add_argument("--lines", type=int, default=10_000, help="(a) chat lines")
    parser.add_argument("--concurrency", type=int, default=32, help="(a) requests at once")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each")
    parser.add_argument("--model-dir", help="(b, c) a local chat model [default: demo model]")
    parser.add_argument("--local-lines", type=int, default=512, help="(b) requests")
    parser.add_argument("--local-tokens", type=int, default=48, help="(b) max_tokens each")
    parser.add_argument(
        "--batch-concurrency",
        type=int,
        default=16,
        help="(b, c) the batch's lines in flight (the engine runs 16 at once)",
    )
    parser.add_argument("--ttft-requests", type=int, default=20, help="(c) requests")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-batch-") as d:
        tmp = Path(d)
        if args.only in (None, "upstream"):
            bench_upstream(args, tmp)
        if args.only in (None, "local"):
            bench_local(args, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
