"""Building a Router in-process for routing tests, and a scripted upstream double.

`Scripted` is a provider whose upstream is a script: a test double of the
*upstream* (what it answers and when), not of the routing code under test.
Real upstream behaviour over HTTP comes from `fakes.FakeOpenAIUpstream` with
the real `openai` provider; both can sit in one config.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from cumulo.config import parse_config
from cumulo.errors import CumuloError
from cumulo.providers.base import Provider, ProviderContext
from cumulo.providers.registry import ProviderRegistry
from cumulo.routing.catalog import Catalog
from cumulo.routing.router import Router
from cumulo.types import (
    ChatRequest,
    ChatResponse,
    ChatStream,
    Message,
    StreamEnd,
    TextDelta,
    Usage,
)

T = TypeVar("T")
Step = CumuloError | float | str  # raise it | answer after that many seconds | stream then fail


class Scripted(Provider):
    """Answers by script: each call takes the next step (the last one repeats).

    A `CumuloError` step is raised; a float answers "ok" after that many
    seconds; `"ok"` answers at once. Streams yield "ok", then StreamEnd, or
    raise the step's error before the first event. `calls` records when each
    call started (time.monotonic()), `requests` what each call was asked.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.script: list[Step] = ["ok"]
        self.calls: list[float] = []
        self.requests: list[ChatRequest] = []
        self.is_ready = True
        self.start_error: Exception | None = None  # what start() raises, if anything

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    def describe(self) -> str:
        return f"scripted {self.deployment.model}"

    @property
    def ready(self) -> bool:
        return self.is_ready

    async def _step(self) -> None:
        self.calls.append(time.monotonic())
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, CumuloError):
            raise step
        if isinstance(step, float):
            await asyncio.sleep(step)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        await self._step()
        return ChatResponse("id", request.model, 0, Message("assistant", "ok"), "stop", Usage(3, 1))

    async def stream(self, request: ChatRequest) -> ChatStream:
        self.requests.append(request)
        await self._step()
        yield TextDelta("ok")
        yield StreamEnd("stop", Usage(3, 1))


def scripted(model: str, **extra: Any) -> dict[str, Any]:
    """A deployment of the scripted provider (`model` is only a label)."""
    return {"provider": "scripted", "model": model, **extra}


def chat_request(text: str = "hello", model: str = "m") -> ChatRequest:
    return ChatRequest(model=model, messages=[Message("user", text)])


def run_with_router(
    models: list[dict[str, Any]], fn: Callable[[Router], Awaitable[T]], seed: int = 7
) -> T:
    """Build a Router over `models` (config dicts) and run `fn(router)` in a fresh loop."""
    import random

    config = parse_config({"models": models}, "<test>")

    async def main() -> T:
        async with aiohttp.ClientSession() as http:
            registry = ProviderRegistry()
            registry.register("scripted", Scripted)
            catalog = Catalog(config, registry, ProviderContext(http, Path(".")))
            return await fn(Router(catalog, random.Random(seed)))

    return asyncio.run(main())


def provider(router: Router, model: str, index: int = 0) -> Scripted:
    p = router.routes[model].deployments[index].provider
    assert isinstance(p, Scripted)
    return p


async def drain(stream: AsyncIterator[Any]) -> list[Any]:
    return [ev async for ev in stream]
