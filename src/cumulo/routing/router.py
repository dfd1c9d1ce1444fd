"""The router: picks deployments, retries, fails over and falls back.

For a request to model M it walks M's ready deployments in the order its
strategy gives, skipping open circuits (a 429 is not held against a breaker:
the deployment is busy, not broken). A retryable failure (connect error,
timeout, 429, 5xx, a model still loading) moves on at once to the next untried
deployment; once all were tried it retries the one free soonest after an
exponential backoff with jitter, and never before that deployment's
Retry-After. `routing.retries` bounds the attempts on M (moving on to another
deployment is one). When M's attempts are spent it tries M's `fallbacks` in
order. One deadline (M's `routing.timeout_s`) bounds everything, backoffs
included, and each attempt ends at its deployment's `timeout_s` (a stream: at its
first event; the provider bounds the rest). Any other error (a 400, say) is the caller's and is raised at once.

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

from cumulo.config import ModelConfig, PriceConfig
from cumulo.deadlines import DeadlinePassed, Deadlines
from cumulo.errors import (
    CumuloError,
    InvalidRequest,
    RateLimited,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
)
from cumulo.governance.quotas.pricing import price_of
from cumulo.providers.base import Provider
from cumulo.routing.breaker import BreakerPass, BreakerPolicy, CircuitBreaker
from cumulo.routing.catalog import Catalog, ModelEntry
from cumulo.routing.deployment import DeploymentState
from cumulo.routing.strategies import STRATEGIES
from cumulo.types import ModelKind

T = TypeVar("T")
Attempt = Callable[[str, Provider], Awaitable[T]]
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def retryable(exc: CumuloError) -> bool:
    return isinstance(exc, UpstreamError | RateLimited | Unavailable)


@dataclass(slots=True)
class Lease(Generic[T]):
    """A successful attempt's result, holding its deployment until `finish()`."""

    value: T
    deployment: DeploymentState
    model: str
    attempts: int
    started: float
    admission: BreakerPass = "call"
    _done: bool = False

    def finish(self, ok: bool | None, ttft: float | None = None) -> None:
        """Report the outcome once: True, False (a deployment failure) or None (no verdict)."""
        if not self._done:
            self._done = True
            self.deployment.settle(ok, self.started, self.admission, ttft)


@dataclass(slots=True)
class Route:
    config: ModelConfig
    entry: ModelEntry
    deployments: list[DeploymentState]


class Router:
    def __init__(
        self,
        catalog: Catalog,
        rng: random.Random | None = None,
        local_rate: PriceConfig | None = None,
        cached_discount: float = 0.5,
    ) -> None:
        self.catalog = catalog
        self.rng = rng or random.Random()
        self.deadlines = Deadlines()
        self.local_rate = local_rate
        self.cached_discount = cached_discount
        self.routes: dict[str, Route] = {}
        for entry in catalog.entries():
            self.add(entry)

    def add(self, entry: ModelEntry) -> None:
        """Route requests to `entry` (a model added to the catalog while serving)."""
        if entry.name in self.routes:
            return
        b = entry.config.routing.breaker
        policy = BreakerPolicy(b.consecutive_failures, b.error_rate, b.window, b.cooldown_s)
        states = [
            DeploymentState(
                p,
                p.label,
                CircuitBreaker(policy),
                price_of(p.deployment, self.local_rate, self.cached_discount),
            )
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
        attempt: Attempt[T],
        prompt_tokens: int = 0,
        allowed: Callable[[str], bool] | None = None,
    ) -> Lease[T]:
        """Call `attempt(model_name, provider)` until one succeeds; see the module docstring.

        Fallbacks for which `allowed(name)` is false (the caller may not use them) are skipped.
        The caller must `finish()` the returned lease when the response is complete.
        A raised `CumuloError` carries the number of attempts made in `attempts`.
        """
        first = self.route(model, kind)
        fallbacks = first.config.fallbacks
        if allowed is not None:
            fallbacks = [f for f in fallbacks if allowed(f)]
        chain = [first] + [self.routes[f] for f in fallbacks]
        deadline = time.monotonic() + first.config.routing.timeout_s
        attempts = 0
        last: CumuloError | None = None
        for route in chain:
            if time.monotonic() >= deadline:
                break
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
                attempts, last = ex.attempts, ex.error
                if not (retryable(last) or last.code == CONTEXT_LENGTH_EXCEEDED):
                    break
        if last is None:
            last = UpstreamTimeout(f"The deadline for '{model}' passed (routing.timeout_s).")
        last.attempts = attempts
        raise last

    async def _run_model(
        self, route: Route, attempt: Attempt[T], deadline: float, attempts: int
    ) -> Lease[T]:
        policy = route.config.routing
        strategy = STRATEGIES[policy.strategy]
        name = route.config.name
        # Deployments tried for this request → the earliest time to try again (Retry-After).
        tried: dict[int, float] = {}
        last: CumuloError | None = None
        used = rounds = 0
        while used <= policy.retries:
            ready = [d for d in route.deployments if d.ready]
            order = [d for d in strategy(ready, self.rng) if d.breaker.available()]
            if not order:
                last = last or _unavailable(route, ready)
                break
            fresh = [d for d in order if id(d) not in tried] if tried else order
            if fresh:
                state, delay = fresh[0], 0.0
            else:  # all tried: back off, then retry the one free soonest, in strategy order
                state = min(order, key=lambda d: tried[id(d)])
                rounds += 1
                delay = min(policy.backoff_max_s, policy.backoff_s * 2 ** (rounds - 1))
                delay *= 0.5 + self.rng.random() / 2
                delay = max(delay, tried[id(state)] - time.monotonic())
            now = time.monotonic()
            if now + delay >= deadline:
                break
            if delay > 0:
                await asyncio.sleep(delay)
                now = time.monotonic()
            admission = state.breaker.allow()
            if admission is None:
                continue  # another request took the half-open probe while this one slept
            used += 1
            attempts += 1
            state.in_flight += 1
            state.requests += 1
            # One deadline per attempt: the deployment's own `timeout_s`, within the route's.
            timeout_s = state.provider.deployment.timeout_s
            until = min(deadline, now + timeout_s)
            started = time.perf_counter()
            try:
                try:
                    with self.deadlines.at(until):
                        value = await attempt(name, state.provider)
                except DeadlinePassed as exc:
                    raise UpstreamTimeout(
                        f"No answer from '{name}' before the request's deadline "
                        "(routing.timeout_s)."
                        if until == deadline
                        else f"No answer from '{state.label}' of '{name}' within its "
                        f"timeout_s ({timeout_s:g} s)."
                    ) from exc
            except CumuloError as exc:
                if not retryable(exc):
                    state.settle(True, started, admission)  # it answered; the caller erred
                    raise _Exhausted(exc, attempts) from exc
                if isinstance(exc, RateLimited):
                    state.failures += 1  # busy, not broken: no verdict for its breaker
                    state.settle(None, started, admission)
                else:
                    state.settle(False, started, admission)
                last = exc
                tried[id(state)] = time.monotonic() + (exc.retry_after or 0.0)
                continue
            except BaseException:
                state.settle(None, started, admission)  # cancelled (client gone) or a bug
                raise
            return Lease(value, state, name, attempts, started, admission)
        error = last or UpstreamTimeout(f"The deadline for '{name}' passed (routing.timeout_s).")
        raise _Exhausted(error, attempts)


class _Exhausted(Exception):
    def __init__(self, error: CumuloError, attempts: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts


def _unavailable(route: Route, ready: list[DeploymentState]) -> Unavailable:
    """Why no deployment of `route` can take a request now."""
    name = route.config.name
    if ready:
        return Unavailable(
            f"Every deployment of '{name}' is unavailable (circuit open).", code="circuit_open"
        )
    errors = [d.provider.load_error for d in route.deployments]
    if all(errors):
        reasons = "; ".join(dict.fromkeys(e for e in errors if e))
        return Unavailable(
            f"The model '{name}' failed to load: {reasons}", code="model_load_failed"
        )
    return Unavailable(f"The model '{name}' is still loading.", code="model_loading")
