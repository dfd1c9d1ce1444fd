"""A real vLLM (the CPU build, `make vllm`) started and supervised by `cumulo serve`.

One model, `tiny`, with two deployments in priority order: a vLLM replica cumulo starts,
and cumulo's own local engine on the same weights. The replica is killed while it loads
(it is restarted, and the local engine serves meanwhile), then serves the openai SDK's
calls, then is killed while it serves (calls fail over to the local engine at once, and
the replica comes back). About 3-5 minutes on 2 CPU cores: vLLM starts three times, the
first one compiling.

The model is the demo model widened to a head size of 32: vLLM's CPU attention does not
serve the demo's 16.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from support import CumuloServer, start_cumulo, wait_until

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

if importlib.util.find_spec("vllm") is None:
    if os.environ.get("CUMULO_REQUIRE_VLLM"):
        raise RuntimeError("vLLM is not installed: `make vllm` installs the extra")
    pytest.skip("vLLM is not installed (`make vllm`)", allow_module_level=True)

SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
VLLM_ARGS = [
    "--enforce-eager",  # no CUDA graphs / torch.compile of the model: a faster start
    "--dtype",
    "float32",
    "--max-model-len",
    "1024",
    "--max-num-seqs",
    "8",
    # The KV cache's size, whatever the machine's memory (on the CPU backend
    # --gpu-memory-utilization is a share of the machine's memory, and must be free at start).
    "--kv-cache-memory-bytes",
    str(128 * 2**20),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cumulo.engine.demo import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("vllm") / "tiny", shape=SHAPE)


def test_cumulo_runs_a_real_vllm_replica_restarts_it_and_fails_over(
    tiny_model: Path, tmp_path: Path
) -> None:
    began = time.monotonic()
    config = {
        "models": [
            {
                "name": "tiny",
                "untrained": True,
                "routing": {
                    "strategy": "priority",
                    "backoff_s": 0.01,
                    "timeout_s": 60,
                    "breaker": {"cooldown_s": 1.0},
                },
                "deployments": [
                    {
                        "provider": "vllm",
                        "name": "vllm",
                        "path": str(tiny_model),
                        "args": VLLM_ARGS,
                        "python": sys.executable,
                        "restart_backoff_s": 1.0,
                        "startup_timeout_s": 600,
                    },
                    {
                        "provider": "local",
                        "name": "local",
                        "path": str(tiny_model),
                        "max_running": 4,
                        "max_tokens_in_flight": 4096,
                    },
                ],
            }
        ],
    }
    server = start_cumulo(config, tmp_path, ready_timeout=300)
    try:
        _run(server, began)
    finally:
        server.stop(timeout=90)
    assert "Traceback" not in server.output()


def _run(server: CumuloServer, began: float) -> None:
    client = OpenAI(
        base_url=server.url + "/v1", api_key=server.admin_key, max_retries=0, timeout=120
    )

    def ask(max_tokens: int = 8) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="tiny",
            messages=[{"role": "user", "content": "Hello there"}],
            max_tokens=max_tokens,
        )
        assert raw.parse().choices[0].message.content is not None
        return raw.headers["x-cumulo-deployment"]

    # 1. Killed while it loads: restarted; the local engine serves meanwhile.
    assert wait_until(lambda: (_replica(server).get("pid") or 0) > 0, timeout=60)
    loading = _replica(server)
    assert loading["state"] == "starting", loading
    os.kill(loading["pid"], signal.SIGKILL)
    assert ask() == "local"
    assert wait_until(lambda: _replica(server).get("state") == "ready", timeout=600, interval=1)
    assert _replica(server)["restarts"] == 1
    print(f"\nvLLM ready after a kill mid-load: {time.monotonic() - began:.0f} s", file=sys.stderr)

    # 2. It serves: non-streamed and streamed through the openai SDK, its metrics read.
    assert Counter(ask() for _ in range(5)) == {"vllm": 5}
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert wait_until(lambda: "kv_cache_usage" in _replica(server), timeout=30, interval=0.5)
    stats = _replica(server)
    assert stats["running"] >= 0 and stats["waiting"] >= 0 and 0 <= stats["kv_cache_usage"] <= 1
    assert wait_until(lambda: _replica(server).get("generation_tokens", 0) > 0, timeout=30)

    # 3. Killed while it serves: the calls after it fail over at once, then it comes back.
    errors: list[BaseException] = []
    busy = [threading.Thread(target=_call, args=(client, errors)) for _ in range(4)]
    for t in busy:
        t.start()
    time.sleep(0.3)
    serving = _replica(server)
    os.kill(serving["pid"], signal.SIGKILL)
    for t in busy:
        t.join(120)
    # A call in flight on the killed replica either finished or failed as an upstream error.
    assert all(isinstance(e, openai.APIStatusError | openai.APIError) for e in errors), errors
    assert Counter(ask() for _ in range(3)) == {"local": 3}
    assert wait_until(lambda: _replica(server).get("state") == "ready", timeout=600, interval=1)
    assert _replica(server)["restarts"] == 2 and _replica(server)["pid"] != serving["pid"]
    assert wait_until(lambda: ask() == "vllm", timeout=30, interval=0.5)
    print(f"vLLM test took {time.monotonic() - began:.0f} s", file=sys.stderr)


def _call(client: OpenAI, errors: list[BaseException]) -> None:
    try:
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Tell me more"}],
            max_tokens=600,
        )
    except openai.OpenAIError as exc:
        errors.append(exc)


def _replica(server: CumuloServer) -> dict[str, Any]:
    with httpx.Client(
        base_url=server.url, timeout=10, headers={"Authorization": f"Bearer {server.admin_key}"}
    ) as http:
        rows = http.get("/admin/engine").json()["data"]
    return next(r for r in rows if r.get("engine") == "vllm")
