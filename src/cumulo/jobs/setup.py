"""The job runner of one process, assembled from its platform and gateway."""

from __future__ import annotations

import time
from collections.abc import Callable

from cumulo.governance.telemetry.usage import UsageRecord
from cumulo.jobs.batch.kind import BatchKind
from cumulo.jobs.evals.kind import EvalKind
from cumulo.jobs.finetune import FineTuneKind
from cumulo.jobs.runner import JobMetrics, JobRunner
from cumulo.platform import Platform
from cumulo.request.gateway import Gateway
from cumulo.store.jobs import JobRow, JobTable


def training_charge(platform: Platform) -> Callable[[JobRow, int], None]:
    """Records a finished training run as the job owner's usage (endpoint `fine_tuning`,
    its training tokens as prompt tokens) priced at `jobs.training_price_per_mtok`, and
    counts its cost against the owner's budgets."""
    price = platform.config.jobs.training_price_per_mtok

    def charge(job: JobRow, tokens: int) -> None:
        now = time.time()
        rec = UsageRecord(
            key_id=job.key_id,
            endpoint="fine_tuning",
            model=str(job.params.get("model")),
            deployment=None,
            stream=False,
            prompt_tokens=tokens,
            completion_tokens=0,
            latency_ms=(now - (job.started_at or now)) * 1000,
            ttft_ms=None,
            status=200,
            error_type=None,
            tenant_id=job.tenant_id,
            cost_usd=None if price is None else tokens * price / 1e6,
            origin="fine_tuning",
            job_id=job.id,
            ts=now,
        )
        platform.usage.record(rec)
        who = platform.auth.principal(job.key_id) if job.key_id else None
        if who is not None:
            platform.governance.charge(who, rec)

    return charge


def job_runner(platform: Platform, gateway: Gateway, owner: str | None = None) -> JobRunner:
    """A runner (not started) for every job kind, acting through `gateway`."""
    config = platform.config
    table = JobTable(platform.store)
    batch = BatchKind(platform.files, table, gateway, platform.auth, config.jobs, config.server)
    evals = EvalKind(platform.files, gateway, platform.auth, config.jobs)
    finetune = FineTuneKind(
        platform.files,
        table,
        platform.home,
        config.jobs.training_threads,
        platform.models_loaded,
        training_charge(platform),
        config.training,
    )
    return JobRunner(
        table,
        {batch.name: batch, evals.name: evals, finetune.name: finetune},
        config.jobs,
        audit=platform.ledger,
        metrics=JobMetrics(platform.metrics.registry),
        owner=owner,
    )
