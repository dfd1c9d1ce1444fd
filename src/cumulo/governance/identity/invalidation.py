"""Cache invalidation across replicas, over Redis pub/sub.

Every process keeps keys and tenants in memory (`governance.identity.auth`) and polls the
store for changes once a second. With `redis_url` set, a change made through
one process is also published on a channel that every process listens to, so
that a key revoked on replica A is refused on replica B as soon as B has
reloaded its cache (milliseconds), not at its next poll.

A lost message (Redis restarting) costs nothing but latency: the poll still
catches the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

RECONNECT_S = 1.0
CLOSE_WAIT_S = 2.0


class Invalidator:
    """Publishes "something changed" and calls `on_change` when any process publishes it."""

    def __init__(
        self, redis: aioredis.Redis, channel: str, on_change: Callable[[], Awaitable[None]]
    ) -> None:
        self.redis = redis
        self.channel = channel
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="cumulo-invalidation")
        with contextlib.suppress(TimeoutError):  # Redis down: the store poll still works
            await asyncio.wait_for(self._subscribed.wait(), 5.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # redis-py may swallow a cancellation that lands inside a command: do not wait
            # on the listener forever.
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), CLOSE_WAIT_S)
            self._task = None

    async def publish(self, what: str) -> None:
        try:
            await self.redis.publish(self.channel, what)
        except RedisError as exc:
            log.warning(
                "could not publish a cache invalidation (%s); replicas catch up at their next poll",
                type(exc).__name__,
            )

    async def _listen(self) -> None:
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            await self._changed()
            except RedisError as exc:
                log.warning("cache invalidation channel lost (%s); retrying", type(exc).__name__)
                await asyncio.sleep(RECONNECT_S)

    async def _changed(self) -> None:
        try:
            await self.on_change()
        except Exception:  # keep listening; the poll catches up
            log.exception("reloading after an invalidation failed")
