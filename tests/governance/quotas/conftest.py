"""The Redis key prefix of each quota test (`support.redis`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.redis import redis_prefix


@pytest.fixture
def prefix() -> Iterator[str]:
    """A unique Redis key prefix; every key under it is deleted afterwards."""
    with redis_prefix() as name:
        yield name
