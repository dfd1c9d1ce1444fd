"""The vllm provider's supervisor, against a fake vLLM server started as vLLM would be.

With `tests/fakes/vllm_server` first on the replicas' PYTHONPATH, the exact command cumulo
runs (`python -m vllm.entrypoints.openai.api_server --model ... --port N ...`) starts the
fake (`fakes/vllm_server/vllm/entrypoints/openai/api_server.py`), a real HTTP server
speaking /health, /metrics and /v1/chat/completions that can crash, hang at SIGTERM or
refuse to start. Each test drives real processes: command line and environment, restart
with backoff, drain, log rotation, metrics, LoRA adapters.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from cumulo.config import DeploymentConfig, parse_config
from cumulo.errors import ConfigError, Unavailable, UpstreamError
from cumulo.providers.base import ProviderContext
from cumulo.providers.vllm import VLLMProvider
from cumulo.providers.vllm_fleet import (
    ReplicaLog,
    parse_metrics,
    replica_command,
    split_devices,
)
from cumulo.types import ChatRequest, Message, SamplingParams, StreamEnd, TextDelta
from support.waiting import eventually, wait_until

T = TypeVar("T")
FAKE = Path(__file__).resolve().parents[1] / "fakes" / "vllm_server"


def model_dir(tmp_path: Path) -> Path:
    path = tmp_path / "model"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


def deployment(tmp_path: Path, **fields: Any) -> DeploymentConfig:
    env = {"PYTHONPATH": str(FAKE), **fields.pop("env", {})}
    values: dict[str, Any] = {
        "provider": "vllm",
        "model": "tiny",
        "path": str(model_dir(tmp_path)),
        "env": env,
        "restart_backoff_s": 0.2,
        "restart_backoff_max_s": 1.0,
        "drain_timeout_s": 5,
        "startup_timeout_s": 30,
        **fields,
    }
    return DeploymentConfig(**values)


def run_fleet(
    tmp_path: Path,
    d: DeploymentConfig,
    body: Callable[[list[VLLMProvider]], Awaitable[T]],
    policy: dict[str, Any] | None = None,
) -> T:
    """Start `d`'s replicas (labelled `vllm:tiny/i`), run `body`, then stop them."""

    async def main() -> T:
        async with aiohttp.ClientSession() as http:
            ctx = ProviderContext(http, tmp_path / "home")
            providers = [p for p in VLLMProvider.create_all(d, "chat", ctx)]
            assert all(isinstance(p, VLLMProvider) for p in providers)
            replicas = [p for p in providers if isinstance(p, VLLMProvider)]
            for i, p in enumerate(replicas):
                p.label = f"vllm:tiny/{i}"
            if policy:
                replicas[0].fleet.policy = replace(replicas[0].fleet.policy, **policy)
            try:
                await asyncio.gather(*(p.start() for p in replicas))
                return await body(replicas)
            finally:
                await asyncio.gather(*(p.close() for p in replicas))

    return asyncio.run(main())


def chat(text: str = "hello", model: str = "vllm-model") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", text)], params=SamplingParams())


def log_lines(p: VLLMProvider) -> list[str]:
    assert p.replica is not None
    return p.replica.log.path.read_text().splitlines()


def printed(p: VLLMProvider, prefix: str) -> str:
    """The last line of the replica's log starting with `prefix` (waiting for the thread
    that copies the process's output to write it)."""
    assert wait_until(lambda: any(ln.startswith(prefix) for ln in log_lines(p)), timeout=10)
    return [ln for ln in log_lines(p) if ln.startswith(prefix)][-1]


def fake_line(p: VLLMProvider, what: str) -> Any:
    """The JSON the fake printed after `fake-vllm <what> ` (its last start)."""
    return json.loads(printed(p, f"fake-vllm {what} ").split(" ", 2)[2])


# -- the command line and the environment ----------------------------------------------


def test_the_command_line_is_vllms_openai_server_with_cumulos_own_options_first() -> None:
    cmd = replica_command("/venv/bin/python", "/models/m", "m", 8123, ["--enforce-eager"])
    assert cmd == [
        "/venv/bin/python",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/m",
        "--served-model-name",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
        "--enforce-eager",
    ]


def test_devices_are_split_equally_between_replicas_in_order() -> None:
    assert split_devices([0, 1, 2, 3], 2) == [[0, 1], [2, 3]]
    assert split_devices([5, 7], 2) == [[5], [7]]
    assert split_devices([], 3) == [[], [], []]


def test_each_replica_runs_on_its_own_port_with_its_gpus_and_without_cumulos_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUMULO_MASTER_KEY", "must-not-reach-vllm")
    d = deployment(
        tmp_path,
        replicas=2,
        devices=[0, 1, 2, 3],
        args=["--enforce-eager", "--max-model-len", "1024"],
    )

    async def body(ps: list[VLLMProvider]) -> None:
        ports = {p.replica.port for p in ps if p.replica}
        assert len(ports) == 2
        for i, p in enumerate(ps):
            argv = fake_line(p, "argv")
            assert argv == [
                "--model",
                str(tmp_path / "model"),
                "--served-model-name",
                "tiny",
                "--host",
                "127.0.0.1",
                "--port",
                str(p.replica.port if p.replica else 0),
                "--enforce-eager",
                "--max-model-len",
                "1024",
            ]
            env = fake_line(p, "env")
            assert env["CUDA_VISIBLE_DEVICES"] == ["0,1", "2,3"][i]
            assert env["VLLM_API_KEY"] == "set"
            assert not any(k.startswith("CUMULO_") for k in env)
            assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env  # no --enable-lora
        # The log file is named after the replica's label, under CUMULO_HOME/logs.
        assert (
            ps[0].replica and ps[0].replica.log.path == tmp_path / "home/logs/vllm-vllm_tiny_0.log"
        )

    run_fleet(tmp_path, d, body)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"args": ["--port", "9000"]}, "args.0: cumulo sets --port itself"),
        ({"args": ["--enforce-eager", "--model=/x"]}, "args.1: cumulo sets --model itself"),
        ({"args": ["--api-key", "k"]}, "args.0: cumulo sets --api-key itself"),
        ({"devices": [0, 1, 2], "replicas": 2}, "3 GPUs cannot be split equally between 2"),
        ({"devices": [0, 0]}, "a GPU id is listed twice"),
        ({"adapters": {"ft:a": "/x"}}, "only with `--enable-lora`"),
        ({"path": None}, "a vllm deployment needs `path`"),
        ({"replicas": 0}, "replicas"),
    ],
)
def test_bad_vllm_settings_are_refused_naming_the_key(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    d = {"provider": "vllm", "path": str(tmp_path), **fields}
    with pytest.raises(ConfigError) as err:
        parse_config({"models": [{"name": "m", "deployments": [d]}]}, "c.yaml")
    assert "c.yaml: models.0.deployments.0" in str(err.value)
    assert message in str(err.value)


def test_a_vllm_model_routes_least_busy_unless_told_and_needs_one_worker(tmp_path: Path) -> None:
    d = {"provider": "vllm", "path": str(tmp_path)}
    config = parse_config({"models": [{"name": "m", "deployments": [d]}]}, "c.yaml")
    assert config.models[0].routing.strategy == "least-busy"
    config = parse_config(
        {"models": [{"name": "m", "deployments": [d], "routing": {"retries": 1}}]}, "c.yaml"
    )
    assert config.models[0].routing.strategy == "least-busy"
    assert config.models[0].routing.retries == 1
    told = {"name": "m", "deployments": [d], "routing": {"strategy": "priority"}}
    assert parse_config({"models": [told]}, "c.yaml").models[0].routing.strategy == "priority"
    with pytest.raises(ConfigError, match=r"server\.workers: vllm deployments need one worker"):
        parse_config({"server": {"workers": 2}, "models": [told]}, "c.yaml")


def test_an_adapter_cannot_take_the_name_of_a_model(tmp_path: Path) -> None:
    d = {
        "provider": "vllm",
        "path": str(tmp_path),
        "args": ["--enable-lora"],
        "adapters": {"other": str(tmp_path)},
    }
    models = [{"name": "m", "deployments": [d]}, {"name": "other", "deployments": [d]}]
    with pytest.raises(ConfigError) as err:
        parse_config({"models": models}, "c.yaml")
    assert "models.0.deployments.0.adapters: 'other' is already the name of a model" in str(
        err.value
    )


def test_check_names_a_missing_model_directory(tmp_path: Path) -> None:
    d = DeploymentConfig(provider="vllm", path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as err:
        VLLMProvider.check(d, "chat")
    assert err.value.param == "path"
    d = DeploymentConfig(provider="vllm", path=str(model_dir(tmp_path)), python="/no/python")
    with pytest.raises(ConfigError) as err:
        VLLMProvider.check(d, "chat")
    assert err.value.param == "python"


# -- serving ---------------------------------------------------------------------------


def test_replicas_answer_and_stream_through_the_openai_wire_with_their_own_key(
    tmp_path: Path,
) -> None:
    async def body(ps: list[VLLMProvider]) -> None:
        p = ps[0]
        reply = await p.chat(chat())
        assert reply.message.content == f"fake-vllm {p.replica.port if p.replica else 0} tiny"
        assert reply.usage.prompt_tokens == 5
        events = [e async for e in p.stream(chat())]
        assert "".join(e.text for e in events if isinstance(e, TextDelta)).startswith("fake-vllm")
        assert isinstance(events[-1], StreamEnd)
        assert p.replica and p.replica.in_flight == 0
        assert p.fleet.api_key in p.credentials()  # masked wherever upstream text is logged
        # The replica's port refuses callers without the fleet's key (vLLM's VLLM_API_KEY).
        async with aiohttp.ClientSession() as http:
            url = f"{p.replica.url}/v1/chat/completions"
            async with http.post(url, json={"model": "tiny", "messages": []}) as resp:
                assert resp.status == 401

    run_fleet(tmp_path, deployment(tmp_path), body)


def test_a_replica_that_crashes_is_restarted_with_backoff_and_serves_again(tmp_path: Path) -> None:
    async def body(ps: list[VLLMProvider]) -> None:
        p = ps[0]
        r = p.replica
        assert r is not None and r.pid is not None
        first_pid = r.pid
        for round_ in (1, 2):
            pid = r.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            assert await eventually(lambda: _async(not p.ready), within=5)
            with pytest.raises(Unavailable, match="vLLM replica 0 of 'vllm:tiny/0' is"):
                await p.chat(chat())
            assert await eventually(lambda: _async(p.ready), within=15)
            assert r.restarts == round_ and r.pid != pid
        assert r.pid != first_pid
        assert (await p.chat(chat())).message.content.startswith("fake-vllm")
        assert list(r.exit_codes) == [-signal.SIGKILL, -signal.SIGKILL]
        # The waits doubled: 0.2 s, then 0.4 s, between the exit and the next start.
        times = [
            _when(line)
            for line in log_lines(p)
            if "==> cumulo" in line and ("exited with status" in line or "starting replica" in line)
        ]
        gaps = [b - a for a, b in zip(times[1::2], times[2::2], strict=False)]
        assert len(gaps) == 2 and gaps[0] >= 0.2 and gaps[1] >= 0.4, gaps

    run_fleet(tmp_path, deployment(tmp_path), body)


def test_a_replica_that_never_starts_fails_the_deployment_saying_why(tmp_path: Path) -> None:
    d = deployment(tmp_path, env={"FAKE_VLLM_EXIT": "2"})

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            ctx = ProviderContext(http, tmp_path / "home")
            (p,) = VLLMProvider.create_all(d, "chat", ctx)
            p.label = "vllm:tiny"
            with pytest.raises(UpstreamError) as err:
                await p.start()
            assert "stopped 3 times in a row before it was ready" in err.value.message
            assert "exit statuses 2, 2, 2" in err.value.message
            assert "vllm-vllm_tiny.log under CUMULO_HOME/logs" in err.value.message
            assert str(tmp_path) not in err.value.message
            assert isinstance(p, VLLMProvider) and p.replica is not None
            assert printed(p, "fake-vllm: cannot start")
            await p.close()

    asyncio.run(main())


def test_a_replica_not_healthy_within_its_startup_timeout_is_stopped_and_tried_again(
    tmp_path: Path,
) -> None:
    d = deployment(tmp_path, startup_timeout_s=0.5, env={"FAKE_VLLM_STARTUP_S": "60"})

    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            ctx = ProviderContext(http, tmp_path / "home")
            (p,) = VLLMProvider.create_all(d, "chat", ctx)
            with pytest.raises(UpstreamError, match="stopped 3 times in a row before it was"):
                await p.start()
            assert isinstance(p, VLLMProvider) and p.replica is not None
            assert list(p.replica.exit_codes) == [0, 0, 0]  # it exits on SIGTERM
            text = p.replica.log.path.read_text()
            assert text.count("not healthy within startup_timeout_s (0.5 s)") == 3
            await p.close()

    asyncio.run(main())


def test_a_replica_that_stops_answering_health_is_replaced(tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.mkdir()
    d = deployment(tmp_path, env={"FAKE_VLLM_CONTROL": str(control)})

    async def body(ps: list[VLLMProvider]) -> None:
        p = ps[0]
        r = p.replica
        assert r is not None
        pid = r.pid
        (control / "unhealthy").touch()
        assert await eventually(lambda: _async(not p.ready), within=10)
        (control / "unhealthy").unlink()
        assert await eventually(lambda: _async(p.ready), within=15)
        assert r.pid != pid and r.restarts == 1
        assert any("/health failed 3 times in a row" in ln for ln in log_lines(p))

    run_fleet(tmp_path, d, body, policy={"health_interval_s": 0.1})


def test_shutdown_drains_requests_in_flight_before_sigterm(tmp_path: Path) -> None:
    async def body(ps: list[VLLMProvider]) -> None:
        p = ps[0]
        call = asyncio.create_task(p.chat(chat("slow:1.0")))
        assert await eventually(lambda: _async(p.replica is not None and p.replica.in_flight == 1))
        await p.close()  # waits for the call, then stops the process
        reply = await call
        assert reply.message.content.startswith("fake-vllm")
        lines = log_lines(p)
        served = next(i for i, ln in enumerate(lines) if "POST /v1/chat/completions" in ln)
        term = next(i for i, ln in enumerate(lines) if "fake-vllm: SIGTERM" in ln)
        assert served < term
        assert p.replica and p.replica.state == "stopped" and not p.ready
        with pytest.raises(Unavailable):
            await p.chat(chat())

    run_fleet(tmp_path, deployment(tmp_path), body)


def test_a_replica_that_ignores_sigterm_is_killed_with_its_children(tmp_path: Path) -> None:
    d = deployment(
        tmp_path, drain_timeout_s=0.5, env={"FAKE_VLLM_TERM": "ignore", "FAKE_VLLM_CHILD": "1"}
    )

    async def body(ps: list[VLLMProvider]) -> None:
        p = ps[0]
        assert p.replica is not None
        leader = p.replica.pid
        child = int(printed(p, "fake-vllm child ").split()[-1])
        assert leader is not None and _alive(child)
        await p.close()
        assert not _alive(leader) and not _alive(child)
        lines = log_lines(p)
        assert any("fake-vllm: SIGTERM" in ln for ln in lines)
        assert any("still running 0.5 s after SIGTERM; SIGKILL" in ln for ln in lines)

    run_fleet(tmp_path, d, body)


def test_replica_logs_rotate(tmp_path: Path) -> None:
    d = deployment(tmp_path, env={"FAKE_VLLM_LINES": "3000"})  # about 300 kB

    async def body(ps: list[VLLMProvider]) -> None:
        p = ps[0]
        assert p.replica is not None
        path = p.replica.log.path
        assert await eventually(lambda: _async(path.with_name(path.name + ".2").exists()))
        files = sorted(path.parent.glob(path.name + "*"))
        assert [f.name for f in files] == [path.name, path.name + ".1", path.name + ".2"]
        assert all(f.stat().st_size <= 100_000 for f in files)
        assert printed(p, "fake-vllm: serving tiny")

    run_fleet(tmp_path, d, body, policy={"log_max_bytes": 100_000, "log_backups": 2})


def test_the_log_file_is_bounded_by_its_backups(tmp_path: Path) -> None:
    log = ReplicaLog(tmp_path / "logs" / "r.log", max_bytes=1000, backups=2)
    for i in range(200):
        log.write(f"line {i} " + "y" * 40)
    log.close()
    names = sorted(f.name for f in (tmp_path / "logs").iterdir())
    assert names == ["r.log", "r.log.1", "r.log.2"]
    assert "line 199" in (tmp_path / "logs" / "r.log").read_text()


def test_vllm_metrics_are_read_into_stats(tmp_path: Path) -> None:
    async def body(ps: list[VLLMProvider]) -> None:
        p = ps[0]
        call = asyncio.create_task(p.chat(chat("slow:1.5")))
        assert await eventually(lambda: _async((p.stats() or {}).get("running") == 1.0), within=5)
        stats = p.stats() or {}
        assert stats["engine"] == "vllm" and stats["state"] == "ready" and stats["loaded"]
        assert stats["waiting"] == 0.0 and stats["kv_cache_usage"] == 0.25
        assert stats["in_flight"] == 1 and stats["restarts"] == 0
        await call
        assert await eventually(
            lambda: _async((p.stats() or {}).get("generation_tokens") == 3.0), within=5
        )

    run_fleet(tmp_path, deployment(tmp_path), body, policy={"health_interval_s": 0.1})


def test_parse_metrics_sums_labels_and_ignores_other_series() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{engine="0",model_name="m"} 2.0\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 3.0\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} 4.0\n'
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5\n'
        'vllm:time_to_first_token_seconds_bucket{le="0.1"} 9.0\n'
    )
    assert parse_metrics(text) == {"running": 5.0, "waiting": 4.0, "kv_cache_usage": 0.5}
    assert parse_metrics("vllm:num_requests_running{ nonsense\n") == {}


# -- LoRA adapters ----------------------------------------------------------------------


def test_adapters_are_loaded_at_runtime_into_every_replica_and_again_after_a_restart(
    tmp_path: Path,
) -> None:
    support = tmp_path / "adapters" / "support"
    support.mkdir(parents=True)
    later = tmp_path / "adapters" / "later"
    later.mkdir()
    d = deployment(
        tmp_path, replicas=2, args=["--enable-lora"], adapters={"ft:tiny:support": str(support)}
    )

    async def body(ps: list[VLLMProvider]) -> None:
        assert fake_line(ps[0], "env")["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        for p in ps:
            reply = await p.chat(chat(model="ft:tiny:support"))
            assert reply.message.content.endswith(" ft:tiny:support")
        assert (await ps[0].chat(chat())).message.content.endswith(" tiny")
        # Loaded while running, through the fleet: every replica serves it.
        await ps[0].fleet.load_adapter("ft:tiny:later", str(later))
        for p in ps:
            assert (await p.chat(chat(model="ft:tiny:later"))).message.content.endswith("later")
        # A replica that restarts gets both again before it is ready.
        r = ps[1].replica
        assert r is not None and r.pid is not None
        os.kill(r.pid, signal.SIGKILL)
        assert await eventually(lambda: _async(not ps[1].ready), within=5)
        assert await eventually(lambda: _async(ps[1].ready), within=15)
        for name in ("ft:tiny:support", "ft:tiny:later"):
            assert (await ps[1].chat(chat(model=name))).message.content.endswith(name)
        # vLLM refusing an adapter is an error naming it; unloading stops serving it.
        with pytest.raises(UpstreamError, match="refused load_lora_adapter \\(ft:bad\\)"):
            await ps[0].fleet.load_adapter("ft:bad", str(tmp_path / "missing"))
        await ps[0].fleet.unload_adapter("ft:tiny:later")
        reply = await ps[0].chat(chat(model="ft:tiny:later"))  # the base model answers
        assert reply.message.content.endswith(" tiny")

    run_fleet(tmp_path, d, body)


def _when(line: str) -> float:
    stamp = line.split(" ", 3)[2].rstrip(":")
    return datetime.fromisoformat(stamp).timestamp()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def _async(value: object) -> bool:
    return bool(value)
