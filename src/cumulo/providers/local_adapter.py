"""A fine-tuned model served on its base's engine: a LoRA adapter over a local deployment.

`LocalAdapter` is a deployment of its own for routing (its label, breaker, usage), but
loads nothing: it registers its adapter with the engine of its base's `LocalProvider`
when it starts, and sends every request there with the adapter's name, so requests for
any adapter of the base, and for the base itself, run in the same batches
(`cumulo.engine.lora`). Chat, streaming and text completions work as on the base.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cumulo.errors import Unavailable
from cumulo.providers.local import LocalProvider

if TYPE_CHECKING:
    from cumulo.config import DeploymentConfig
    from cumulo.engine.generate import ChatEngine

__all__ = ["LocalAdapter"]


class LocalAdapter(LocalProvider):
    """The LoRA adapter in `path`, served as model `name` by `base`'s engine."""

    def __init__(
        self, base: LocalProvider, name: str, path: Path, deployment: DeploymentConfig
    ) -> None:
        super().__init__(deployment, "chat", base.ctx)
        self.base = base
        self.adapter = name
        self.path = path
        self._registered = False

    @property
    def ready(self) -> bool:
        return self._registered and self.base.worker is not None

    @property
    def worker(self) -> ChatEngine | None:
        return self.base.worker if self._registered else None

    async def start(self) -> None:
        """Register the adapter with the base's engine (checked against the base there:
        `ConfigError` when it does not fit); `Unavailable` while the base does not serve."""
        worker = self.base.worker
        if worker is None:
            raise Unavailable(
                f"its base model does not serve ({self.base.load_error or 'not loaded'})"
            )
        assert self.adapter is not None
        await asyncio.to_thread(worker.adapters.register, self.adapter, self.path)
        self._registered = True

    async def close(self) -> None:
        """Unregister the adapter; the base's engine is the base's to close."""
        worker = self.base.worker
        self._registered = False
        self._closed = True
        if worker is not None and self.adapter is not None:
            worker.adapters.unregister(self.adapter)

    def describe(self) -> str:
        return f"local LoRA adapter {self.adapter} on {self.base.describe()}"

    def stats(self) -> dict[str, Any] | None:
        return None  # the base's engine reports its figures once
