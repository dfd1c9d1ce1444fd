"""The job runner of one process, assembled from its platform and gateway."""

from __future__ import annotations

from cumulo.jobs.batch.kind import BatchKind
from cumulo.jobs.evals.kind import EvalKind
from cumulo.jobs.runner import JobMetrics, JobRunner
from cumulo.platform import Platform
from cumulo.request.gateway import Gateway
from cumulo.store.jobs import JobTable


def job_runner(platform: Platform, gateway: Gateway, owner: str | None = None) -> JobRunner:
    """A runner (not started) for every job kind, acting through `gateway`."""
    config = platform.config
    table = JobTable(platform.store)
    batch = BatchKind(platform.files, table, gateway, platform.auth, config.jobs, config.server)
    evals = EvalKind(platform.files, gateway, platform.auth, config.jobs)
    return JobRunner(
        table,
        {batch.name: batch, evals.name: evals},
        config.jobs,
        audit=platform.ledger,
        metrics=JobMetrics(platform.metrics.registry),
        owner=owner,
    )
