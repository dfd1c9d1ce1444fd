"""The latency floor of a Python proxy on this machine: a reference point, not a gateway.

Like bench/bare_proxy.py (raw ASGI on uvicorn with httptools and uvloop, one
worker), but its upstream client is the least a pooled HTTP/1.1 client can
do: an asyncio protocol per kept-alive connection, httptools' response parser,
one write per request. No TLS, redirects, chunked request bodies, timeouts or
error handling: it only works against bench/upstream.py. Nothing in cumulo
uses it; `bench/gateway.py --floor` measures it beside the others, to show how
much of a proxy's added latency the machine itself imposes (processes waking
on another core, the loopback hop and the server's own per-request work).
Apart from the client it does what bench/bare_proxy.py does, in the same lines
on purpose, so that the two differ in nothing else that costs time.

    python bench/floor_proxy.py --port 9003 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit

import httptools

from bare_proxy import serve  # run as `python bench/floor_proxy.py`: bench/ is on the path


class _Conn(asyncio.Protocol):
    """One kept-alive upstream connection; one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.body: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("upstream closed the connection"))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        waiter, self.waiter = self.waiter, None
        body, self.body = b"".join(self.body), []
        if waiter is not None:
            waiter.set_result((self.parser.get_status_code(), body))


def make_app(upstream: str):  # type: ignore[no-untyped-def]
    url = urlsplit(upstream)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    head = f"Host: {url.netloc}\r\nContent-Type: application/json\r\nContent-Length: "
    idle: list[_Conn] = []

    async def post(path: str, body: bytes) -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        while idle and idle[-1].closed:  # the upstream closed it while idle (keep-alive timeout)
            idle.pop()
        conn = idle.pop() if idle else (await loop.create_connection(_Conn, host, port))[1]
        conn.waiter = loop.create_future()
        conn.transport.write(f"POST {path} HTTP/1.1\r\n{head}{len(body)}\r\n\r\n".encode() + body)
        result = await conn.waiter
        idle.append(conn)
        return result

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        status, data = await post(scope["path"], b"".join(chunks))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})

    return app


if __name__ == "__main__":
    serve(make_app, __doc__)
