"""`cumulo serve` as a real subprocess on a free loopback port, and its configs.

`start_cumulo` writes a config, starts the `cumulo` console script with
`CUMULO_HOME` and `CUMULO_ADMIN_KEY` set, and waits for `/health/ready`.
`gateway_config` is the shared test gateway: one model per behaviour of the
fake upstream (see `fakes.openai_upstream`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from fakes import FakeOpenAIUpstream
from support.waiting import wait_until

# The console script next to this interpreter (the venv's), else the one on PATH.
CUMULO_BIN = Path(sys.executable).parent / "cumulo"
if not CUMULO_BIN.exists():
    CUMULO_BIN = Path(shutil.which("cumulo") or "cumulo")
UPSTREAM_KEY = "sk-fake-upstream-" + "0" * 20
AZURE_KEY = "azure-fake-key-" + "1" * 20
TEST_MAX_BODY = 64 * 1024
TEST_MAX_MESSAGES = 64
TEST_MAX_EMBEDDING_INPUTS = 16


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without anything that would change cumulo's behaviour, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CUMULO_") and k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")
    }
    env.update(extra)
    return env


@dataclass
class ApiKey:
    id: str
    token: str


@dataclass
class CumuloServer:
    """A running `cumulo serve` subprocess."""

    url: str
    admin_key: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(repr=False)
    # HTTPS servers: the context trusting their (self-signed) certificate.
    verify: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def db_path(self) -> Path:
        return self.home / "cumulo.db"

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url,
            verify=self.verify or True,
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=30,
        )

    def create_key(self, name: str = "test", role: str = "caller") -> ApiKey:
        with self.admin() as http:
            resp = http.post("/admin/keys", json={"name": name, "role": role})
        assert resp.status_code == 201, resp.text
        data = resp.json()
        return ApiKey(data["id"], data["key"])

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=10)) as db:
            return db.execute(query, params).fetchall()

    def usage_rows(self, key_id: str, expect: int = 1) -> list[dict[str, Any]]:
        """Usage records of `key_id` once at least `expect` are written (ordered by id)."""
        cols = [
            "endpoint",
            "model",
            "deployment",
            "stream",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "ttft_ms",
            "status",
            "error_type",
        ]
        query = f"SELECT {', '.join(cols)} FROM usage WHERE key_id = ? ORDER BY id"
        wait_until(lambda: len(self.sql(query, (key_id,))) >= expect, timeout=10)
        return [dict(zip(cols, row, strict=True)) for row in self.sql(query, (key_id,))]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise AssertionError(f"cumulo did not stop on SIGTERM:\n{self.output()}") from None
        return self.process.returncode


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_cumulo(
    config: dict[str, Any],
    workdir: Path,
    *,
    args: tuple[str, ...] = (),
    cafile: Path | None = None,
    ready_timeout: float = 60,
    **env: str,
) -> CumuloServer:
    """Run `cumulo serve --config <workdir>/cumulo.yaml [args]` and wait until it is ready.

    With `cafile` the server speaks HTTPS (its certificate given in the config or `args`),
    and the clients trust that certificate."""
    home = workdir / "home"
    verify = None if cafile is None else ssl.create_default_context(cafile=str(cafile))
    cfg = write_config(workdir / "cumulo.yaml", config)
    admin_key = "admin-" + secrets.token_urlsafe(16)
    full_env = clean_env(CUMULO_HOME=str(home), CUMULO_ADMIN_KEY=admin_key, **env)
    log = workdir / "cumulo.log"
    for _attempt in range(3):  # another process may take the free port before cumulo binds it
        port = free_port()
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    str(CUMULO_BIN),
                    "serve",
                    "--config",
                    str(cfg),
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                    *args,
                ],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        scheme = "http" if verify is None else "https"
        server = CumuloServer(
            f"{scheme}://127.0.0.1:{port}", admin_key, home, process, log, full_env, verify
        )
        if _wait_ready(server, ready_timeout):
            return server
        if "already in use" not in server.output():
            break
    raise AssertionError(f"cumulo exited with {process.returncode}:\n{server.output()}")


def _wait_ready(server: CumuloServer, timeout: float = 60) -> bool:
    """True once /health/ready answers 200; False if the process exits first."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2, verify=server.verify or True) as http:
        while server.process.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if http.get(server.url + "/health/ready").status_code == 200:
                    return True
            if time.monotonic() > deadline:
                server.stop()
                raise AssertionError(f"cumulo was not ready in time:\n{server.output()}")
            time.sleep(0.05)
    return False


def openai_deployment(upstream: FakeOpenAIUpstream, model: str, **extra: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "model": model,
        "base_url": upstream.base_url(),
        "api_key_env": "FAKE_UPSTREAM_KEY",
        **extra,
    }


def gateway_config(upstream: FakeOpenAIUpstream) -> dict[str, Any]:
    """One cumulo model per upstream behaviour.

    These models test how one upstream's faults reach the client, so routing
    neither retries nor opens circuits on them (tests/routing covers that).
    """
    no_routing = {"retries": 0, "breaker": {"consecutive_failures": 1_000_000, "error_rate": 1.0}}

    def chat(name: str, model: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "chat",
            "routing": no_routing,
            "deployments": [openai_deployment(upstream, model, **extra)],
        }

    return {
        "server": {
            "max_body_bytes": TEST_MAX_BODY,
            "max_messages": TEST_MAX_MESSAGES,
            "max_embedding_inputs": TEST_MAX_EMBEDDING_INPUTS,
        },
        "usage": {"flush_interval_s": 0.1},
        "models": [
            chat("chat-echo", "echo", headers={"X-Team": "search"}),
            chat("team/chat-echo", "echo"),
            # By a host name: cookies from a bare IP address are refused anyway.
            chat(
                "chat-cookie",
                "cookie",
                base_url=upstream.base_url().replace("127.0.0.1", "localhost"),
            ),
            chat("chat-tools", "tools"),
            chat("chat-slow", "slow:0.6"),
            chat("chat-hold", "hold"),
            chat("chat-timeout", "slow:5", timeout_s=0.5),
            chat("chat-disconnect", "disconnect:2"),
            chat("chat-500", "status:500"),
            chat("chat-upstream-400", "status:400"),
            chat("chat-429", "ratelimit:7"),
            chat("chat-malformed", "malformed"),
            {
                "name": "chat-down",
                "routing": no_routing,
                "deployments": [
                    {
                        "provider": "openai",
                        "model": "echo",
                        "base_url": f"http://127.0.0.1:{free_port()}/v1",
                        "connect_timeout_s": 2,
                    }
                ],
            },
            {
                "name": "azure-chat",
                "deployments": [
                    {
                        "provider": "openai",
                        "model": "echo",
                        "base_url": upstream.url + "/openai/deployments/gpt-4o-prod",
                        "api_key_env": "FAKE_AZURE_KEY",
                        "auth_header": "api-key",
                        "api_version": "2024-10-21",
                    }
                ],
            },
            {
                "name": "embed",
                "kind": "embedding",
                "deployments": [openai_deployment(upstream, "embed-reversed")],
            },
        ],
    }
