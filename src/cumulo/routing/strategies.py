"""Routing strategies: the order in which a model's deployments are tried.

Each strategy returns every deployment, best first; the router walks that
order, skipping deployments whose circuit is open, so every strategy also
fails over.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeAlias

from cumulo.routing.deployment import DeploymentState

Strategy: TypeAlias = Callable[[Sequence[DeploymentState], random.Random], list[DeploymentState]]


def priority(ds: Sequence[DeploymentState], rng: random.Random) -> list[DeploymentState]:
    """As listed in the config: ordered failover."""
    return list(ds)


def weighted(ds: Sequence[DeploymentState], rng: random.Random) -> list[DeploymentState]:
    """Random by weight (without replacement, so the rest are the failover order)."""
    pool = list(ds)
    out: list[DeploymentState] = []
    while pool:
        pick = rng.choices(range(len(pool)), weights=[d.weight for d in pool])[0]
        out.append(pool.pop(pick))
    return out


def least_latency(ds: Sequence[DeploymentState], rng: random.Random) -> list[DeploymentState]:
    """Lowest moving average of time to first token (streams) or latency; untried first."""
    return sorted(ds, key=lambda d: (d.latency_score(), rng.random()))


def least_busy(ds: Sequence[DeploymentState], rng: random.Random) -> list[DeploymentState]:
    """Fewest requests in flight, ties broken at random."""
    return sorted(ds, key=lambda d: (d.in_flight, rng.random()))


def lowest_cost(ds: Sequence[DeploymentState], rng: random.Random) -> list[DeploymentState]:
    """Cheapest known price first; deployments without a price last, in config order."""
    return sorted(ds, key=lambda d: d.price.blended if d.price else float("inf"))


STRATEGIES: dict[str, Strategy] = {
    "priority": priority,
    "weighted": weighted,
    "least-latency": least_latency,
    "least-busy": least_busy,
    "lowest-cost": lowest_cost,
}
