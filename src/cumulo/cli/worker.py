"""`cumulo worker`: run jobs (batches) from the shared database, without serving HTTP."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import click

from cumulo.config import Config, cumulo_home, load_config

log = logging.getLogger("cumulo.worker")


@click.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="CUMULO_CONFIG",
    help="cumulo.yaml (env CUMULO_CONFIG); default: the embedded config.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="The least severe log lines shown.",
)
def worker(config_path: str | None, log_level: str) -> None:
    """Run jobs (batches) from the database, without serving HTTP.

    Workers and servers sharing one database share its jobs. Several workers (and servers) share the jobs through PostgreSQL: each batch's lines
    are claimed in chunks, and a worker that dies has its work taken over once its
    leases lapse (jobs.lease_s). SIGTERM or Ctrl-C stops it gracefully: the lines in
    flight are given back for another worker.
    """
    logging.getLogger("cumulo").setLevel(log_level.upper())
    config = load_config(config_path)
    asyncio.run(_run(config, cumulo_home()))


async def _run(config: Config, home: Path) -> None:
    from cumulo.jobs.setup import job_runner
    from cumulo.platform import Platform

    platform = Platform(config, home)
    await platform.store.migrate()
    await platform.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        runner = job_runner(platform, platform.gateway)
        runner.start()
        log.info("worker %s: running jobs from %s", runner.owner, platform.store.safe_url)
        click.echo(f"cumulo worker {runner.owner}: running jobs", err=True)
        await stop.wait()
        await runner.close()
    finally:
        await platform.close()
