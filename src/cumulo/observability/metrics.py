"""Prometheus metrics of one process, served at `GET /metrics`.

    cumulo_requests_total{model,deployment,status}           requests, by final status
    cumulo_request_errors_total{model,deployment,status}     the same, status >= 400 only
    cumulo_tokens_total{model,deployment,type}               type: prompt | completion
    cumulo_request_duration_seconds{model,deployment}        histogram, whole request
    cumulo_time_to_first_token_seconds{model,deployment}     histogram, streams only
    cumulo_deployment_in_flight{model,deployment}            upstream calls in flight now
    cumulo_deployment_attempts_total{model,deployment}       upstream attempts, retries included
    cumulo_deployment_failures_total{model,deployment}       attempts that failed (retryable)
    cumulo_circuit_state{model,deployment}                   0 closed, 1 half-open, 2 open
    cumulo_circuit_opened_total{model,deployment}            times the circuit opened
    cumulo_alerts_total{kind}                                anomaly and budget alerts raised
    cumulo_guardrail_interventions_total{guardrail,source,action}  source: input | output
    cumulo_cost_usd_total{model}                             priced spend, by requested model

In the request metrics `model` is the model the client asked for (an
unconfigured name counts as `_unknown`, so callers cannot grow the label set)
and `deployment` the one that served it (empty when none did). In the
deployment metrics `model` is the model the deployment belongs to.

The gateway updates the request metrics where it queues the usage record: in
memory, no I/O. The deployment metrics are read from the router's state when
scraped. Each `Platform` owns one `Metrics` and its registry; nothing is
registered in prometheus_client's global registry.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from cumulo.routing.breaker import STATE_VALUES

if TYPE_CHECKING:
    from cumulo.routing.router import Router

UNKNOWN_MODEL = "_unknown"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Histogram:
    """Observations per bucket (not cumulative; the last is +Inf) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # `le` bounds are inclusive
        self.sum += value

    def buckets(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            out.append((floatToGoString(bound), total))  # type: ignore[no-untyped-call]
        return out


@dataclass(frozen=True, slots=True)
class RequestTotals:
    """Requests counted by final status, and how many took up to each latency bound
    (`latency_counts[i]` for `bounds[i]`, not cumulative; the last count is beyond every
    bound)."""

    by_status: dict[int, int]
    bounds: tuple[float, ...]
    latency_counts: list[int]


class _Series:
    """What one (model, deployment, status) has counted: plain numbers on the request
    path, turned into Prometheus samples when scraped."""

    __slots__ = ("completion", "duration", "prompt", "requests", "ttft")

    def __init__(self) -> None:
        self.requests = 0
        self.prompt = 0
        self.completion = 0
        self.duration = _Histogram(_LATENCY_BUCKETS)
        self.ttft = _Histogram(_TTFT_BUCKETS)


class Metrics:
    """The request metrics are plain counters updated without locks (each process serves
    requests on one event loop, which also answers scrapes); the rarer ones (alerts,
    guardrail interventions) are prometheus_client counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.alerts = Counter(
            "cumulo_alerts", "Anomaly and budget alerts raised.", ("kind",), registry=reg
        )
        self.guardrail_interventions = Counter(
            "cumulo_guardrail_interventions",
            "Guardrail interventions (blocked or anonymized).",
            ("guardrail", "source", "action"),
            registry=reg,
        )
        self._models: frozenset[str] = frozenset()
        self._series: dict[tuple[str, str, int], _Series] = {}
        self._cost: dict[str, float] = {}
        reg.register(_RequestCollector(self))

    def watch(self, router: Router) -> None:
        """Expose `router`'s deployments (circuit state, in flight) at every scrape."""
        self._models = frozenset(router.routes)
        self.registry.register(_RouterCollector(router))

    def observe(
        self,
        model: str,
        deployment: str | None,
        status: int,
        prompt_tokens: int,
        completion_tokens: int,
        latency_s: float,
        ttft_s: float | None,
    ) -> None:
        """Count one finished request (called where its usage record is queued)."""
        if model not in self._models:
            model = UNKNOWN_MODEL
        key = (model, deployment or "", status)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series()
        s.requests += 1
        s.prompt += prompt_tokens
        s.completion += completion_tokens
        s.duration.observe(latency_s)
        if ttft_s is not None:
            s.ttft.observe(ttft_s)

    def totals(self) -> RequestTotals:
        """Every request counted so far: by status, and their latencies' histogram."""
        by_status: dict[int, int] = {}
        latency = [0] * (len(_LATENCY_BUCKETS) + 1)
        for (_, _, status), s in list(self._series.items()):
            by_status[status] = by_status.get(status, 0) + s.requests
            latency = [a + b for a, b in zip(latency, s.duration.counts, strict=True)]
        return RequestTotals(by_status, _LATENCY_BUCKETS, latency)

    def cost_usd(self, model: str, usd: float) -> None:
        if model not in self._models:
            model = UNKNOWN_MODEL
        self._cost[model] = self._cost.get(model, 0.0) + usd

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type, as the `Accept` header asks."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


class _RequestCollector(Collector):
    """The request metrics, from `Metrics`' counters at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "deployment", "status"]
        requests = CounterMetricFamily(
            "cumulo_requests", "Requests, by final status.", labels=labels
        )
        errors = CounterMetricFamily(
            "cumulo_request_errors", "Requests that failed (status >= 400).", labels=labels
        )
        tokens = CounterMetricFamily(
            "cumulo_tokens", "Tokens, prompt or completion.", labels=["model", "deployment", "type"]
        )
        duration = HistogramMetricFamily(
            "cumulo_request_duration_seconds",
            "Time to serve a request.",
            labels=["model", "deployment"],
        )
        ttft = HistogramMetricFamily(
            "cumulo_time_to_first_token_seconds",
            "Time to the first streamed event.",
            labels=["model", "deployment"],
        )
        cost = CounterMetricFamily(
            "cumulo_cost_usd", "Priced spend in USD, by requested model.", labels=["model"]
        )
        # Tokens and histograms are per (model, deployment), summed over statuses.
        by_deployment: dict[tuple[str, str], list[_Series]] = {}
        for (model, deployment, status), s in list(self.metrics._series.items()):
            key = [model, deployment, str(status)]
            requests.add_metric(key, s.requests)
            if status >= 400:
                errors.add_metric(key, s.requests)
            by_deployment.setdefault((model, deployment), []).append(s)
        for (model, deployment), group in by_deployment.items():
            pair = [model, deployment]
            prompt = sum(s.prompt for s in group)
            completion = sum(s.completion for s in group)
            tokens.add_metric([*pair, "prompt"], prompt)
            tokens.add_metric([*pair, "completion"], completion)
            for family, hists in (
                (duration, [s.duration for s in group]),
                (ttft, [s.ttft for s in group]),
            ):
                merged = _merge(hists)
                family.add_metric(pair, merged.buckets(), merged.sum)
        for model, usd in list(self.metrics._cost.items()):
            cost.add_metric([model], usd)
        return [requests, errors, tokens, duration, ttft, cost]


def _merge(hists: list[_Histogram]) -> _Histogram:
    """The sum of histograms with the same buckets."""
    out = _Histogram(hists[0].bounds)
    for h in hists:
        out.counts = [a + b for a, b in zip(out.counts, h.counts, strict=True)]
        out.sum += h.sum
    return out


class _RouterCollector(Collector):
    def __init__(self, router: Router) -> None:
        self.router = router

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "deployment"]
        in_flight = GaugeMetricFamily(
            "cumulo_deployment_in_flight", "Upstream calls in flight.", labels=labels
        )
        attempts = CounterMetricFamily(
            "cumulo_deployment_attempts", "Upstream attempts, retries included.", labels=labels
        )
        failures = CounterMetricFamily(
            "cumulo_deployment_failures", "Upstream attempts that failed.", labels=labels
        )
        state = GaugeMetricFamily(
            "cumulo_circuit_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.", labels=labels
        )
        opened = CounterMetricFamily(
            "cumulo_circuit_opened", "Times the circuit opened.", labels=labels
        )
        for name, route in self.router.routes.items():
            for d in route.deployments:
                key = [name, d.label]
                in_flight.add_metric(key, d.in_flight)
                attempts.add_metric(key, d.requests)
                failures.add_metric(key, d.failures)
                state.add_metric(key, STATE_VALUES[d.breaker.state])
                opened.add_metric(key, d.breaker.opened_count)
        return [in_flight, attempts, failures, state, opened]
