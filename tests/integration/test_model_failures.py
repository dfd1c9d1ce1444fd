"""A configured model that cannot load: `cumulo serve` refuses or stops, unless the model is
`optional`; then callers, `/health/ready`, `/v1/models` and the CLI say why (no server
paths)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fakes import FakeOpenAIUpstream
from support import CUMULO_BIN, CumuloServer, clean_env, free_port, openai_deployment, write_config


def local_model(name: str, path: Path, **extra: Any) -> dict[str, Any]:
    return {"name": name, "deployments": [{"provider": "local", "path": str(path)}], **extra}


def serve(tmp_path: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = write_config(tmp_path / "cumulo.yaml", config)
    return subprocess.run(
        [
            str(CUMULO_BIN),
            "serve",
            "--config",
            str(path),
            "--port",
            str(free_port()),
            "--log-level",
            "warning",
        ],
        env=clean_env(
            CUMULO_HOME=str(tmp_path / "home"), CUMULO_ADMIN_KEY="admin-x", FAKE_UPSTREAM_KEY="k"
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_serve_refuses_a_model_whose_path_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "my-model"
    result = serve(tmp_path, {"models": [local_model("mine", missing)]})
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("cumulo: error: ")
    assert str(tmp_path / "cumulo.yaml") in line and "models.0.deployments.0.path" in line
    assert f"local model directory {missing} does not exist" in line
    assert "optional: true" in line


def test_serve_stops_when_a_model_fails_while_loading(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")  # passes the check, fails the load
    result = serve(tmp_path, {"models": [local_model("broken", broken)]})
    assert result.returncode == 3, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert "model 'broken': cannot start" in output
    assert "stopping: the model 'broken' cannot load" in output
    assert "Traceback" not in output


def test_an_optional_model_that_failed_is_reported_and_refused_clearly(
    tmp_path: Path,
    upstream: FakeOpenAIUpstream,
    cumulo_factory: Callable[..., CumuloServer],
) -> None:
    missing = tmp_path / "secret-dir" / "gone"
    server = cumulo_factory(
        {
            "models": [
                local_model("gone", missing, optional=True),
                {"name": "echo", "deployments": [openai_deployment(upstream, "echo")]},
            ]
        }
    )
    assert "the optional model 'gone' is served without it" in server.output()
    with server.admin() as http:
        ready = http.get("/health/ready")
        assert ready.status_code == 200  # the rest of the platform serves
        assert set(ready.json()["failed_models"]) == {"gone"}
        assert "does not exist" in ready.json()["failed_models"]["gone"]

        resp = http.post(
            "/v1/chat/completions",
            json={"model": "gone", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert resp.status_code == 503
        error = resp.json()["error"]
        assert error["code"] == "model_load_failed"
        assert error["message"].startswith(
            "The model 'gone' failed to load: local model directory <path> does not exist"
        )
        [entry] = [m for m in http.get("/v1/models").json()["data"] if m["id"] == "gone"]
        assert (entry["ready"], entry["load_error"]) == (False, error["message"].split(": ", 1)[1])
        assert (
            http.post(
                "/v1/chat/completions",
                json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
            ).status_code
            == 200
        )
        for text in (ready.text, resp.text, json.dumps(entry)):
            assert str(tmp_path) not in text and "secret-dir" not in text

    listed = subprocess.run(
        [str(CUMULO_BIN), "models", "list"],
        capture_output=True,
        text=True,
        env=clean_env(CUMULO_URL=server.url, CUMULO_API_KEY=server.admin_key),
        timeout=60,
        check=False,
    )
    [row] = [line for line in listed.stdout.splitlines() if line.startswith("gone ")]
    assert "FAILED: local model directory <path> does not exist" in row
