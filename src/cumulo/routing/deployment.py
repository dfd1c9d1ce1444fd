"""A deployment as routing sees it: its provider, circuit breaker, price and live figures
(in flight, moving averages of latency and time to first token)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cumulo.governance.quotas.pricing import Price
from cumulo.providers.base import Provider
from cumulo.routing.breaker import BreakerPass, CircuitBreaker

_EWMA = 0.2


@dataclass(slots=True)
class DeploymentState:
    """A deployment with what routing knows about it."""

    provider: Provider
    label: str  # unique within its model
    breaker: CircuitBreaker
    price: Price | None
    in_flight: int = 0
    latency_ewma: float | None = None
    ttft_ewma: float | None = None
    requests: int = 0
    failures: int = 0
    _lines: dict[str, list[tuple[bytes, bytes]]] = field(default_factory=dict)

    def header_lines(self, model: str) -> list[tuple[bytes, bytes]]:
        """`x-cumulo-deployment` and `x-cumulo-model` (the model it served) as header lines."""
        lines = self._lines.get(model)
        if lines is None:
            lines = self._lines[model] = [
                (b"x-cumulo-deployment", self.label.encode("latin-1")),
                (b"x-cumulo-model", model.encode("latin-1")),
            ]
        return lines

    @property
    def weight(self) -> float:
        return self.provider.deployment.weight

    @property
    def ready(self) -> bool:
        return self.provider.ready and self.provider.load_error is None

    def latency_score(self) -> float:
        if self.ttft_ewma is not None:
            return self.ttft_ewma
        return self.latency_ewma if self.latency_ewma is not None else 0.0

    def settle(
        self, ok: bool | None, started: float, admission: BreakerPass, ttft: float | None = None
    ) -> None:
        """Account one finished attempt: ok, a deployment failure, or no verdict (None)."""
        self.in_flight -= 1
        if ok is None:
            self.breaker.release(admission)
            return
        self.breaker.record(ok, admission)
        if not ok:
            self.failures += 1
            return
        self.latency_ewma = _ewma(self.latency_ewma, time.perf_counter() - started)
        if ttft is not None:
            self.ttft_ewma = _ewma(self.ttft_ewma, ttft - started)


def _ewma(current: float | None, sample: float) -> float:
    return sample if current is None else current + _EWMA * (sample - current)
