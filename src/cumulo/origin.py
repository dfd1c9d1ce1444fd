"""What started the request being served: a client (the default) or a job.

The job runner runs each unit of work (a batch line) in its own task with `running_as`;
everything that task awaits sees the same `Origin` (`contextvars`, copied into tasks it
creates). Two layers read it, and nothing else:

- the usage recorder (`governance.usage`) marks the usage record with the origin and the
  job id, and applies the job's price multiplier to its cost (batch pricing);
- the local engine (`engine.generate`) gives the request its scheduling priority, so
  interactive requests are admitted ahead of batch lines.

A request without an origin is interactive: priority `INTERACTIVE`, no multiplier.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

INTERACTIVE = 0  # engine priority of a client's request: admitted first
BACKGROUND = 1  # engine priority of a job's work: admitted when no interactive one waits


@dataclass(frozen=True, slots=True)
class Origin:
    kind: str  # the job kind, e.g. "batch"; stored in the usage record's `origin`
    job_id: str
    cost_multiplier: float | None = None  # applied to the usage cost (None: list price)
    priority: int = BACKGROUND


_current: ContextVar[Origin | None] = ContextVar("cumulo_origin", default=None)


def current() -> Origin | None:
    """The origin of the request this task serves (None: a client's)."""
    return _current.get()


def priority() -> int:
    """The engine priority of the request this task serves."""
    origin = _current.get()
    return INTERACTIVE if origin is None else origin.priority


@contextlib.contextmanager
def running_as(origin: Origin) -> Iterator[None]:
    """Serve what runs inside as work of `origin`."""
    token = _current.set(origin)
    try:
        yield
    finally:
        _current.reset(token)
