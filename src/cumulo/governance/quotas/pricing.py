"""Prices per million tokens, from the config or the `genai-prices` package.

`genai-prices` is a maintained price table covering the major providers; it
works offline from the snapshot it ships. A deployment's `price` in the config
overrides it. Local models are priced at the configured compute rate
(`pricing.local`), unless their deployment names its own price; self-hosted
OpenAI-compatible servers have no price unless the config gives one.

Prompt tokens read from a prompt cache (`Usage.cached_tokens`) cost
`cached_input_per_mtok`: the price's own when the config gives one, else the input
price less `pricing.cached_discount` (half by default).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Literal

from cumulo.config import DeploymentConfig, PriceConfig

log = logging.getLogger(__name__)

_MILLION = 1_000_000
# cumulo provider kind → genai-prices provider id (`openai`: found from the base URL).
_PROVIDER_IDS: dict[str, str | None] = {"openai": None, "anthropic": "anthropic", "bedrock": "aws"}


@dataclass(frozen=True, slots=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float
    source: Literal["config", "genai-prices", "compute-rate"]
    cached_input_per_mtok: float | None = None  # None: the input price

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float:
        """USD for one request; `cached_tokens` of the `prompt_tokens` at the cached price."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_rate = self.input_per_mtok
        if self.cached_input_per_mtok is not None:
            cached_rate = self.cached_input_per_mtok
        return (
            (prompt_tokens - cached) * self.input_per_mtok
            + cached * cached_rate
            + completion_tokens * self.output_per_mtok
        ) / _MILLION

    @property
    def blended(self) -> float:
        """One number to rank deployments by: a 3:1 input:output token mix."""
        return (3 * self.input_per_mtok + self.output_per_mtok) / 4


def price_of(
    deployment: DeploymentConfig,
    local_rate: PriceConfig | None = None,
    cached_discount: float = 0.5,
) -> Price | None:
    """The deployment's price: its config override, else the table's, else None (unknown);
    cached prompt tokens at the price's own cached rate, else `cached_discount` off input.
    """
    price = _base_price(deployment, local_rate)
    if price is None:
        return None
    cached = price.cached_input_per_mtok
    if cached is None:
        cached = price.input_per_mtok * (1.0 - cached_discount)
    return dataclasses.replace(price, cached_input_per_mtok=cached)


def _base_price(deployment: DeploymentConfig, local_rate: PriceConfig | None) -> Price | None:
    """The price before the cached rate is settled (see `price_of`).

    An `openai` deployment is priced by its `base_url` (OpenAI, Azure OpenAI, and the
    other OpenAI-compatible APIs the table knows); a self-hosted server is not in the
    table, so it has no price unless the config gives one.
    """
    own = deployment.price
    if own is not None:
        return Price(own.input_per_mtok, own.output_per_mtok, "config", own.cached_input_per_mtok)
    if deployment.provider == "local":
        if local_rate is None:
            return None
        return Price(
            local_rate.input_per_mtok,
            local_rate.output_per_mtok,
            "compute-rate",
            local_rate.cached_input_per_mtok,
        )
    if deployment.provider not in _PROVIDER_IDS or not deployment.model:
        return None
    if deployment.provider == "openai":
        return _table_price(deployment.model, None, deployment.base_url)
    return _table_price(deployment.model, _PROVIDER_IDS[deployment.provider], None)


@lru_cache(maxsize=1024)
def _table_price(model: str, provider_id: str | None, api_url: str | None) -> Price | None:
    from genai_prices import Usage, calc_price

    usage = Usage(input_tokens=_MILLION, output_tokens=_MILLION)
    try:
        if api_url is not None:
            calc = calc_price(usage, model, provider_api_url=api_url)
        else:
            calc = calc_price(usage, model, provider_id=provider_id)
    except LookupError:
        return None
    return Price(
        float(Decimal(calc.input_price)), float(Decimal(calc.output_price)), "genai-prices"
    )
