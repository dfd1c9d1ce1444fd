"""uvicorn's httptools protocol, protecting the server from callers without a key.

uvicorn's `HttpToolsProtocol` buffers a request's header block without a limit or a
deadline, and accepts every connection. `ProtectedHttpToolsProtocol` adds what a
reverse proxy in front would do, with the `server:` settings (`ServerConfig`):

- a header block larger than `max_header_bytes`: 431, and the connection closed;
- a header block not received within `header_timeout_s` (from the connection's start,
  or from a kept-alive request's first byte), or a body not within `body_timeout_s` of
  its headers: 408 and closed (silently, for a connection that sent nothing);
- a kept-alive connection idle for `keep_alive_timeout_s`: closed;
- at `max_connections` open connections, a new one takes the place of the connection
  that has waited longest for its request to arrive (idle, slow header or slow body);
  when every connection is busy with a request, the new one may only ask for the health
  endpoints (`health_connections` of them), and past those gets 503 at once.

Deadlines are kept by one sweeper per process (`ConnectionGuard`) that wakes a few
times a second, not by a timer per request: a request costs a few attribute writes and
a dict insertion. The guard is kept in the ASGI lifespan state, where the app also
puts its `server:` settings and the requests in flight (`cumulo.app`); on shutdown, the
guard ends those still running after `shutdown_timeout_s` (`cumulo.inflight`).

This relies on uvicorn's protocol internals (its parser callbacks, `cycle`,
`pipeline`, `flow`); pyproject pins uvicorn to the versions it was checked against.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from cumulo.app import IN_FLIGHT, SERVER_CONFIG
from cumulo.config import ServerConfig
from cumulo.inflight import InFlight

log = logging.getLogger(__name__)

GUARD = "cumulo.connection_guard"  # the process's ConnectionGuard, in the lifespan state
HEALTH_PATHS = frozenset({"/health/live", "/health/ready"})

# A connection's phase, for its deadline.
IDLE = 0  # kept alive between requests: `keep_alive_timeout_s`
HEAD = 1  # receiving a header block: `header_timeout_s`
BODY = 2  # receiving a body: `body_timeout_s`
BUSY = 3  # the request is in; the app has it (no deadline here)
LINGER = 4  # refused (431, 408, 503 written, then FIN): what still arrives is discarded
LINGER_S = 2.0  # then closed. Closing at once would reset the connection while the client
# still sends, and a reset can destroy the refusal before the client reads it.


def _response(status: int, reason: str, message: str, extra: bytes = b"") -> bytes:
    body = b'{"error":{"message":"%s","type":"%s"}}' % (
        message.encode(),
        b"invalid_request_error" if status < 500 else b"service_unavailable",
    )
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"connection: close\r\n%s\r\n%s" % (status, reason.encode(), len(body), extra, body)
    )


TOO_LARGE = _response(
    431, "Request Header Fields Too Large", "The request's header block is too large."
)
TOO_SLOW = _response(408, "Request Timeout", "The request was not received in time.")
BUSY_503 = _response(
    503,
    "Service Unavailable",
    "The server has too many open connections; retry shortly.",
    b"retry-after: 1\r\n",
)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that was answered."""


class ConnectionGuard:
    """One per worker process: its open connections, their deadlines and the cap."""

    def __init__(self, settings: ServerConfig, in_flight: InFlight | None) -> None:
        self.settings = settings
        self.in_flight = in_flight
        self.open = 0
        # Connections waiting for, or receiving, a request: oldest first.
        self.waiting: dict[ProtectedHttpToolsProtocol, None] = {}
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()  # updated by the sweeper: deadlines are that coarse
        # Deadlines are kept to within a tick: a quarter of the shortest, at most 1 s.
        shortest = min(
            settings.header_timeout_s, settings.body_timeout_s, settings.keep_alive_timeout_s
        )
        self.tick_s = min(1.0, max(0.05, shortest / 4))
        self._sweeper: asyncio.TimerHandle | None = None
        self._ending: asyncio.TimerHandle | None = None

    def opened(self, conn: ProtectedHttpToolsProtocol) -> bool:
        """Count a new connection; False if it must be refused (503 at once)."""
        if self._sweeper is None:
            self.now = self.loop.time()
            self._sweeper = self.loop.call_later(self.tick_s, self._sweep)
        self.open += 1
        if self.open <= self.settings.max_connections:
            return True
        if self.waiting:  # make room: the connection that has waited longest goes
            oldest = next(iter(self.waiting))
            oldest.expire()
            return True
        if self.open <= self.settings.max_connections + self.settings.health_connections:
            conn.health_only = True
            return True
        return False

    def closed(self) -> None:
        self.open -= 1

    def _sweep(self) -> None:
        self.now = now = self.loop.time()
        expired = [c for c in self.waiting if c.deadline <= now]
        for conn in expired:
            conn.expire()
        self._sweeper = self.loop.call_later(self.tick_s, self._sweep) if self.open else None

    def shutting_down(self) -> None:
        """The server began a graceful shutdown: end the requests still in flight after
        `shutdown_timeout_s`."""
        if self._ending is None and self.in_flight is not None:
            self._ending = self.loop.call_later(self.settings.shutdown_timeout_s, self._end)

    def _end(self) -> None:
        assert self.in_flight is not None
        if count := self.in_flight.end_all():
            log.warning(
                "shutdown: ending %d request(s) still in flight after %g s (server.shutdown_timeout_s)",
                count,
                self.settings.shutdown_timeout_s,
            )


class ProtectedHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with header and body limits, deadlines and a connection cap."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        guard = app_state.get(GUARD)
        if guard is None:
            settings = app_state.get(SERVER_CONFIG) or ServerConfig()
            guard = app_state[GUARD] = ConnectionGuard(settings, app_state.get(IN_FLIGHT))
        self.guard: ConnectionGuard = guard
        self.limits = guard.settings
        self.phase = HEAD
        self.deadline = 0.0
        self.in_head = True  # the parser is inside a header block (or before one)
        self.head_bytes = 0  # bytes received since that block began
        self.health_only = False
        self.counted = False
        self.lingering = False

    # -- connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.counted = True
        if not self.guard.opened(self):
            self._close(BUSY_503)
            return
        self.deadline = self.guard.now + self.limits.header_timeout_s
        self.guard.waiting[self] = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.waiting.pop(self, None)
        if self.counted:
            self.counted = False
            self.guard.closed()
        super().connection_lost(exc)

    def expire(self) -> None:
        """The deadline passed, or the connection makes room for a new one: close it,
        with a 408 if a request had begun to arrive."""
        if self.transport.is_closing() or self.lingering:
            self._close(b"")
            return
        partial = self.phase == BODY or (self.phase == HEAD and self.head_bytes > 0)
        cycle = self.cycle
        if self.phase == BODY and cycle is not None:
            if cycle.response_started:
                partial = False
            cycle.disconnected = True  # the app sees the client gone; its reply is dropped
            cycle.message_event.set()
        if partial:
            self._refuse(TOO_SLOW)
        else:
            self._close(b"")

    def shutdown(self) -> None:
        self.guard.shutting_down()
        super().shutdown()

    # -- data -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            return
        if self.phase == IDLE:  # a kept-alive connection's next request begins
            self.phase = HEAD
            self.deadline = self.guard.now + self.limits.header_timeout_s
        if self.in_head:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # no WebSockets here
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                return  # answered already
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        if self.in_head and self.head_bytes > self.limits.max_header_bytes:
            self._refuse(TOO_LARGE)  # an unfinished header block past the limit

    def _refuse(self, response: bytes) -> None:
        """Answer `response`, send FIN, and discard what still arrives for `LINGER_S`."""
        if self.transport.is_closing() or self.lingering:
            return
        if not self.transport.can_write_eof():
            self._close(response)
            return
        self.transport.write(response)
        self.transport.write_eof()
        self.lingering = True
        self.phase = LINGER
        self.deadline = self.guard.now + LINGER_S
        self.guard.waiting.setdefault(self, None)  # swept, and may make room

    def _close(self, response: bytes) -> None:
        """Answer `response` (if any) and close; the connection stops counting at once,
        so that a burst of connections making room for each other is not refused."""
        self.guard.waiting.pop(self, None)
        if self.counted:
            self.counted = False
            self.guard.closed()
        if not self.transport.is_closing():
            if response:
                self.transport.write(response)
            self.transport.close()

    # -- parser callbacks -------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self.in_head = False
        if self.head_bytes > self.limits.max_header_bytes and self._head_size() > (
            self.limits.max_header_bytes
        ):  # the whole block arrived in one read; it counts, not what came after it
            self._refuse(TOO_LARGE)
            raise _Refused
        if self.health_only:
            path = self.url.split(b"?", 1)[0]
            if path.decode("latin-1") not in HEALTH_PATHS:
                self._refuse(BUSY_503)
                raise _Refused
        self.phase = BODY
        self.deadline = self.guard.now + self.limits.body_timeout_s
        self.guard.waiting[self] = None
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + 16 + sum(len(n) + len(v) + 4 for n, v in self.headers)

    def on_message_complete(self) -> None:
        self.in_head = True  # what follows is the next request's header block
        self.head_bytes = 0
        self.guard.waiting.pop(self, None)
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline:
            # Answered before its body was in (a 401, a 413): idle from now on.
            self.phase = IDLE
            self.deadline = self.guard.now + self.limits.keep_alive_timeout_s
            self.guard.waiting[self] = None
        else:
            self.phase = BUSY
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive deadline kept by the sweeper instead of a timer.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.phase == BUSY:
            self.phase = IDLE
            self.deadline = self.guard.now + self.limits.keep_alive_timeout_s
            self.guard.waiting[self] = None
