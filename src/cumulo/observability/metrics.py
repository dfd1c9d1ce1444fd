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

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from cumulo.routing.breaker import STATE_VALUES

if TYPE_CHECKING:
    from prometheus_client.metrics import Counter as _Counter
    from prometheus_client.metrics import Histogram as _Histogram

    from cumulo.routing.router import Router

UNKNOWN_MODEL = "_unknown"
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Children:
    """The labelled series one (model, deployment, status) updates, looked up once."""

    __slots__ = ("completion", "duration", "errors", "prompt", "requests", "ttft")

    def __init__(self, m: Metrics, model: str, deployment: str, status: int) -> None:
        code = str(status)
        self.requests: _Counter = m.requests.labels(model, deployment, code)
        self.errors: _Counter | None = (
            m.errors.labels(model, deployment, code) if status >= 400 else None
        )
        self.prompt: _Counter = m.tokens.labels(model, deployment, "prompt")
        self.completion: _Counter = m.tokens.labels(model, deployment, "completion")
        self.duration: _Histogram = m.duration.labels(model, deployment)
        self.ttft: _Histogram = m.ttft.labels(model, deployment)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        labels = ("model", "deployment", "status")
        self.requests = Counter(
            "cumulo_requests", "Requests, by final status.", labels, registry=reg
        )
        self.errors = Counter(
            "cumulo_request_errors", "Requests that failed (status >= 400).", labels, registry=reg
        )
        self.tokens = Counter(
            "cumulo_tokens",
            "Tokens, prompt or completion.",
            ("model", "deployment", "type"),
            registry=reg,
        )
        self.duration = Histogram(
            "cumulo_request_duration_seconds",
            "Time to serve a request.",
            ("model", "deployment"),
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "cumulo_time_to_first_token_seconds",
            "Time to the first streamed event.",
            ("model", "deployment"),
            buckets=_TTFT_BUCKETS,
            registry=reg,
        )
        self.alerts = Counter(
            "cumulo_alerts", "Anomaly and budget alerts raised.", ("kind",), registry=reg
        )
        self.guardrail_interventions = Counter(
            "cumulo_guardrail_interventions",
            "Guardrail interventions (blocked or anonymized).",
            ("guardrail", "source", "action"),
            registry=reg,
        )
        self.cost = Counter(
            "cumulo_cost_usd", "Priced spend in USD, by requested model.", ("model",), registry=reg
        )
        self._models: frozenset[str] = frozenset()
        self._children: dict[tuple[str, str, int], _Children] = {}

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
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = _Children(self, *key)
        c.requests.inc()
        if c.errors is not None:
            c.errors.inc()
        if prompt_tokens:
            c.prompt.inc(prompt_tokens)
        if completion_tokens:
            c.completion.inc(completion_tokens)
        c.duration.observe(latency_s)
        if ttft_s is not None:
            c.ttft.observe(ttft_s)

    def cost_usd(self, model: str, usd: float) -> None:
        if model not in self._models:
            model = UNKNOWN_MODEL
        self.cost.labels(model).inc(usd)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition body and its content type, as the `Accept` header asks."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


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
