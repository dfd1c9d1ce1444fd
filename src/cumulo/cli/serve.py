"""`cumulo serve`: prepare the home (first admin key, demo model) and run uvicorn."""

from __future__ import annotations

import copy
import os
import shutil
import sys
from pathlib import Path

import click

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
    metavar="PORT",
    help="Port [default: server.port, 8080].",
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
def serve(
    config_path: str | None, host: str | None, port: int | None, workers: int | None, log_level: str
) -> None:
    """Start the platform (the server and its models)."""
    import uvicorn

    from cumulo.bootstrap import prepare
    from cumulo.providers.registry import ProviderRegistry
    from cumulo.server import raise_open_files_limit, uvicorn_options

    config = load_config(config_path)
    source = config_path or "<default config>"
    registry = ProviderRegistry()
    registry.check(config, source)
    home = cumulo_home()
    admin_key = prepare(config, home)
    for warning in registry.preflight(config, source):  # before any model loads
        click.echo(f"cumulo: warning: {warning}", err=True)
    if admin_key:
        click.echo(
            "Created the first admin key. It is shown once only; keep it safe:\n\n"
            f"    {admin_key}\n\n"
            "Use it as CUMULO_API_KEY for the cumulo CLI, or create tenant keys with "
            f"'{_this_program()} keys create NAME'.\n"
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
    uvicorn.run(
        "cumulo.app:create_app_from_env",
        factory=True,
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


def _this_program() -> str:
    """How to run this `cumulo` from here: `cumulo` when it is the one on PATH, else its
    path (`.venv/bin/cumulo` under `make serve`, where the venv is not activated)."""
    program = Path(sys.argv[0]).resolve()
    on_path = shutil.which("cumulo")
    if on_path and Path(on_path).resolve() == program:
        return "cumulo"
    relative = os.path.relpath(program)
    return str(program) if relative.startswith("..") else relative
