"""Routing strategies: the order in which a model's deployments are tried."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from cumulo.config import DeploymentConfig
from cumulo.governance.quotas.pricing import price_of
from cumulo.providers.base import ProviderContext
from cumulo.providers.openai import OpenAIProvider
from cumulo.routing.breaker import BreakerPolicy, CircuitBreaker
from cumulo.routing.deployment import DeploymentState
from cumulo.routing.strategies import STRATEGIES

URL = "https://api.openai.com/v1"  # never called: only prices and orders are computed here
SELF_HOSTED = "http://127.0.0.1:8000/v1"


def state(label: str, model: str = "echo", **fields: Any) -> DeploymentState:
    """A deployment's routing state; `fields` are DeploymentConfig or DeploymentState fields."""
    dep_fields = {k: fields.pop(k) for k in ("weight", "price") if k in fields}
    dep = DeploymentConfig(provider="openai", model=model, base_url=URL, name=label, **dep_fields)
    provider = OpenAIProvider(dep, "chat", ProviderContext(None, Path(".")))  # type: ignore[arg-type]
    s = DeploymentState(provider, label, CircuitBreaker(BreakerPolicy()), price_of(dep))
    for k, v in fields.items():
        setattr(s, k, v)
    return s


def labels(ds: list[DeploymentState]) -> list[str]:
    return [d.label for d in ds]


def test_priority_keeps_config_order() -> None:
    ds = [state("a"), state("b"), state("c")]
    assert labels(STRATEGIES["priority"](ds, random.Random(1))) == ["a", "b", "c"]


def test_weighted_first_choice_is_proportional_to_weight() -> None:
    ds = [state("a", weight=1), state("b", weight=3), state("c", weight=6)]
    rng = random.Random(42)
    draws = 20_000
    firsts: Counter[str] = Counter()
    for _ in range(draws):
        order = STRATEGIES["weighted"](ds, rng)
        assert sorted(labels(order)) == ["a", "b", "c"]  # the rest is the failover order
        firsts[order[0].label] += 1
    for label, share in (("a", 0.1), ("b", 0.3), ("c", 0.6)):
        assert firsts[label] / draws == pytest.approx(share, abs=0.02)


def test_least_busy_prefers_fewest_in_flight_and_breaks_ties_at_random() -> None:
    ds = [
        state("a", in_flight=3),
        state("b", in_flight=0),
        state("c", in_flight=1),
        state("d", in_flight=0),
    ]
    rng = random.Random(3)
    firsts = Counter(STRATEGIES["least-busy"](ds, rng)[0].label for _ in range(400))
    assert set(firsts) == {"b", "d"} and min(firsts.values()) > 100
    assert labels(STRATEGIES["least-busy"](ds, rng))[2:] == ["c", "a"]


def test_least_latency_tries_untried_first_then_lowest_moving_average() -> None:
    ds = [
        state("slow", latency_ewma=0.9),
        state("fast", latency_ewma=0.1),
        state("streams", latency_ewma=2.0, ttft_ewma=0.05),
        state("new"),
    ]
    assert labels(STRATEGIES["least-latency"](ds, random.Random(1))) == [
        "new",
        "streams",
        "fast",
        "slow",
    ]


def test_prices_come_from_genai_prices_or_the_config() -> None:
    mini = price_of(DeploymentConfig(provider="openai", model="gpt-4o-mini", base_url=URL))
    big = price_of(DeploymentConfig(provider="openai", model="gpt-4o", base_url=URL))
    assert mini is not None and big is not None
    assert (mini.source, big.source) == ("genai-prices", "genai-prices")
    assert 0 < mini.input_per_mtok < big.input_per_mtok
    assert 0 < mini.output_per_mtok < big.output_per_mtok
    override = price_of(
        DeploymentConfig(
            provider="openai",
            model="gpt-4o",
            base_url=URL,
            price={"input_per_mtok": 0.01, "output_per_mtok": 0.02},
        )
    )
    assert override is not None and override.source == "config"
    assert (override.input_per_mtok, override.output_per_mtok) == (0.01, 0.02)
    assert price_of(DeploymentConfig(provider="openai", model="echo", base_url=URL)) is None
    # A self-hosted OpenAI-compatible server is not priced by the table, whatever its model id.
    assert (
        price_of(DeploymentConfig(provider="openai", model="gpt-4o", base_url=SELF_HOSTED)) is None
    )
    azure = price_of(
        DeploymentConfig(
            provider="openai",
            model="gpt-4o",
            auth_header="api-key",
            base_url="https://example.openai.azure.com/openai/deployments/gpt-4o",
        )
    )
    assert azure is not None and azure.input_per_mtok == big.input_per_mtok


def test_lowest_cost_orders_by_price_with_unpriced_last() -> None:
    ds = [
        state("unpriced", model="echo"),
        state("gpt-4o", model="gpt-4o"),
        state("gpt-4o-mini", model="gpt-4o-mini"),
        state(
            "self-hosted", model="gpt-4o", price={"input_per_mtok": 0.01, "output_per_mtok": 0.01}
        ),
    ]
    assert labels(STRATEGIES["lowest-cost"](ds, random.Random(1))) == [
        "self-hosted",
        "gpt-4o-mini",
        "gpt-4o",
        "unpriced",
    ]
