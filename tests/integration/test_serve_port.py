"""`cumulo serve` on a port that is taken stops at once, before it prepares or loads
anything, naming the address and the ways to choose another; `CUMULO_PORT` sets the port
(the flag wins over it, and it wins over the config)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from fakes import FakeOpenAIUpstream
from support import CUMULO_BIN, CumuloServer, clean_env, free_port, openai_deployment
from support.cumulo import UPSTREAM_KEY


def serve(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CUMULO_BIN), "serve", *args],
        env=clean_env(CUMULO_HOME=str(home), **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def assert_stopped_before_loading(
    run: subprocess.CompletedProcess[str], home: Path, port: int
) -> None:
    assert run.returncode == 1, run.stderr
    assert f"cumulo: error: 127.0.0.1:{port} is already in use" in run.stderr
    assert "--port PORT or the CUMULO_PORT environment variable" in run.stderr
    assert "Traceback" not in run.stderr
    # Nothing was prepared or loaded: no demo model built, no database, no admin key.
    assert not (home / "models").exists() and not (home / "cumulo.db").exists()
    assert "admin key" not in run.stdout and "Started server process" not in run.stderr


def test_a_second_serve_on_a_used_port_stops_at_once(cumulo: CumuloServer, tmp_path: Path) -> None:
    port = urlsplit(cumulo.url).port
    assert port is not None
    # The embedded default: without the check this builds the demo model and loads both models.
    run = serve(tmp_path / "home", "--port", str(port))
    assert_stopped_before_loading(run, tmp_path / "home", port)
    assert httpx.get(cumulo.url + "/health/live").status_code == 200  # the first one is unharmed


def test_cumulo_port_sets_the_port(tmp_path: Path, taken: int) -> None:
    home = tmp_path / "home"
    assert_stopped_before_loading(serve(home, CUMULO_PORT=str(taken)), home, taken)
    cfg = tmp_path / "cumulo.yaml"
    cfg.write_text(yaml.safe_dump({"server": {"port": free_port()}}))
    # The environment wins over the config...
    assert_stopped_before_loading(
        serve(home, "--config", str(cfg), CUMULO_PORT=str(taken)), home, taken
    )
    # ... and the flag over the environment.
    assert_stopped_before_loading(
        serve(home, "--port", str(taken), CUMULO_PORT=str(free_port())), home, taken
    )


def test_cumulo_port_is_where_it_serves(upstream: FakeOpenAIUpstream, tmp_path: Path) -> None:
    cfg = tmp_path / "cumulo.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"models": [{"name": "oa-echo", "deployments": [openai_deployment(upstream, "echo")]}]}
        )
    )
    port = free_port()
    env = clean_env(
        CUMULO_HOME=str(tmp_path / "home"), CUMULO_PORT=str(port), FAKE_UPSTREAM_KEY=UPSTREAM_KEY
    )
    with (tmp_path / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [str(CUMULO_BIN), "serve", "--config", str(cfg)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        assert f"listening on http://127.0.0.1:{port}" in (tmp_path / "serve.log").read_text()
    finally:
        process.terminate()
        process.wait(30)
