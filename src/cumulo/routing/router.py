"""The router: picks deployments, retries, fails over and falls back.

For a request to model M it walks M's deployments in the order its strategy
gives, skipping open circuits. A retryable failure (connect error, timeout,
429, 5xx, a model still loading) moves on at once to the next untried
deployment; once all were tried it retries after an exponential backoff with
jitter, honouring Retry-After. When M's attempts are spent it tries M's
`fallbacks` in order. One deadline (`routing.timeout_s`) bounds everything.

A prompt longer than a model's context window skips that model for a
fallback with a larger window (estimated before the call, or reported by the
upstream as `context_length_exceeded`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from cumulo.config import ModelConfig
from cumulo.errors import (
    CumuloError,
    InvalidRequest,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from cumulo.governance.pricing import Price, price_of
from cumulo.providers.base import Provider
from cumulo.routing.breaker import BreakerPolicy, CircuitBreaker
from cumulo.routing.catalog import Catalog, ModelEntry
from cumulo.routing.strategies import STRATEGIES
from cumulo.types import ModelKind

T = TypeVar("T")
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
_EWMA = 0.2


def retryable(exc: CumuloError) -> bool:
    return isinstance(exc, UpstreamError | RateLimited | Unavailable)


@dataclass(slots=True)
class DeploymentState:
    """A deployment with what routing knows about it."""

    provider: Provider
    breaker: CircuitBreaker
    price: Price | None
    in_flight: int = 0
    latency_ewma: float | None = None
    ttft_ewma: float | None = None
    requests: int = 0
    failures: int = 0

    @property
    def label(self) -> str:
        return self.provider.deployment.label

    @property
    def weight(self) -> float:
        return self.provider.deployment.weight

    def latency_score(self) -> float:
        if self.ttft_ewma is not None:
            return self.ttft_ewma
        return self.latency_ewma if self.latency_ewma is not None else 0.0



    def settle(self, ok: bool | None, started: float, ttft: float | None = None) -> None:
        """Account one finished attempt: ok, a deployment failure, or no verdict (None)."""
        self.in_flight -= 1
        if ok is None:
            self.breaker.release_probe()
            return
        self.breaker.record(ok)
        if not ok:
            self.failures += 1
            return
        latency = time.perf_counter() - started
        self.latency_ewma = _ewma(self.latency_ewma, latency)
        if ttft is not None:
            self.ttft_ewma = _ewma(self.ttft_ewma, ttft - started)


def _ewma(current: float | None, sample: float) -> float:
    return sample if current is None else current + _EWMA * (sample - current)


@dataclass(slots=True)
class Lease(Generic[T]):
    """A successful attempt's result, holding its deployment until `finish()`."""

    value: T
    deployment: DeploymentState
    model: str
    attempts: int
    started: float
    _done: bool = False

    def finish(self, ok: bool | None, ttft: float | None = None) -> None:
        """Report the outcome once: True, False (a deployment failure) or None (no verdict)."""
        if not self._done:
            self._done = True
            self.deployment.settle(ok, self.started, ttft)


@dataclass(slots=True)
class Route:
    config: ModelConfig
    entry: ModelEntry
    deployments: list[DeploymentState]


class Router:
    def __init__(self, catalog: Catalog, rng: random.Random | None = None) -> None:
        self.catalog = catalog
        self.rng = rng or random.Random()
        self.routes: dict[str, Route] = {}
        for entry in catalog.entries():
            b = entry.config.routing.breaker
            policy = BreakerPolicy(b.consecutive_failures, b.error_rate, b.window, b.cooldown_s)
            states = [
                DeploymentState(p, CircuitBreaker(policy), price_of(p.deployment))
                for p in entry.deployments
            ]
            self.routes[entry.name] = Route(entry.config, entry, states)

    def route(self, name: str, kind: ModelKind) -> Route:
        entry = self.catalog.get(name)  # raises NotFound
        if entry.config.kind != kind:
            raise InvalidRequest(
                f"The model '{name}' is a {entry.config.kind} model, not a {kind} model.",
                param="model",
                code="wrong_model_kind",
            )
        return self.routes[name]

    async def run(
        self,
        model: str,
        kind: ModelKind,
        attempt: Callable[[str, Provider], Awaitable[T]],
        prompt_tokens: int = 0,
    ) -> Lease[T]:
        """Call `attempt(model_name, provider)` until one succeeds; see the module docstring.

        The caller must `finish()` the returned lease when the response is complete.
        """
        first = self.route(model, kind)
        chain = [first] + [self.routes[f] for f in first.config.fallbacks]
        deadline = time.monotonic() + first.config.routing.timeout_s
        return await self._run_chain(chain, attempt, deadline, prompt_tokens)

    async def _run_chain(
        self,
        chain: list[Route],
        attempt: Callable[[str, Provider], Awaitable[T]],
        deadline: float,
        prompt_tokens: int,
    ) -> Lease[T]:
        attempts = 0
        last: CumuloError | None = None
        for route in chain:
            window = route.config.context_window
            if window is not None and prompt_tokens > window:
                last = InvalidRequest(
                    f"The prompt (~{prompt_tokens} tokens) exceeds the context window of "
                    f"'{route.config.name}' ({window} tokens).",
                    param="messages",
                    code=CONTEXT_LENGTH_EXCEEDED,
                )
                continue
            try:
                return await self._run_model(route, attempt, deadline, attempts)
            except _Exhausted as ex:
                attempts = ex.attempts
                last = ex.error
                last.attempts = attempts
                if not (retryable(last) or last.code == CONTEXT_LENGTH_EXCEEDED):
                    raise last from None
                if time.monotonic() >= deadline:
                    break
        assert last is not None
        raise last

    async def _run_model(
        self,
        route: Route,
        attempt: Callable[[str, Provider], Awaitable[T]],
        deadline: float,
        attempts: int,
    ) -> Lease[T]:
        policy = route.config.routing
        strategy = STRATEGIES[policy.strategy]
        tried: set[int] = set()
        last: CumuloError | None = None
        last_state: DeploymentState | None = None
        for i in range(policy.retries + 1):
            order = [d for d in strategy(route.deployments, self.rng) if d.breaker.available()]
            if not order:
                last = last or Unavailable(
                    f"Every deployment of '{route.config.name}' is unavailable (circuit open).",
                    code="circuit_open",
                )
                break
            fresh = [d for d in order if id(d) not in tried]
            state = fresh[0] if fresh else order[0]
            if i > 0 and not fresh:
                delay = min(policy.backoff_max_s, policy.backoff_s * 2 ** (i - 1))
                delay *= 0.5 + self.rng.random() / 2
                if last is not None and last.retry_after and state is last_state:
                    delay = max(delay, last.retry_after)
                if time.monotonic() + delay >= deadline:
                    break
                await asyncio.sleep(delay)
            if not state.breaker.allow():
                continue
            tried.add(id(state))
            attempts += 1
            state.in_flight += 1
            state.requests += 1
            started = time.perf_counter()
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise UpstreamTimeout(f"The deadline for '{route.config.name}' passed.")
                try:
                    value = await asyncio.wait_for(attempt(route.config.name, state.provider), remaining)
                except TimeoutError as exc:
                    raise UpstreamTimeout(
                        f"No answer for '{route.config.name}' within {policy.timeout_s:g} s."
                    ) from exc
            except CumuloError as exc:
                failed = retryable(exc)
                state.settle(not failed, started)
                last, last_state = exc, state
                if not failed:
                    raise _Exhausted(exc, attempts) from exc
                continue
            except BaseException:
                state.settle(None, started)  # cancelled (client gone) or a bug: no verdict
                raise
            return Lease(value, state, route.config.name, attempts, started)
        error = last or Unavailable(f"No deployment of '{route.config.name}' answered.")
        raise _Exhausted(error, attempts)


class _Exhausted(Exception):
    def __init__(self, error: CumuloError, attempts: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts
