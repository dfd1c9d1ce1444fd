"""`vllm`: vLLM servers that cumulo starts and supervises (GPU fleets; the CPU build too).

A `provider: vllm` deployment is `replicas` vLLM OpenAI-compatible server processes of the
model at `path`, each on its own loopback port, started, health-checked, restarted with
backoff and drained at shutdown by `vllm_fleet.Replica`. Each replica is one routing
deployment (labelled `<label>/<i>`): the router balances them (least-busy unless the
model's `routing.strategy` says otherwise), with a circuit breaker each, and fails over to
the model's other deployments while a replica restarts. Requests go to a replica through
the `openai` provider's wire code; each fleet has a random API key of its own
(`VLLM_API_KEY`), so other local users cannot call the replicas' ports directly.

Everything else is vLLM's: multi-GPU and multi-node serving through its own tensor and
pipeline parallelism (`args`), LoRA adapters through its runtime loading
(`/v1/load_lora_adapter`, with `VLLM_ALLOW_RUNTIME_LORA_UPDATING`). vLLM is an optional
extra (`pip install 'cumulo[vllm]'`), or any interpreter that has it (`python`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import re
import secrets
import shutil
import sys
from collections.abc import AsyncGenerator
from contextlib import aclosing
from pathlib import Path
from typing import Any, cast

import aiohttp

from cumulo.config import DeploymentConfig
from cumulo.errors import ConfigError, Unavailable, UpstreamError
from cumulo.providers.base import Provider, ProviderContext
from cumulo.providers.openai import OpenAIProvider
from cumulo.providers.vllm_fleet import (
    Policy,
    Replica,
    ReplicaFailed,
    ReplicaLog,
    replica_command,
    replica_env,
    split_devices,
)
from cumulo.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelKind,
    StreamEvent,
)

log = logging.getLogger(__name__)
_FILE_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class Fleet:
    """The replicas of one vLLM deployment, and what they share: the command line, the API
    key, the LoRA adapters loaded into each."""

    def __init__(self, deployment: DeploymentConfig, ctx: ProviderContext) -> None:
        self.deployment = deployment
        self.ctx = ctx
        self.api_key = secrets.token_urlsafe(32)
        self.served_name = deployment.model or Path(deployment.path or "model").name
        self.adapters = {n: str(Path(p).expanduser()) for n, p in deployment.adapters.items()}
        self.replicas: dict[int, Replica] = {}
        d = deployment
        self.policy = Policy(
            startup_timeout_s=d.startup_timeout_s,
            backoff_s=d.restart_backoff_s,
            backoff_max_s=d.restart_backoff_max_s,
            drain_timeout_s=d.drain_timeout_s,
        )

    def command(self, port: int) -> list[str]:
        d = self.deployment
        path = str(Path(d.path or "").expanduser())
        return replica_command(d.python or sys.executable, path, self.served_name, port, d.args)

    def replica(self, index: int, label: str) -> Replica:
        """Replica `index`, made on first use (its log file is named after `label`)."""
        replica = self.replicas.get(index)
        if replica is None:
            d = self.deployment
            devices = split_devices(d.devices, d.replicas)[index]
            env = replica_env(
                os.environ, d.env, devices, self.api_key, lora="--enable-lora" in d.args
            )
            name = _FILE_SAFE.sub("_", label).strip("_") or "vllm"
            log_file = ReplicaLog(
                self.ctx.home / "logs" / f"vllm-{name}.log",
                self.policy.log_max_bytes,
                self.policy.log_backups,
            )
            replica = Replica(
                index,
                self.command,
                env,
                log_file,
                self.policy,
                lambda: self.ctx.http,
                self._load_adapters,
            )
            self.replicas[index] = replica
        return replica

    async def stop(self) -> None:
        """Drain and stop every replica, together."""
        await asyncio.gather(*(r.stop() for r in self.replicas.values()))

    # -- LoRA adapters ------------------------------------------------------------

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter into every running replica (and into each one that starts
        later); requests whose model is `name` are then served by it."""
        self.adapters[name] = path
        for replica in self.replicas.values():
            if replica.ready:
                await self._post(
                    replica, "load_lora_adapter", {"lora_name": name, "lora_path": path}
                )

    async def unload_adapter(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            return
        for replica in self.replicas.values():
            if replica.ready:
                await self._post(replica, "unload_lora_adapter", {"lora_name": name})

    async def _load_adapters(self, replica: Replica) -> None:
        """Before a replica is ready (at start and after each restart): its adapters."""
        for name, path in list(self.adapters.items()):
            try:
                await self._post(
                    replica, "load_lora_adapter", {"lora_name": name, "lora_path": path}
                )
            except UpstreamError as exc:
                log.error("vLLM replica %d: adapter %r: %s", replica.index, name, exc.message)

    async def _post(self, replica: Replica, path: str, body: dict[str, str]) -> None:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        timeout = aiohttp.ClientTimeout(total=self.deployment.timeout_s)
        try:
            async with self.ctx.http.post(
                f"{replica.url}/v1/{path}", json=body, headers=headers, timeout=timeout
            ) as resp:
                if resp.status >= 300:
                    detail = (await resp.text())[:500]
                    log.error("vLLM replica %d: %s: %s", replica.index, path, detail)
                    raise UpstreamError(
                        f"vLLM replica {replica.index} refused {path} "
                        f"({body.get('lora_name')}): status {resp.status}"
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamError(
                f"vLLM replica {replica.index}: {path} failed: {type(exc).__name__}"
            ) from exc


class VLLMProvider(Provider):
    """One replica of a vLLM deployment; see the module docstring."""

    def __init__(
        self,
        deployment: DeploymentConfig,
        kind: ModelKind,
        ctx: ProviderContext,
        fleet: Fleet | None = None,
        index: int = 0,
    ) -> None:
        super().__init__(deployment, kind, ctx)
        self.fleet = fleet or Fleet(deployment, ctx)
        self.index = index
        self._replica: Replica | None = None
        self._wires: dict[tuple[int, str], OpenAIProvider] = {}

    @classmethod
    def create_all(
        cls, deployment: DeploymentConfig, kind: ModelKind, ctx: ProviderContext
    ) -> list[Provider]:
        fleet = Fleet(deployment, ctx)
        return [cls(deployment, kind, ctx, fleet, i) for i in range(deployment.replicas)]

    @classmethod
    def check(cls, deployment: DeploymentConfig, kind: ModelKind) -> None:
        """The model directory exists, and the interpreter that runs vLLM has it."""
        path = Path(deployment.path or "").expanduser()
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{path} is not a Hugging Face model directory (no config.json)", param="path"
            )
        if deployment.python is not None:
            python = shutil.which(deployment.python)
            if python is None:
                raise ConfigError(f"{deployment.python} is not an executable", param="python")
        elif importlib.util.find_spec("vllm") is None:
            raise ConfigError(
                "vLLM is not installed: pip install 'cumulo[vllm]' (or set `python` to an "
                "interpreter that has it)",
                param="provider",
            )
        for name, adapter in deployment.adapters.items():
            if not Path(adapter).expanduser().is_dir():
                raise ConfigError(
                    f"adapter {name!r}: {adapter} is not a directory", param="adapters"
                )

    def aliases(self) -> list[str]:
        """The configured LoRA adapters: each is a model of the catalog served here."""
        return list(self.deployment.adapters)

    @property
    def replica(self) -> Replica | None:
        return self._replica

    @property
    def ready(self) -> bool:
        return self._replica is not None and self._replica.ready

    async def start(self) -> None:
        replica = self._replica = self.fleet.replica(self.index, self.label)
        replica.start()
        try:
            await replica.wait_ready()
        except ReplicaFailed as exc:
            raise UpstreamError(str(exc)) from exc

    async def close(self) -> None:
        """Stop the whole fleet at once (the first replica closed drains them all)."""
        await self.fleet.stop()

    def describe(self) -> str:
        r = self._replica
        where = f"port {r.port}, {r.state}" if r is not None else "not started"
        return f"vllm replica {self.index} of {self.deployment.path} ({where})"

    def stats(self) -> dict[str, Any] | None:
        if self._replica is None:
            return {"loaded": False, "engine": "vllm", "replica": self.index, "state": "idle"}
        return self._replica.stats()

    def credentials(self) -> tuple[str, ...]:
        return (self.fleet.api_key, *super().credentials())

    # -- calls -----------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> ChatResponse:
        replica = self._serving()
        replica.enter()
        try:
            return await self._wire(replica, request.model).chat(request)
        finally:
            replica.leave()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        replica = self._serving()
        replica.enter()
        try:
            # The openai provider's stream is an async generator: closed, it releases the
            # upstream connection.
            wire = cast(
                AsyncGenerator[StreamEvent, None],
                self._wire(replica, request.model).stream(request),
            )
            async with aclosing(wire) as events:
                async for event in events:
                    yield event
        finally:
            replica.leave()

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResponse:
        replica = self._serving()
        replica.enter()
        try:
            return await self._wire(replica, request.model).embed(request)
        finally:
            replica.leave()

    def _serving(self) -> Replica:
        replica = self._replica
        if replica is None or not replica.ready:
            state = "not started" if replica is None else replica.state
            raise Unavailable(f"vLLM replica {self.index} of '{self.label}' is {state}")
        return replica

    def _wire(self, replica: Replica, model: str) -> OpenAIProvider:
        """The OpenAI-compatible client of `replica` for `model` (an adapter's name, else
        the base model)."""
        upstream = model if model in self.fleet.adapters else self.fleet.served_name
        key = (replica.port or 0, upstream)
        wire = self._wires.get(key)
        if wire is None:
            if len(self._wires) > 64:  # old ports of restarted replicas
                self._wires.clear()
            d = self.deployment
            config = DeploymentConfig(
                provider="openai",
                model=upstream,
                base_url=f"{replica.url}/v1",
                headers={**d.headers, "Authorization": f"Bearer {self.fleet.api_key}"},
                connect_timeout_s=d.connect_timeout_s,
                timeout_s=d.timeout_s,
            )
            wire = self._wires[key] = OpenAIProvider(config, self.kind, self.ctx)
            wire.label = self.label
        return wire
