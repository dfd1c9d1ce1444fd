"""Serving fine-tuned models: each succeeded job's model joins the catalog at once.

`TunedModels.sync()` reads the fine-tuning jobs that succeeded and adds each one's model
(`ft:<base>:<suffix>:<job id>`), and one model per checkpoint of the job
(`ft:<base>:<suffix>:<job id>:ckpt-step-N`), to the catalog and router of this process,
owned by the job's tenant (only that tenant sees and calls them, and only while it may
use the base). A gateway process calls it every `jobs.poll_interval_s` and at start, so a
model trained by any worker is served by every replica within a poll, and after a restart.

Nothing more is loaded: each model is the job's LoRA adapter (`adapter/`, or the
checkpoint's) applied on the base's already-loaded engine, one `LocalAdapter` deployment
per local deployment of the base. Requests for every adapter of a base, and for the base
itself, run in the same batches; the engine keeps the `lora_cache_size` most recently used
adapters loaded (`cumulo.engine.lora`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from cumulo.config import ModelConfig
from cumulo.jobs.finetune.kind import KIND, job_dir
from cumulo.jobs.finetune.train import CKPT_PREFIX, checkpoints
from cumulo.providers.base import Provider
from cumulo.providers.local import LocalProvider
from cumulo.providers.local_adapter import LocalAdapter
from cumulo.routing.catalog import Catalog, ModelEntry, Owner
from cumulo.routing.router import Router
from cumulo.store.jobs import JobRow, JobTable

log = logging.getLogger(__name__)


class TunedModels:
    def __init__(self, jobs: JobTable, catalog: Catalog, router: Router, home: Path) -> None:
        self.jobs = jobs
        self.catalog = catalog
        self.router = router
        self.home = home
        self.failed: set[str] = set()

    async def run(self, every_s: float, ready: Callable[[], Awaitable[None]]) -> None:
        """`sync` once `ready()` returns (the configured models have loaded: loads are one
        at a time), then every `every_s` seconds (a failed round is logged and retried)."""
        await ready()
        while True:
            try:
                await self.sync()
            except Exception:  # the database is away: the next round tries again
                log.exception("fine-tuned models: sync failed")
            await asyncio.sleep(every_s)

    async def sync(self) -> list[str]:
        """Add the models of succeeded jobs (and of their checkpoints) not served yet;
        their names."""
        added = []
        known = {e.name for e in self.catalog.entries()}
        for job in await self.jobs.in_status(["completed"]):
            name = job.params.get("fine_tuned_model")
            if job.kind != KIND or not name:
                continue
            for model, adapter in await asyncio.to_thread(self._adapters, job, name):
                if model in known or model in self.failed:
                    continue
                if await self._add(job, model, adapter):
                    added.append(model)
        return added

    def _adapters(self, job: JobRow, name: str) -> list[tuple[str, Path]]:
        """The job's models: its final adapter, then one per checkpoint."""
        out = job_dir(self.home, job.id)
        found = [(name, out / "adapter")]
        for step, path in checkpoints(out):
            found.append((f"{name}:{CKPT_PREFIX}{step}", path))
        return found

    async def _add(self, job: JobRow, name: str, adapter: Path) -> bool:
        base = str(job.params["model"])
        entry = self._base(base)
        bases = [
            p
            for p in (entry.deployments if entry else [])
            if isinstance(p, LocalProvider) and p.kind == "chat" and p.adapter is None
        ]
        if entry is None or not bases:
            log.warning("fine-tuned model %s: its base %r is not served locally here", name, base)
            self.failed.add(name)
            return False
        if not (adapter / "adapter_config.json").is_file():
            log.warning("fine-tuned model %s: its adapter is missing", name)
            self.failed.add(name)
            return False
        providers: list[Provider] = [
            LocalAdapter(
                p, name, adapter, p.deployment.model_copy(update={"name": f"local:{name}"})
            )
            for p in bases
        ]
        step = name.rpartition(f":{CKPT_PREFIX}")[2] if f":{CKPT_PREFIX}" in name else None
        what = f"{base} fine-tuned by job {job.id}" + (
            f", checkpoint at step {step}" if step else ""
        )
        config = ModelConfig(
            name=name,
            kind="chat",
            description=what,
            untrained=entry.config.untrained,
            context_window=entry.config.context_window,
            default_max_tokens=entry.config.default_max_tokens,
            deployments=[p.deployment for p in providers],
        )
        added = await self.catalog.add(config, Owner(job.tenant_id, base), providers)
        if added.failed:
            self.failed.add(name)
            return False
        self.router.add(added)
        return True

    def _base(self, base: str) -> ModelEntry | None:
        return next((e for e in self.catalog.entries() if e.name == base and e.owner is None), None)


__all__ = ["TunedModels"]
