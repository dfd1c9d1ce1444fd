"""The traffic line: what a running server logs once a minute when there was traffic."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from cumulo.observability.metrics import Metrics
from cumulo.observability.traffic import TrafficLog, median_range
from fakes import FakeOpenAIUpstream
from support import CUMULO_BIN, UPSTREAM_KEY, clean_env, free_port, openai_deployment, write_config
from support.waiting import wait_until


def served(metrics: Metrics, status: int, latency_s: float, n: int = 1) -> None:
    for _ in range(n):
        metrics.observe("m", "d", status, 3, 4, latency_s, None)


def test_a_line_counts_what_finished_since_the_last() -> None:
    metrics = Metrics()
    served(metrics, 200, 0.02, n=3)  # before the log starts: not counted
    traffic = TrafficLog(metrics, 60)
    served(metrics, 200, 0.3, n=7)
    served(metrics, 429, 0.001, n=2)
    served(metrics, 502, 1.5)
    assert traffic.line() == (
        "traffic, last 60 s: 10 requests, 3 errors (429: 2, 502: 1), p50 250-500 ms"
    )
    assert traffic.line() is None  # nothing since
    served(metrics, 200, 0.01)
    assert traffic.line() == "traffic, last 60 s: 1 requests, 0 errors, p50 under 50 ms"


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([1, 0, 0], "under 50 ms"),
        ([0, 2, 1], "50-100 ms"),
        ([0, 0, 5], "over 100 ms"),
        ([2, 0, 3], "over 100 ms"),
        ([3, 0, 2], "under 50 ms"),
    ],
)
def test_the_median_is_the_bucket_that_holds_it(counts: list[int], expected: str) -> None:
    assert median_range((0.05, 0.1), counts) == expected
    assert median_range((1.0, 2.5), [0, 1, 0]) == "1-2.5 s"


def test_a_running_server_logs_traffic_and_is_quiet_without(
    tmp_path: Path, upstream: FakeOpenAIUpstream
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "cumulo.yaml",
        {
            "server": {"traffic_log_interval_s": 0.3},
            "models": [{"name": "echo", "deployments": [openai_deployment(upstream, "echo")]}],
        },
    )
    log = tmp_path / "serve.log"
    env = clean_env(
        CUMULO_HOME=str(tmp_path / "home"),
        CUMULO_ADMIN_KEY="admin-key-for-test",
        FAKE_UPSTREAM_KEY=UPSTREAM_KEY,
    )
    with log.open("wb") as out:  # the default log level, as `cumulo serve` runs
        server = subprocess.Popen(
            [str(CUMULO_BIN), "serve", "--config", str(config), "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def lines() -> list[str]:
        return [ln for ln in log.read_text().splitlines() if "traffic, last 0.3 s:" in ln]

    try:
        assert wait_until(lambda: _ready(url), timeout=60), log.read_text()
        headers = {"Authorization": "Bearer admin-key-for-test"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
            for model in ("echo", "echo", "nope"):
                http.post(
                    "/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                )
        # The three may finish in one interval or across two: the lines add up to them.
        assert wait_until(lambda: counted(lines()) == (3, 1), timeout=10), log.read_text()
        assert all(ln.endswith("p50 under 50 ms") for ln in lines())
        assert "(404: 1)" in " ".join(lines())
        logged = len(lines())
        time.sleep(1.5)  # five intervals without traffic: no line
        assert len(lines()) == logged
    finally:
        server.terminate()
        server.wait(30)


def counted(lines: list[str]) -> tuple[int, int]:
    found = [re.search(r"(\d+) requests, (\d+) errors", ln) for ln in lines]
    return (sum(int(m.group(1)) for m in found if m), sum(int(m.group(2)) for m in found if m))


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
