"""`cumulo serve`: prepare the home (first admin key, demo model) and run uvicorn."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import click

from cumulo.cli.common import this_program
from cumulo.config import cumulo_home, load_config


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CUMULO_CONFIG",
    help="cumulo.yaml (env CUMULO_CONFIG); default: the embedded config.",
)
@click.option("--host", metavar="HOST", help="Bind address [default: server.host, 127.0.0.1].")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar="CUMULO_PORT",
    metavar="PORT",
    help="Port (env CUMULO_PORT) [default: server.port, 8080].",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    metavar="N",
    help="Worker processes [default: server.workers, 1].",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="The least severe log lines shown.",
)
@click.option(
    "--tls-certfile",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Serve HTTPS with this certificate (PEM) [default: server.tls.certfile].",
)
@click.option(
    "--tls-keyfile",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="The certificate's private key (PEM) [default: server.tls.keyfile].",
)
def serve(
    config_path: str | None,
    host: str | None,
    port: int | None,
    workers: int | None,
    log_level: str,
    tls_certfile: Path | None,
    tls_keyfile: Path | None,
) -> None:
    """Start the platform (the server and its models)."""
    import uvicorn

    from cumulo.bootstrap import prepare
    from cumulo.cli.serving import run, tls_files
    from cumulo.listen import listen
    from cumulo.providers.registry import ProviderRegistry
    from cumulo.server import raise_open_files_limit, uvicorn_options

    config = load_config(config_path)
    source = config_path or "<default config>"
    registry = ProviderRegistry()
    registry.check(config, source)
    home = cumulo_home()
    certfile, keyfile = tls_files(config.server.tls, tls_certfile, tls_keyfile, home)
    # Listen before anything loads: a port in use is said at once, and stays ours.
    sockets = listen(host or config.server.host, config.server.port if port is None else port)
    admin_key = prepare(config, home)
    for warning in registry.preflight(config, source):  # before any model loads
        click.echo(f"cumulo: warning: {warning}", err=True)
    if admin_key:
        click.echo(
            "Created the first admin key. It is shown once only; keep it safe:\n\n"
            f"    {admin_key}\n\n"
            "Use it as CUMULO_API_KEY for the cumulo CLI, or create tenant keys with "
            f"'{this_program()} keys create NAME'.\n"
        )
    os.environ["CUMULO_HOME"] = str(home)
    if config_path:
        os.environ["CUMULO_CONFIG"] = str(Path(config_path).resolve())
    server = config.server
    raise_open_files_limit(server)
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"]["cumulo"] = {
        "handlers": ["default"],
        "level": log_level.upper(),
        "propagate": False,
    }
    uvicorn_config = uvicorn.Config(
        "cumulo.app:create_app_from_env",
        factory=True,
        ssl_certfile=certfile,  # HTTPS when given (the files were checked above)
        ssl_keyfile=keyfile,
        host=host or server.host,
        port=server.port if port is None else port,
        workers=workers or server.workers,
        loop="uvloop",
        access_log=server.access_log,
        log_level=log_level,
        log_config=log_config,
        server_header=False,  # no `server: uvicorn`: what it runs on is nobody's business
        # Forwarded headers only from proxies the config names (reading them costs ~2%).
        proxy_headers=bool(server.forwarded_allow_ips),
        forwarded_allow_ips=server.forwarded_allow_ips or None,
        **uvicorn_options(server),  # httptools, protected (cumulo.server)
    )
    run(uvicorn_config, sockets)
