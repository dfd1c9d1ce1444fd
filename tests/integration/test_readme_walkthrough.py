"""The README followed literally: `cumulo serve` on the embedded default in a fresh home,
then every shell and Python block of the README, in order, as a reader would paste them
(only the ports, the home, and the admin key the server printed, are filled in). A block
that is a `cumulo serve` command runs in the background, as in another terminal, until the
end."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support import CUMULO_BIN, clean_env, free_port
from support.readme import Block, blocks

ROOT = Path(__file__).resolve().parents[2]
DEMO_MAX_TOKENS = 48  # demo-tiny's default_max_tokens


def runnable(block: Block) -> bool:
    # `make` blocks set the machine up (`make serve` is started below as `cumulo serve`).
    setup = any(line.startswith("make ") for line in block.text.splitlines())
    return block.lang in ("sh", "python") and not setup


def filled(text: str, ports: dict[int, int], home: Path, key: str) -> str:
    for readme_port, port in ports.items():
        text = re.sub(rf"(127\.0\.0\.1|localhost):{readme_port}\b", rf"\g<1>:{port}", text)
        text = re.sub(rf"--port {readme_port}\b", f"--port {port}", text)
    text = text.replace("~/.cumulo", str(home))  # the reader's CUMULO_HOME
    return re.sub(r"export CUMULO_API_KEY=\S+", f"export CUMULO_API_KEY={key}", text)


def serve_command(block: Block) -> bool:
    lines = [ln for ln in block.text.splitlines() if ln.strip() and not ln.startswith("#")]
    return block.lang == "sh" and len(lines) == 1 and lines[0].startswith(".venv/bin/cumulo serve ")


def taken(server: subprocess.Popen[bytes], log: Path) -> bool:
    """It stopped at once because another process took its free port meanwhile (the
    machine is shared): the caller tries another."""
    return server.poll() is not None and "already in use" in log.read_text()


def start_in_background(
    text: str, env: dict[str, str], url: str, cafile: Path | None, log: Path
) -> subprocess.Popen[bytes] | None:
    with log.open("wb") as out:
        server = subprocess.Popen(
            ["bash", "-c", f"exec {text}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    verify = True if cafile is None else ssl.create_default_context(cafile=str(cafile))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if taken(server, log):
            return None
        assert server.poll() is None, f"{text}\n{log.read_text()}"
        try:
            if httpx.get(url + "/health/ready", timeout=2, verify=verify).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"not ready:\n{text}\n{log.read_text()}")


def start(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], str, int]:
    """`cumulo serve` as `make serve` runs it, on a free port; the admin key it prints at
    first start, and the port."""
    for _attempt in range(3):
        port = free_port()
        with log.open("wb") as out:
            server = subprocess.Popen(
                [str(CUMULO_BIN), "serve", "--port", str(port)],
                cwd=ROOT,
                env=clean_env(CUMULO_HOME=str(home)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        key = wait_for_first_start(server, port, log)
        if key is not None:
            return server, key, port
    raise AssertionError(log.read_text())


def wait_for_first_start(server: subprocess.Popen[bytes], port: int, log: Path) -> str | None:
    deadline = time.monotonic() + 300  # builds the demo model, then loads both models
    while time.monotonic() < deadline:
        if taken(server, log):
            return None
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    else:
        raise AssertionError(f"not ready:\n{log.read_text()}")
    printed = re.search(r"^\s+(ck-\S+)$", log.read_text(), re.M)
    assert printed, log.read_text()
    # The command it suggests runs from here (the venv is not activated).
    hint = re.search(r"'(\S+) keys create NAME'", log.read_text())
    assert hint and (shutil.which(hint.group(1)) or (ROOT / hint.group(1)).is_file()), hint
    return printed.group(1)


@pytest.mark.slow
def test_the_readme_runs_as_written(tmp_path: Path) -> None:
    if not (ROOT / ".venv" / "bin" / "cumulo").exists():
        pytest.skip("the README's commands run from the .venv that `make` creates")
    home = tmp_path / "home"
    server, key, port = start(home, tmp_path / "serve.log")
    env = clean_env(
        CUMULO_HOME=str(home), CUMULO_URL=f"http://127.0.0.1:{port}", CUMULO_API_KEY=key
    )
    outputs: dict[str, str] = {}
    background: list[subprocess.Popen[bytes]] = []
    try:
        https_port = free_port()
        for block in filter(runnable, blocks()):
            text = filled(block.text, {8080: port, 8443: https_port}, home, key)
            if serve_command(block):
                https = "--tls-certfile" in text
                log = tmp_path / f"serve-{len(background)}.log"
                for _attempt in range(3):
                    url = f"{'https' if https else 'http'}://127.0.0.1:{https_port}"
                    started = start_in_background(
                        text, env, url, home / "tls" / "cert.pem" if https else None, log
                    )
                    if started is not None:
                        break
                    https_port = free_port()
                    text = filled(block.text, {8080: port, 8443: https_port}, home, key)
                assert started is not None, log.read_text()
                background.append(started)
                outputs[block.section] = outputs.get(block.section, "") + log.read_text()
                continue
            argv = (
                ["bash", "-euo", "pipefail", "-c", text]
                if block.lang == "sh"
                else [sys.executable, "-c", text]
            )
            run = subprocess.run(
                argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
            )
            assert run.returncode == 0, f"{block.section}:\n{text}\n{run.stdout}\n{run.stderr}"
            assert "Traceback" not in run.stderr, f"{block.section}:\n{run.stderr}"
            if block.lang == "sh":
                assert '"error"' not in run.stdout, f"{block.section}:\n{run.stdout}"
            outputs[block.section] = outputs.get(block.section, "") + run.stdout
    finally:
        for process in [*background, server]:
            process.terminate()
            process.wait(60)

    quick = outputs["Quick start"]
    assert "UNTRAINED" in quick and "key:    ck-" in quick and quick.rstrip().endswith("ok")
    # `chat demo-tiny "Hello"` and the curl stream are short: demo-tiny's default length.
    [demo] = [
        line.split()
        for line in quick.splitlines()
        if line.startswith("demo-tiny ") and line.split()[1].isdigit()
    ]
    requests, completion = int(demo[1]), int(demo[4])
    assert requests == 1 and 1 <= completion <= DEMO_MAX_TOKENS
    chunks = [ln for ln in outputs["From curl"].splitlines() if ln.startswith("data: {")]
    assert 2 <= len(chunks) <= DEMO_MAX_TOKENS + 2
    listed = [line.split() for line in outputs["Tenants, roles and keys"].splitlines()]
    states = sorted(row[4] for row in listed if len(row) > 4 and row[1] == "indexer")
    assert states == ["active", "expires"]  # the rotated key and its successor
    # HTTPS: the bearer token went through boto3, the CLI and curl trusted the certificate.
    https = outputs["Over HTTPS (bearer tokens, LangChain)"]
    assert f"listening on https://127.0.0.1:{https_port}" in https
    assert "demo-tiny" in https and '"object":"list"' in https.replace(" ", "")
