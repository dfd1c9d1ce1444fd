"""Serving fine-tuned models: each succeeded job's model joins the catalog at once.

`TunedModels.sync()` reads the fine-tuning jobs that succeeded and adds each one's model
(`ft:<base>:<suffix>:<job id>`) to the catalog and router of this process, owned by the
job's tenant (only that tenant sees and calls it). A gateway process calls it every
`jobs.poll_interval_s` and at start, so a model trained by any worker is served by every
replica within a poll, and after a restart.

The model is served by the local provider from the job's merged directory (the base with
the adapter merged in, written by the trainer): its own engine, beside the base's. That
is the simplest honest path; it costs one more copy of the base's weights per tuned
model. Applying adapters on the loaded base, several adapters mixed in one running batch,
is the engine's next step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from cumulo.config import DeploymentConfig, ModelConfig
from cumulo.routing.catalog import Catalog, Owner
from cumulo.routing.router import Router
from cumulo.store.jobs import JobTable

log = logging.getLogger(__name__)


class TunedModels:
    def __init__(self, jobs: JobTable, catalog: Catalog, router: Router) -> None:
        self.jobs = jobs
        self.catalog = catalog
        self.router = router
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
        """Add the models of succeeded jobs not served yet; their names."""
        from cumulo.jobs.finetune.kind import KIND

        added = []
        known = {e.name for e in self.catalog.entries()}
        for job in await self.jobs.in_status(["completed"]):
            p = job.params
            name = p.get("fine_tuned_model")
            if job.kind != KIND or not name or name in known or name in self.failed:
                continue
            path = Path(p.get("model_path") or "")
            if not (path / "config.json").is_file():
                log.warning("fine-tuned model %s: its directory is missing", name)
                self.failed.add(name)
                continue
            base = p["model"]
            base_config = next(
                (e.config for e in self.catalog.entries() if e.name == base and e.owner is None),
                None,
            )
            local = [
                d for d in (base_config.deployments if base_config else []) if d.provider == "local"
            ]
            deployment = (
                local[0].model_copy(update={"path": str(path), "name": f"local:{name}"})
                if local
                else DeploymentConfig(provider="local", name=f"local:{name}", path=str(path))
            )
            config = ModelConfig(
                name=name,
                kind="chat",
                description=f"{base} fine-tuned by job {job.id}",
                untrained=base_config.untrained if base_config else False,
                context_window=base_config.context_window if base_config else None,
                default_max_tokens=base_config.default_max_tokens if base_config else None,
                deployments=[deployment],
            )
            entry = await self.catalog.add(config, Owner(job.tenant_id, base))
            if entry.failed:
                self.failed.add(name)
                continue
            self.router.add(entry)
            added.append(name)
        return added


__all__ = ["TunedModels"]
