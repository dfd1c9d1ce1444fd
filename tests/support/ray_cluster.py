"""A Ray cluster of its own for a test: `ray start --head --block` on loopback, with a
fresh temp dir and free ports, stopped by its own process group (never `ray stop`, which
stops every Ray on the machine)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cumulo
from support.cumulo import clean_env, free_port
from support.waiting import wait_until

RAY_BIN = Path(sys.executable).parent / "ray"
# Ray's token authentication is off for these clusters (loopback only, the test's own).
# Ray gives a new node's raylet 30 s to register; on a busy 2-core machine (the rest of the
# suite running) it can take longer, and `ray start` then gives up.
RAY_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_raylet_start_wait_time_s": "180",
}


@contextlib.contextmanager
def ray_head(workdir: Path, num_cpus: int = 2) -> Iterator[str]:
    """A running one-node Ray cluster with `num_cpus` CPUs; its address (HOST:PORT)."""
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths
    port = free_port()
    ports = {
        f"--{name}": str(free_port())
        for name in (
            "node-manager-port",
            "object-manager-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
        )
    }
    src = str(Path(cumulo.__file__).resolve().parents[1])  # the workers import this cumulo
    env = clean_env(**RAY_ENV, PYTHONPATH=src)
    log = workdir / "ray-head.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(RAY_BIN),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                f"--num-cpus={num_cpus}",
                "--num-gpus=0",
                "--include-dashboard=false",
                "--disable-usage-stats",
                f"--temp-dir={temp}",
                *(f"{k}={v}" for k, v in ports.items()),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        wait_until(
            lambda: b"--block" in log.read_bytes() or process.poll() is not None, timeout=180
        )
        assert process.poll() is None, log.read_text(errors="replace")
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # `ray start --block` stops its processes
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what the group still holds (workers)
        shutil.rmtree(temp, ignore_errors=True)


__all__ = ["RAY_ENV", "ray_head"]
