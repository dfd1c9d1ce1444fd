"""The catalog: every configured model with its deployments' providers.

It builds, starts and closes the providers; which deployment serves a request
is the router's business (`routing.router`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from cumulo.config import Config, DeploymentConfig, ModelConfig
from cumulo.errors import NotFound
from cumulo.providers.base import Provider, ProviderContext
from cumulo.providers.registry import ProviderRegistry

log = logging.getLogger(__name__)
# An upstream model id that can stand in a label as it is: no path, URL or credential.
_PLAIN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")


def deployment_label(d: DeploymentConfig, model: str) -> str:
    """A deployment's label, as callers (`x-cumulo-deployment`), usage and metrics see it.

    Its `name` when configured; else `provider:<upstream model id>` when the id is a plain
    name (`openai:gpt-4o-mini`), else `provider:<model name>`: a local model's path, or an
    id that looks like a path or a URL, never leaves the server.
    """
    if d.name:
        return d.name
    upstream = d.model if d.model and _PLAIN_ID.match(d.model) else model
    return f"{d.provider}:{upstream}"


def deployment_labels(model: ModelConfig) -> list[str]:
    """The labels of a model's deployments, made unique within it by position (`…#1`)."""
    labels = [deployment_label(d, model.name) for d in model.deployments]
    counts = Counter(labels)
    return [f"{label}#{i + 1}" if counts[label] > 1 else label for i, label in enumerate(labels)]


# An absolute file system path (not the `//host/...` of a URL), as foreign error text has them.
_PATH = re.compile(r"(?<![\w:/.~-])(?:~|/)[^\s'\"`,;:()\[\]]*(?<!\.)")


def public_reason(message: str) -> str:
    """`message` with file system paths replaced by `<path>`: fit for callers to see."""
    return _PATH.sub("<path>", message)


class Caller(Protocol):
    """Who asks (`governance.identity.Principal` is one)."""

    @property
    def tenant_id(self) -> str | None: ...

    def may_use(self, model: str) -> bool: ...


@dataclass(slots=True, frozen=True)
class Owner:
    """A model only its tenant sees: a fine-tuned model, with the base it was tuned on."""

    tenant_id: str | None
    base: str


@dataclass(slots=True)
class ModelEntry:
    config: ModelConfig
    deployments: list[Provider]
    owner: Owner | None = None  # None: a configured model, for every caller it allows

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def ready(self) -> bool:
        return any(p.ready and p.load_error is None for p in self.deployments)

    @property
    def failed(self) -> bool:
        """Every deployment failed to start: the model cannot serve."""
        return all(p.load_error is not None for p in self.deployments)

    @property
    def load_error(self) -> str | None:
        """Why its deployments failed to start (those that did), in words fit for callers."""
        errors = list(dict.fromkeys(p.load_error for p in self.deployments if p.load_error))
        return "; ".join(errors) or None


class Catalog:
    def __init__(self, config: Config, registry: ProviderRegistry, ctx: ProviderContext) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._registry = registry
        self._ctx = ctx
        for m in config.models:
            providers: list[Provider] = []
            for d, label in zip(m.deployments, deployment_labels(m), strict=True):
                made = registry.get(d.provider).create_all(d, m.kind, ctx)
                for i, provider in enumerate(made):  # replicas: `label/0`, `label/1`, ...
                    provider.label = label if len(made) == 1 else f"{label}/{i}"
                providers += made
            self._entries[m.name] = ModelEntry(m, providers)
            for alias in dict.fromkeys(a for p in providers for a in p.aliases()):
                serving = [p for p in providers if alias in p.aliases()]
                description = f"served by the deployments of {m.name}"
                aliased = m.model_copy(
                    update={"name": alias, "fallbacks": [], "description": description}
                )
                self._entries[alias] = ModelEntry(aliased, serving)

    def entries(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def may_use(self, who: Caller, name: str) -> bool:
        """Whether `who` may call model `name`: a configured model as its key allows; a
        tenant's own model (fine-tuned) only by that tenant, when it may use the base."""
        entry = self._entries.get(name)
        if entry is None or entry.owner is None:
            return who.may_use(name)
        return entry.owner.tenant_id == who.tenant_id and who.may_use(entry.owner.base)

    async def add(
        self, config: ModelConfig, owner: Owner, providers: list[Provider] | None = None
    ) -> ModelEntry:
        """Add and start a tenant's own model (a fine-tuned model) while serving.

        Its providers (`providers`, one per deployment of `config`, else made from them)
        start before it is visible; a name already present is kept as it is."""
        if config.name in self._entries:
            return self._entries[config.name]
        if providers is None:
            providers = [
                self._registry.get(d.provider).create(d, config.kind, self._ctx)
                for d in config.deployments
            ]
        for provider, label in zip(providers, deployment_labels(config), strict=True):
            provider.label = label
        entry = ModelEntry(config, providers, owner)
        await asyncio.gather(*(self._start(entry, p) for p in providers))
        self._entries.setdefault(config.name, entry)
        return self._entries[config.name]

    async def start(self) -> None:
        """Start every provider (local ones load their weights here).

        A provider that fails to start is logged and keeps why in `load_error` (without
        server paths, for callers and `/health/ready`); the others serve on.
        """
        await asyncio.gather(*(self._start(e, p) for e, p in self._providers()))

    @staticmethod
    async def _start(entry: ModelEntry, provider: Provider) -> None:
        try:
            await provider.start()
            log.info("ready: %s", provider.describe())
        except Exception as exc:  # noqa: BLE001 - reported; the deployment stays not ready
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            provider.load_error = public_reason(message)
            log.error("model %r: cannot start %s: %s", entry.name, provider.describe(), message)

    def _providers(self) -> list[tuple[ModelEntry, Provider]]:
        """Each provider once, with the first model it serves (an alias shares its
        model's providers)."""
        seen: set[int] = set()
        out = []
        for e in self._entries.values():
            for p in e.deployments:
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append((e, p))
        return out

    async def close(self) -> None:
        for _, p in self._providers():
            try:
                await p.close()
            except Exception:  # one provider failing to close must not stop the rest
                log.exception("closing %s failed", p.describe())

    @property
    def ready(self) -> bool:
        """Every model serves, or failed to load and is `optional`."""
        return all(e.ready or (e.failed and e.config.optional) for e in self._entries.values())

    def failures(self, required: bool = False) -> dict[str, str]:
        """Model name → why some of its deployments failed to start (only the models not
        marked `optional`, when `required`)."""
        return {
            e.name: e.load_error
            for e in self._entries.values()
            if e.load_error is not None and not (required and e.config.optional)
        }

    def loading(self) -> list[str]:
        """The models still loading."""
        return [e.name for e in self._entries.values() if not e.ready and not e.failed]

    def get(self, name: str) -> ModelEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise NotFound(
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return entry
