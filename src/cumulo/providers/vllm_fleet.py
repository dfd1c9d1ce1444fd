"""Supervising vLLM server processes: one `Replica` per process, each on its own port.

A replica's life, driven by one asyncio task (`Replica.start`):

    starting ──(GET /health is 200)──► ready ──(exits, or /health fails 3 times)──► backoff
       │ exits or startup_timeout_s passes                                            │
       └──────────────────────────────────► backoff ──(restart_backoff_s, doubling)───┘
    a replica that never became ready and exited MAX_START_FAILURES times in a row: failed
    stop(): not ready at once; requests in flight may finish, then SIGTERM, then SIGKILL

Each process runs in a session of its own, so that its children (vLLM's engine processes)
are killed with it, and gets SIGTERM if cumulo dies (Linux). Its stdout and stderr go to a
rotating log file per replica (written by a thread, off the event loop). While ready, its
`/metrics` (Prometheus text) are read on every health check; `stats()` holds the latest.

Nothing here knows vLLM's options beyond the command `replica_command` builds; the
provider (`providers/vllm.py`) routes requests to the replicas' OpenAI-compatible API.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import datetime
import logging
import logging.handlers
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias

import aiohttp

log = logging.getLogger(__name__)

State: TypeAlias = Literal["idle", "starting", "ready", "backoff", "stopping", "stopped", "failed"]
MAX_START_FAILURES = 3  # exits before ever being ready, in a row: the deployment failed
# The server's module, run as `python -m` (`vllm serve` is a thin wrapper around it).
SERVER_MODULE = "vllm.entrypoints.openai.api_server"
# vLLM's Prometheus gauges read into `stats()` (`kv_cache_usage_perc` is a fraction, 0-1).
METRICS = {
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",  # vLLM before 0.10
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
}


@dataclass(frozen=True, slots=True)
class Policy:
    """How a replica is started, watched, restarted and stopped."""

    startup_timeout_s: float = 900.0
    health_interval_s: float = 2.0
    health_timeout_s: float = 10.0
    health_failures: int = 3  # failed checks in a row that restart a ready replica
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    healthy_reset_s: float = 60.0  # ready this long: the next crash backs off from the start
    drain_timeout_s: float = 30.0
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3


def replica_command(
    python: str, path: str, served_name: str, port: int, args: Sequence[str]
) -> list[str]:
    """The command line of one replica (what the caller configured goes last)."""
    return [
        python,
        "-m",
        SERVER_MODULE,
        "--model",
        path,
        "--served-model-name",
        served_name,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]


def split_devices(devices: Sequence[int], replicas: int) -> list[list[int]]:
    """`devices` in `replicas` equal consecutive groups (none: every replica sees all)."""
    if not devices:
        return [[] for _ in range(replicas)]
    n = len(devices) // replicas
    return [list(devices[i * n : (i + 1) * n]) for i in range(replicas)]


def replica_env(
    base: Mapping[str, str],
    extra: Mapping[str, str],
    devices: Sequence[int],
    api_key: str,
    lora: bool,
) -> dict[str, str]:
    """A replica's environment: cumulo's without its own CUMULO_* settings (the master key
    among them), then the deployment's `env`, its GPUs and the key its API wants."""
    env = {k: v for k, v in base.items() if not k.startswith("CUMULO_")}
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    env["VLLM_API_KEY"] = api_key
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    if lora:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    return env


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse_metrics(text: str) -> dict[str, float]:
    """The gauges of `METRICS` in a Prometheus text exposition, summed over their labels."""
    from prometheus_client.parser import text_string_to_metric_families

    # Only the lines of the series wanted: vLLM's exposition is mostly histograms.
    wanted = "\n".join(
        line for line in text.splitlines() if line.split("{", 1)[0].split(" ", 1)[0] in METRICS
    )
    out: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(wanted + "\n"):
            for sample in family.samples:
                key = METRICS.get(sample.name)
                if key is not None:
                    out[key] = out.get(key, 0.0) + float(sample.value)
    except ValueError:  # a malformed exposition: no figures rather than wrong ones
        return {}
    return out


class ReplicaLog:
    """A replica's output to a rotating file, copied by a thread from a pipe; the last
    lines are kept in memory to say why a replica stopped."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._lock = threading.Lock()
        self._closed = False
        self._pumps: list[threading.Thread] = []
        self.tail: collections.deque[str] = collections.deque(maxlen=40)

    def write(self, line: str) -> None:
        line = line.rstrip("\n")
        with self._lock:
            self.tail.append(line)
            if not self._closed:  # (a closed handler would reopen its file)
                self._handler.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def note(self, text: str) -> None:
        """A line of cumulo's own, timestamped (UTC)."""
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        self.write(f"==> cumulo {now}: {text}")

    def pump(self, fd: int) -> threading.Thread:
        """Copy the lines read from `fd` (closed at its end) into the file, on a thread."""

        def run() -> None:
            with open(fd, encoding="utf-8", errors="replace", closefd=True) as pipe:
                for line in pipe:
                    self.write(line)

        thread = threading.Thread(target=run, name=f"cumulo-log-{self.path.name}", daemon=True)
        thread.start()
        self._pumps = [t for t in self._pumps if t.is_alive()] + [thread]
        return thread

    def close(self, wait_s: float = 2.0) -> None:
        """Close the file once the pipes' last lines are in it (waiting up to `wait_s`
        for processes that are gone; blocking)."""
        deadline = time.monotonic() + wait_s
        for thread in self._pumps:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._closed = True
            self._handler.close()


class ReplicaFailed(Exception):
    """A replica could not start (the message says why, without the server's paths)."""


class Replica:
    """One supervised server process; see the module docstring."""

    def __init__(
        self,
        index: int,
        command: Callable[[int], list[str]],
        env: dict[str, str],
        log: ReplicaLog,
        policy: Policy,
        http: Callable[[], aiohttp.ClientSession],
        on_ready: Callable[[Replica], Awaitable[None]] | None = None,
    ) -> None:
        self.index = index
        self._command = command
        self._env = env
        self.log = log
        self.policy = policy
        self._http = http
        self._on_ready = on_ready
        self.state: State = "idle"
        self.port: int | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.exit_codes: collections.deque[int] = collections.deque(maxlen=8)
        self.in_flight = 0
        self.metrics: dict[str, float] = {}
        self.metrics_at: float | None = None
        self.failure: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()  # set on every state change (for `wait_ready`)
        self._idle = asyncio.Event()  # no request in flight
        self._idle.set()

    # -- what the provider reads ---------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "loaded": self.ready,
            "engine": "vllm",
            "replica": self.index,
            "state": self.state,
            "pid": self.pid,
            "port": self.port,
            "restarts": self.restarts,
            "in_flight": self.in_flight,
        }
        if self.metrics_at is not None:
            out.update(self.metrics)
            out["metrics_age_s"] = round(time.monotonic() - self.metrics_at, 1)
        return out

    def enter(self) -> None:
        """A request starts on this replica (drained before it stops)."""
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self._idle.set()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"vllm-replica-{self.index}")

    async def wait_ready(self) -> None:
        """Until the replica first serves; raises `ReplicaFailed` if it never will."""
        while True:
            if self.state == "ready":
                return
            if self.state in ("failed", "stopping", "stopped"):
                raise ReplicaFailed(self.failure or f"replica {self.index} was stopped")
            self._changed.clear()
            await self._changed.wait()

    async def stop(self) -> None:
        """Drain: no new requests, those in flight may finish, then SIGTERM, then SIGKILL,
        all within `drain_timeout_s`. Calls after the first wait for the same stop."""
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._drain())
        await asyncio.shield(self._stopped)

    async def _drain(self) -> None:
        if self.state == "idle":
            await asyncio.to_thread(self.log.close)
            self._set("stopped")
            return
        self._set("stopping")
        self._stop.set()
        deadline = time.monotonic() + self.policy.drain_timeout_s
        if self.in_flight > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.policy.drain_timeout_s)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._terminate(max(0.0, deadline - time.monotonic()))
        await asyncio.to_thread(self.log.close)
        self._set("stopped")

    def _set(self, state: State) -> None:
        if self.state in ("stopping", "stopped") and state not in ("stopped",):
            return  # a stop wins over whatever the supervisor was doing
        self.state = state
        self._changed.set()

    async def _supervise(self) -> None:
        try:
            await self._restarts()
        except Exception as exc:  # a bug or the host failing (no disk for the log): said
            log.exception("vLLM replica %d: its supervisor stopped", self.index)
            self.failure = f"vLLM replica {self.index}: its supervisor stopped ({exc!r})"
            self._set("failed")

    async def _restarts(self) -> None:
        failures = 0  # restarts in a row without `healthy_reset_s` of service between
        start_failures = 0  # exits in a row before being ready, until it first serves
        served_once = False
        while not self._stop.is_set():
            started = time.monotonic()
            served = await self._run_once()
            if self._stop.is_set():
                return
            served_once = served_once or served
            if served and time.monotonic() - started >= self.policy.healthy_reset_s:
                failures = 0
            failures += 1
            start_failures = 0 if served else start_failures + 1
            if not served_once and start_failures >= MAX_START_FAILURES:
                self.failure = (
                    f"vLLM replica {self.index} stopped {start_failures} times in a row before "
                    f"it was ready ({self._last_words()}); its log is {self.log.path.name} "
                    "under CUMULO_HOME/logs"
                )
                log.error("%s", self.failure)
                self._set("failed")
                return
            delay = min(self.policy.backoff_max_s, self.policy.backoff_s * 2 ** (failures - 1))
            self._set("backoff")
            log.warning("vLLM replica %d restarts in %.1f s", self.index, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            self.restarts += 1

    async def _run_once(self) -> bool:
        """Start the process and watch it until it exits, stops answering or is stopped.
        True if it became ready."""
        self.port = free_port()
        command = self._command(self.port)
        self.log.note(f"starting replica {self.index} on port {self.port}")
        self.log.note(" ".join(command))
        read_fd, write_fd = os.pipe()
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=write_fd,
                stderr=asyncio.subprocess.STDOUT,
                env=self._env,
                start_new_session=True,
                preexec_fn=_parent_death_signal(),
            )
        except OSError as exc:
            os.close(read_fd)
            self.log.note(f"cannot start: {exc}")
            self.exit_codes.append(-1)
            return False
        finally:
            os.close(write_fd)
        self.log.pump(read_fd)
        proc = self._proc
        self.pid = proc.pid
        self._set("starting")
        exited = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            if not await self._until_healthy(exited, stopping):
                return False
            if self._on_ready is not None:
                await self._on_ready(self)
            self._set("ready")
            log.info("vLLM replica %d ready on port %d (pid %d)", self.index, self.port, proc.pid)
            await self._watch(exited, stopping)
            return True
        finally:
            stopping.cancel()
            if not exited.done() and not self._stop.is_set():  # unhealthy or too slow
                await self._terminate(self.policy.drain_timeout_s)
            if proc.returncode is not None:
                self._exited(proc)

    async def _until_healthy(
        self, exited: asyncio.Future[int], stopping: asyncio.Future[Any]
    ) -> bool:
        deadline = time.monotonic() + self.policy.startup_timeout_s
        while not (exited.done() or stopping.done()):
            if await self._check():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                self.log.note(
                    f"not healthy within startup_timeout_s "
                    f"({self.policy.startup_timeout_s:g} s); restarting it"
                )
                return False
            await asyncio.wait(
                {exited, stopping},
                timeout=min(left, self.policy.health_interval_s),
                return_when=asyncio.FIRST_COMPLETED,
            )
        return False

    async def _watch(self, exited: asyncio.Future[int], stopping: asyncio.Future[Any]) -> None:
        misses = 0
        while True:
            await asyncio.wait(
                {exited, stopping},
                timeout=self.policy.health_interval_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if exited.done() or stopping.done():
                return
            if await self._check(metrics=True):
                misses = 0
                continue
            misses += 1
            if misses >= self.policy.health_failures:
                self.log.note(f"/health failed {misses} times in a row; restarting")
                log.warning("vLLM replica %d stopped answering /health; restarting", self.index)
                self._set("backoff")
                return

    async def _check(self, metrics: bool = False) -> bool:
        """GET /health (and /metrics): True when healthy."""
        timeout = aiohttp.ClientTimeout(total=self.policy.health_timeout_s)
        http = self._http()
        try:
            async with http.get(f"{self.url}/health", timeout=timeout) as resp:
                if resp.status != 200:
                    return False
            if metrics:
                async with http.get(f"{self.url}/metrics", timeout=timeout) as resp:
                    if resp.status == 200:
                        self.metrics = parse_metrics(await resp.text())
                        self.metrics_at = time.monotonic()
        except (aiohttp.ClientError, TimeoutError):
            return False
        return True

    def _exited(self, proc: asyncio.subprocess.Process) -> None:
        code = proc.returncode if proc.returncode is not None else -1
        self.exit_codes.append(code)
        if not self._stop.is_set():
            self.log.note(f"replica {self.index} exited with status {code}")
            log.warning("vLLM replica %d exited with status %d", self.index, code)
            self._set("backoff")
        _kill_group(proc.pid)  # its children, if any outlived it

    async def _terminate(self, grace: float) -> None:
        """SIGTERM the process, SIGKILL its session after `grace` seconds."""
        proc = self._proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                self.log.note(f"still running {grace:.1f} s after SIGTERM; SIGKILL")
                _kill_group(proc.pid)
                await proc.wait()
        _kill_group(proc.pid)

    def _last_words(self) -> str:
        codes = ", ".join(str(c) for c in self.exit_codes)
        return f"exit statuses {codes}" if codes else "no exit status"


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _parent_death_signal() -> Callable[[], None] | None:
    """A function for the child to run before exec (Linux): SIGTERM when cumulo dies."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    set_pdeathsig, sigterm = 1, int(signal.SIGTERM)  # PR_SET_PDEATHSIG

    def child() -> None:
        prctl(set_pdeathsig, sigterm)

    return child
