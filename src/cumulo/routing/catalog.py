"""The catalog: every configured model with its deployments' providers.

It builds, starts and closes the providers; which deployment serves a request
is the router's business (`routing.router`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from cumulo.config import Config, ModelConfig
from cumulo.errors import NotFound
from cumulo.providers.base import Provider, ProviderContext
from cumulo.providers.registry import ProviderRegistry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ModelEntry:
    config: ModelConfig
    deployments: list[Provider]

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ready(self) -> bool:
        return any(p.ready for p in self.deployments)


class Catalog:
    def __init__(self, config: Config, registry: ProviderRegistry, ctx: ProviderContext) -> None:
        self._entries: dict[str, ModelEntry] = {}
        for m in config.models:
            providers = [registry.get(d.provider).create(d, m.kind, ctx) for d in m.deployments]
            self._entries[m.name] = ModelEntry(m, providers)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    async def start(self) -> None:
        """Start every provider (local ones load their weights here).

        A provider that fails to start is logged and stays not ready; the
        others serve on.
        """
        await asyncio.gather(
            *(self._start(p) for e in self._entries.values() for p in e.deployments)
        )

    @staticmethod
    async def _start(provider: Provider) -> None:
        try:
            await provider.start()
            log.info("ready: %s", provider.describe())
        except Exception as exc:  # noqa: BLE001 - reported; the model stays not ready
            log.error("cannot start %s: %s", provider.describe(), exc)

    async def close(self) -> None:
        for e in self._entries.values():
            for p in e.deployments:
                try:
                    await p.close()
                except Exception:  # one provider failing to close must not stop the rest
                    log.exception("closing %s failed", p.describe())

    @property
    def ready(self) -> bool:
        return all(e.ready for e in self._entries.values())

    def get(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return entry
