"""The listening sockets of `cumulo serve`, opened before anything else starts.

`cumulo serve` binds and listens first, then builds the demo model, imports the app and
loads models, and hands these very sockets to uvicorn (and to its worker processes). So a
port that is already taken is reported at once, and no other process can take the port
between the check and the server's start.
"""

from __future__ import annotations

import errno
import socket

from cumulo.errors import CumuloError

__all__ = ["BACKLOG", "listen"]

BACKLOG = 2048  # uvicorn's default


def listen(host: str, port: int, *, backlog: int = BACKLOG) -> list[socket.socket]:
    """Sockets listening on every address `host` resolves to (as asyncio's `create_server`
    binds them, SO_REUSEADDR set, IPv6 sockets IPv6 only), inheritable by worker processes.

    Raises `CumuloError` naming `host:port` when it cannot listen there (in use, an address
    of no interface here, a privileged port).
    """
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CumuloError(f"cannot listen on {where}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((address[0], port, *address[2:]))
                sock.listen(backlog)
            except OSError as exc:
                raise CumuloError(_why(where, exc)) from None
            sock.set_inheritable(True)
            if port == 0:  # the other families get the port the first one was given
                port = sock.getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _why(where: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"{where} is already in use (another cumulo serve?): choose another port with "
            "--port PORT or the CUMULO_PORT environment variable"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no interface of this machine has that address"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    return f"cannot listen on {where}: {exc.strerror or exc}"
