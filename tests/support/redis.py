"""The Redis server the tests share, and a key prefix of their own for each test.

`REDIS_URL` is `CUMULO_TEST_REDIS` (default `redis://127.0.0.1:6379/0`), as
`support.pg` takes `CUMULO_TEST_POSTGRES`. Redis is a required service of the test suite:
a test that cannot reach it fails, saying so. `redis_prefix()` yields a unique key prefix
and deletes every key under it afterwards, so tests sharing the server never see each
other's keys.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis

REDIS_URL = os.environ.get("CUMULO_TEST_REDIS", "redis://127.0.0.1:6379/0")
REDIS_PORT = urlsplit(REDIS_URL).port or 6379


@contextmanager
def redis_prefix() -> Iterator[str]:
    """A unique Redis key prefix; every key under it is deleted afterwards."""
    name = f"cumulo-test-{secrets.token_hex(6)}"
    yield name
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)
    client.close()
