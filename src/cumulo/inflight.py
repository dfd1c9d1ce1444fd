"""Requests in flight, so that a shutdown whose grace period ran out can end each one.

On SIGTERM the HTTP server stops accepting connections and lets the requests in
flight finish for `server.shutdown_timeout_s`. Those still running then (an upstream
that hangs, a long stream) are ended here: each task serving one is cancelled with
the `SHUTTING_DOWN` message, and the code that waits on the upstream turns that
cancellation into `ShuttingDown`, a 503 that the front door renders in its own wire
format (an error response, or an error event when the stream has started) and that
usage records as 503, not as a client that went away (499).

A request registers the task that waits for its upstream: the handler's task until the
response is ready (`api.http.DisconnectWatch`), the task iterating a stream while it
streams (`metering.MeteredStream`). Registering is a set insertion; nothing runs
unless a shutdown runs out of time.
"""

from __future__ import annotations

import asyncio

from cumulo.errors import ShuttingDown

SHUTTING_DOWN = "cumulo: the server is shutting down"


def by_shutdown(exc: BaseException) -> bool:
    """Whether `exc` is the cancellation `InFlight.end_all` sent."""
    return isinstance(exc, asyncio.CancelledError) and exc.args[:1] == (SHUTTING_DOWN,)


def shutdown_error(exc: BaseException) -> ShuttingDown | None:
    """`ShuttingDown` to raise instead of `exc`, if `exc` is the shutdown's cancellation
    of the current task and no other cancellation is pending (it is then withdrawn)."""
    if not by_shutdown(exc):
        return None
    task = asyncio.current_task()
    if task is None or task.uncancel() != 0:
        return None
    return ShuttingDown()


class InFlight:
    """The tasks waiting on an upstream for a request, in this process."""

    __slots__ = ("_tasks",)

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()

    def add(self, task: asyncio.Task[object]) -> None:
        self._tasks.add(task)

    def discard(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)

    def __len__(self) -> int:
        return len(self._tasks)

    def end_all(self) -> int:
        """Cancel every registered task with `SHUTTING_DOWN`; how many there were."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel(SHUTTING_DOWN)
        return len(tasks)
