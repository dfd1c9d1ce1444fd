"""What `cumulo serve` does around uvicorn: which certificate and key, and running uvicorn
on the sockets `cumulo.listen` opened (one process, or uvicorn's worker processes)."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
from pathlib import Path

import click
import uvicorn
from uvicorn.supervisors import Multiprocess

from cumulo.config import TLSConfig
from cumulo.tls import TLSFilesError, check_pair

STARTUP_FAILURE = 3  # uvicorn's exit status when the app does not start

logger = logging.getLogger("cumulo.serve")


def tls_files(
    configured: TLSConfig | None, certfile: Path | None, keyfile: Path | None, home: Path
) -> tuple[str, str] | tuple[None, None]:
    """The certificate and key to serve HTTPS with: the flags', else the config's (which
    `load_config` checked), else None and None (plain HTTP). The flags' files are checked
    here."""
    if (certfile is None) != (keyfile is None):
        raise click.UsageError("give both --tls-certfile and --tls-keyfile, or neither")
    if certfile is not None and keyfile is not None:
        try:
            check_pair(certfile, keyfile)
        except TLSFilesError as exc:
            raise click.BadParameter(
                str(exc), param_hint=f"'--tls-{exc.which or 'certfile'}'"
            ) from None
        return str(certfile), str(keyfile)
    if configured is not None:
        cert, key = configured.paths(home)
        return str(cert), str(key)
    return None, None


def run(config: uvicorn.Config, sockets: list[socket.socket]) -> None:
    """Serve on `sockets` until stopped; exit with uvicorn's status 3 when a single process
    could not start (a model that cannot load, for one)."""
    scheme = "https" if config.is_ssl else "http"
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        where = f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"
        logger.info("listening on %s://%s (Ctrl-C to stop)", scheme, where)
    server = uvicorn.Server(config)
    try:
        if config.workers > 1:
            Multiprocess(config, sockets=sockets).run()
        else:
            server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
    if config.workers == 1 and not server.started:
        sys.exit(STARTUP_FAILURE)
