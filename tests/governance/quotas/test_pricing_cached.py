"""Prompt tokens read from a prompt cache are priced at the cached rate."""

from __future__ import annotations

import pytest

from cumulo.config import DeploymentConfig, PriceConfig
from cumulo.governance.quotas.pricing import price_of


def test_cached_tokens_cost_the_input_price_less_the_discount() -> None:
    dep = DeploymentConfig(provider="local", path="demo-tiny")
    rate = PriceConfig(input_per_mtok=2.0, output_per_mtok=8.0)
    price = price_of(dep, rate, cached_discount=0.75)
    assert price is not None and price.cached_input_per_mtok == pytest.approx(0.5)
    # 1,000 prompt tokens of which 600 cached, 100 completion tokens.
    want = (400 * 2.0 + 600 * 0.5 + 100 * 8.0) / 1e6
    assert price.cost(1000, 100, 600) == pytest.approx(want)
    assert price.cost(1000, 100) == pytest.approx((1000 * 2.0 + 100 * 8.0) / 1e6)
    assert price.cost(10, 0, 999) == pytest.approx(10 * 0.5 / 1e6)  # never more than the prompt


def test_a_price_may_name_its_own_cached_rate() -> None:
    own = PriceConfig(input_per_mtok=3.0, output_per_mtok=15.0, cached_input_per_mtok=0.3)
    dep = DeploymentConfig(provider="anthropic", model="claude-x", price=own)
    price = price_of(dep, None, cached_discount=0.5)
    assert price is not None and price.cached_input_per_mtok == pytest.approx(0.3)
    assert price.cost(100, 0, 100) == pytest.approx(100 * 0.3 / 1e6)
    default = price_of(DeploymentConfig(provider="local", path="x"), None)
    assert default is None  # no compute rate: no price at all
