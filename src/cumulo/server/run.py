"""How `cumulo serve` runs uvicorn: the protected protocol and the limits it needs."""

from __future__ import annotations

import logging
import math
import resource
from typing import Any

from cumulo.config import ServerConfig

log = logging.getLogger(__name__)

# After `shutdown_timeout_s`, the requests still in flight are ended in their wire format
# (`cumulo.inflight`); uvicorn's own graceful timeout, which cancels whatever is left with
# a bare 500, comes this much later, as the last resort.
END_MARGIN_S = 5.0
# File descriptors a process needs besides client connections: upstream pools, the
# database, the usage journal, model files, logs.
OTHER_FILES = 256


def uvicorn_options(server: ServerConfig) -> dict[str, Any]:
    """The `uvicorn.run` arguments that protect the server (`cumulo.server.protocol`)."""
    from cumulo.server.protocol import ProtectedHttpToolsProtocol

    return {
        "http": ProtectedHttpToolsProtocol,
        "ws": "none",  # no WebSockets: an upgrade request is an ordinary request
        "timeout_keep_alive": max(1, math.ceil(server.keep_alive_timeout_s)),
        "timeout_graceful_shutdown": math.ceil(server.shutdown_timeout_s + END_MARGIN_S),
    }


def raise_open_files_limit(server: ServerConfig) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE toward its hard limit, so that
    `max_connections` can be reached (workers inherit it); (soft, needed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = server.max_connections + server.health_connections + OTHER_FILES
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit to %d: %s", target, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open-files limit (%d) is below what server.max_connections needs (%d): "
            "raise the hard limit (ulimit -Hn) or lower max_connections",
            soft,
            needed,
        )
    return soft, needed
