"""Maps provider kind names to provider classes.

Providers are found through the `cumulo.providers` entry-point group, so the
built-in ones register exactly as a third-party package would:

    [project.entry-points."cumulo.providers"]
    myprovider = "my_package.module:MyProvider"

A provider module is imported only when a deployment names it, so torch is
never imported by a gateway that serves only remote models.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from cumulo.errors import ConfigError
from cumulo.providers.base import Provider

if TYPE_CHECKING:
    from cumulo.config import Config

GROUP = "cumulo.providers"


class ProviderRegistry:
    def __init__(self) -> None:
        self._classes: dict[str, type[Provider]] = {}
        self._entry_points = {ep.name: ep for ep in entry_points(group=GROUP)}

    def register(self, name: str, cls: type[Provider]) -> None:
        self._classes[name] = cls

    def names(self) -> list[str]:
        return sorted(set(self._classes) | set(self._entry_points))

    def check(self, config: Config, source: str) -> None:
        """Raise ConfigError, naming the key path, if a deployment names an unknown provider.

        Checks names only: no provider module is imported.
        """
        known = self.names()
        for i, m in enumerate(config.models):
            for j, d in enumerate(m.deployments):
                if d.provider not in known:
                    raise ConfigError(
                        f"{source}: models.{i}.deployments.{j}.provider: unknown provider "
                        f"{d.provider!r}; known: {', '.join(known)}"
                    )

    def preflight(self, config: Config, source: str) -> list[str]:
        """Run every deployment's `Provider.check` before anything loads.

        A failure raises ConfigError naming the file, the key path and what is wrong, unless
        its model is `optional`: then it is returned as a warning and the model is served
        as failed.
        """
        warnings: list[str] = []
        for i, m in enumerate(config.models):
            for j, d in enumerate(m.deployments):
                try:
                    self.get(d.provider).check(d, m.kind)
                except ConfigError as exc:
                    where = f"models.{i}.deployments.{j}" + (f".{exc.param}" if exc.param else "")
                    if m.optional:
                        warnings.append(
                            f"{source}: {where}: {exc.message}; the optional model {m.name!r} "
                            "is served without it"
                        )
                        continue
                    raise ConfigError(
                        f"{source}: {where}: {exc.message} (or mark the model "
                        f"{m.name!r} `optional: true` to serve without it)"
                    ) from exc
        return warnings

    def get(self, name: str) -> type[Provider]:
        if name in self._classes:
            return self._classes[name]
        ep = self._entry_points.get(name)
        if ep is None:
            raise ConfigError(f"unknown provider {name!r}; known: {', '.join(self.names())}")
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, Provider)):
            raise ConfigError(f"entry point {ep.value} for provider {name!r} is not a Provider")
        self._classes[name] = cls
        return cls
