"""The job runner: one per process (`cumulo serve`, `cumulo worker`), for every job kind.

A job's life (statuses as OpenAI's batches name them):

    validating ──► in_progress ──► finalizing ──► completed | expired
        │               │                ▲
        ▼               ▼                │
      failed        cancelling ──────────┘──► cancelled

Steps that one process must do alone (validating, finalizing, cancelling) are taken
with the job's lease (`JobTable.claim`: `FOR UPDATE SKIP LOCKED` on PostgreSQL). The
items of an `in_progress` job are shared: every runner with room joins the job and
claims items in chunks (`claim_items`), lowest index first, so several workers share
one batch and none runs an item another holds.

Leases are renewed every third of `jobs.lease_s` (`heartbeat`); a worker that died
stops renewing, and once its leases lapse its job step and its items are claimed by
another runner (or by the same server after a restart). Items whose results were
written are never claimed again; a result is written only if its item is still pending,
so each appears once in the output even if a slow worker taken for dead finishes it too.
Results are written in small batches (every `FLUSH_S`, or `FLUSH_ITEMS` at once), so
after a kill only the items in flight, and those finished in the last fraction of a
second, run again.

Cancelling a job (or its expiry) cancels the tasks of its items in flight on this
process at once (`poke`) and on others at their next heartbeat; their upstream
requests are cancelled with them (the gateway call is cancelled), and the items go back
unfinished. A graceful stop gives back the items in flight, so a restart resumes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge

from cumulo.config import JobsConfig
from cumulo.jobs.kinds import AuditLog, ItemWorker, JobInvalid, JobKind
from cumulo.origin import running_as
from cumulo.store.jobs import COMPLETED, FAILED, ItemResult, ItemRow, JobRow, JobTable

log = logging.getLogger(__name__)

VALIDATING, IN_PROGRESS, FINALIZING = "validating", "in_progress", "finalizing"
CANCELLING, CANCELLED, EXPIRED, FAILED_JOB = "cancelling", "cancelled", "expired", "failed"
COMPLETED_JOB = "completed"
STEPS = (VALIDATING, FINALIZING, CANCELLING)  # done by one runner holding the job's lease
TERMINAL = (COMPLETED_JOB, FAILED_JOB, EXPIRED, CANCELLED)
FLUSH_S = 0.1
FLUSH_ITEMS = 128
STEPS_PER_TICK = 16


def worker_id() -> str:
    """This process's name in leases: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobMetrics:
    """`cumulo_jobs{kind,status}` (jobs in each status, all processes, as of the last
    poll) and `cumulo_job_items_total{kind,status}` (items this process finished)."""

    def __init__(self, registry: Any) -> None:
        self.jobs = Gauge(
            "cumulo_jobs", "Jobs by kind and status.", ("kind", "status"), registry=registry
        )
        self.items = Counter(
            "cumulo_job_items",
            "Job items (batch lines) finished by this process.",
            ("kind", "status"),
            registry=registry,
        )
        self._seen: set[tuple[str, str]] = set()

    def set_counts(self, counts: Mapping[tuple[str, str], int]) -> None:
        for key in self._seen - set(counts):
            self.jobs.labels(*key).set(0)
        for key, n in counts.items():
            self.jobs.labels(*key).set(n)
        self._seen |= set(counts)


class JobRunner:
    def __init__(
        self,
        jobs: JobTable,
        kinds: Mapping[str, JobKind],
        config: JobsConfig,
        audit: AuditLog | None = None,
        metrics: JobMetrics | None = None,
        owner: str | None = None,
    ) -> None:
        self.jobs = jobs
        self.kinds = dict(kinds)
        self.config = config
        self.audit = audit
        self.metrics = metrics
        self.owner = owner or worker_id()
        self.slots = asyncio.Semaphore(config.concurrency)  # lines in flight, all jobs
        self.working: dict[str, _JobWork] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._main(), name="cumulo-jobs"),
            asyncio.create_task(self._heartbeat(), name="cumulo-jobs-heartbeat"),
        ]

    def poke(self) -> None:
        """Look for work now (a job was created or cancelled through this process)."""
        self._wake.set()

    async def close(self) -> None:
        """Stop: the items in flight are given back (another runner or a restart takes
        them at once), finished results are written, leases released."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        works = list(self.working.values())
        for work in works:
            work.stop()
        for work in works:
            await work.wait()

    # -- the loops ----------------------------------------------------------------

    async def _main(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # the database is away: try again at the next poll
                log.exception("job runner: polling for work failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.poll_interval_s):
                    await self._wake.wait()
            self._wake.clear()

    async def _heartbeat(self) -> None:
        every = self.config.lease_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                await self.jobs.heartbeat(self.owner, self.config.lease_s)
                await self._check_working()
            except Exception:  # leases lapse if this keeps failing: others take over
                log.exception("job runner: heartbeat failed")

    async def tick(self) -> None:
        """One round: the job steps nobody holds, then join the jobs in progress."""
        seen: set[str] = set()
        for _ in range(STEPS_PER_TICK):
            job = await self.jobs.claim(self.owner, STEPS, self.config.lease_s)
            if job is None or job.id in seen:
                if job is not None:
                    await self.jobs.release(job.id, self.owner)
                break
            seen.add(job.id)
            try:
                await self._step(job)
            finally:
                await self.jobs.release(job.id, self.owner)
        now = time.time()
        for job in await self.jobs.in_status([IN_PROGRESS]):
            if job.kind not in self.kinds:
                continue
            if job.expires_at is not None and now >= job.expires_at:
                await self._end(job, EXPIRED, "the completion window ended")
                continue
            if job.id not in self.working:
                work = _JobWork(self, job, self.kinds[job.kind])
                self.working[job.id] = work
                work.start()
        await self._check_working()
        if self.metrics is not None:
            self.metrics.set_counts(await self.jobs.counts())

    async def _check_working(self) -> None:
        """Stop the work of jobs no longer in progress (cancelled, expired)."""
        if not self.working:
            return
        rows = await self.jobs.statuses(list(self.working))
        for job_id, work in list(self.working.items()):
            row = rows.get(job_id)
            if row is None or row.status != IN_PROGRESS:
                work.stop()

    async def _end(self, job: JobRow, ending: str, why: str) -> None:
        if await self.jobs.move(
            job.id, [IN_PROGRESS], status=FINALIZING, ending=ending, finalizing_at=time.time()
        ):
            await self.jobs.add_event(job.id, f"finalizing: {why}")
            self.poke()

    # -- steps --------------------------------------------------------------------

    async def _step(self, job: JobRow) -> None:
        kind = self.kinds.get(job.kind)
        if kind is None:  # a kind this version does not run: left to one that does
            return
        try:
            if job.status == VALIDATING:
                await self._validate(kind, job)
            elif job.status in (CANCELLING, FINALIZING):
                _, held = await self.jobs.pending(job.id)
                if held == 0:  # nothing in flight anywhere any more (else: a later tick)
                    ending = CANCELLED if job.status == CANCELLING else job.ending
                    await self._finalize(kind, job, ending or COMPLETED_JOB)
        except Exception as exc:
            log.exception("job %s: %s failed", job.id, job.status)
            await self.jobs.add_event(job.id, f"{job.status} failed: {exc}", "error")
            await self._finish(
                kind,
                job,
                [job.status],
                FAILED_JOB,
                error={"object": "list", "data": [{"code": "internal_error", "message": str(exc)}]},
            )

    async def _validate(self, kind: JobKind, job: JobRow) -> None:
        await self.jobs.clear_items(job.id)  # a validation a dead worker began

        async def add_items(items: list[tuple[int, int, int]]) -> None:
            await self.jobs.add_items(job.id, items)

        try:
            total = await kind.validate(job, add_items)
        except JobInvalid as exc:
            await self.jobs.add_event(job.id, f"validation failed: {len(exc.errors)} errors")
            error = {"object": "list", "data": exc.errors}
            await self._finish(kind, job, [VALIDATING], FAILED_JOB, error=error)
            return
        if await self.jobs.move(
            job.id, [VALIDATING], status=IN_PROGRESS, total=total, started_at=time.time()
        ):
            await self.jobs.add_event(job.id, f"validated: {total} requests; in progress")
            self.poke()

    async def _finalize(self, kind: JobKind, job: JobRow, ending: str) -> None:
        job = await self.jobs.get(job.id) or job  # the latest counts
        fields = await kind.finalize(_with(job, ending=ending))
        await self._finish(kind, job, [job.status], ending, **fields)

    async def _finish(
        self, kind: JobKind, job: JobRow, from_: list[str], status: str, **fields: Any
    ) -> None:
        now = time.time()
        if not await self.jobs.move(job.id, from_, status=status, finished_at=now, **fields):
            return
        final = await self.jobs.get(job.id) or job
        await self.jobs.add_event(
            job.id,
            f"{status}: {final.completed} completed, {final.failed} failed of {final.total}",
        )
        if self.audit is not None:
            data = {
                **kind.audit_data(final),
                "status": status,
                "total": final.total,
                "completed": final.completed,
                "failed": final.failed,
            }
            await self.audit.append(
                final.key_id, f"{kind.name}.finished", job.id, job.tenant_id, data
            )


def _with(job: JobRow, **changes: Any) -> JobRow:
    return dataclasses.replace(job, **changes)


class _JobWork:
    """This process's share of the items of one job in progress."""

    def __init__(self, runner: JobRunner, job: JobRow, kind: JobKind) -> None:
        self.runner = runner
        self.job = job
        self.kind = kind
        cfg = runner.config
        self.limit = min(job.concurrency or cfg.batch_concurrency, cfg.batch_concurrency)
        self.inflight: dict[asyncio.Task[None], ItemRow] = {}
        self.results: list[ItemResult] = []
        self.given_back: list[int] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._room = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"cumulo-job-{self.job.id}")

    def stop(self) -> None:
        """Cancel the items in flight (they are given back) and stop claiming."""
        if self._stopping:
            return
        self._stopping = True
        for task in self.inflight:
            task.cancel()
        self._room.set()

    async def wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        runner, job = self.runner, self.job
        worker = self.kind.worker(job)
        flusher = asyncio.create_task(self._flush_every())
        try:
            await runner.jobs.add_event(job.id, f"worker {runner.owner} joins")
            await self._claim_and_run(worker)
        except JobInvalid as exc:  # its input is gone: the job cannot go on anywhere
            await runner.jobs.add_event(job.id, f"failed: {exc.errors[0].get('message')}", "error")
            error = {"object": "list", "data": exc.errors}
            await runner._finish(self.kind, job, [IN_PROGRESS], FAILED_JOB, error=error)
        except Exception:
            log.exception("job %s: running items failed", job.id)
        finally:
            self.stop()
            if self.inflight:
                await asyncio.gather(*self.inflight, return_exceptions=True)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            try:
                await self._flush()
            except Exception:  # not written: the items run again after their leases lapse
                log.exception("job %s: writing results failed", job.id)
            await worker.close()
            runner.working.pop(job.id, None)

    async def _claim(self) -> list[ItemRow]:
        runner = self.runner
        return await runner.jobs.claim_items(
            self.job.id, runner.owner, self.limit, runner.config.lease_s
        )

    async def _claim_and_run(self, worker: ItemWorker) -> None:
        """Claim chunks of items and run them, `limit` at a time. The next chunk is claimed
        while this one is sent, so a claim waiting on the database (a busy SQLite file)
        does not let the work in flight run dry."""
        runner, job = self.runner, self.job
        origin = self.kind.origin(job)
        ahead: asyncio.Task[list[ItemRow]] | None = asyncio.create_task(self._claim())
        try:
            while not self._stopping and ahead is not None:
                items = await ahead
                ahead = None
                if not items:
                    if await self._done():
                        return
                    await asyncio.sleep(runner.config.poll_interval_s)
                    ahead = asyncio.create_task(self._claim())
                    continue
                ahead = asyncio.create_task(self._claim())
                resumed = sum(1 for it in items if it.attempt > 1)
                if resumed:
                    await runner.jobs.add_event(
                        job.id, f"{runner.owner} runs again {resumed} items a stopped worker held"
                    )
                payloads = await worker.load(items)
                for item, payload in zip(items, payloads, strict=True):
                    while len(self.inflight) >= self.limit and not self._stopping:
                        self._room.clear()
                        await self._room.wait()
                    if self._stopping:
                        self.given_back.append(item.idx)
                        continue
                    await runner.slots.acquire()
                    with running_as(origin):
                        task = asyncio.create_task(self._one(worker, item, payload))
                    self.inflight[task] = item
        finally:
            if ahead is not None:  # claimed ahead, never started: given back
                ahead.cancel()
                try:
                    self.given_back.extend(it.idx for it in await ahead)
                except asyncio.CancelledError:
                    pass  # the claim did not finish: if it took items, their leases lapse
                except Exception:  # the same, and worth a line in the log
                    log.exception("job %s: claiming items failed", self.job.id)

    async def _one(self, worker: ItemWorker, item: ItemRow, payload: bytes) -> None:
        try:
            result = await worker.run(item, payload)
        except asyncio.CancelledError:
            self.given_back.append(item.idx)
            raise
        except Exception:  # a bug in the kind: the item runs again later
            log.exception("job %s: item %d failed", self.job.id, item.idx)
            result = None
        finally:
            self.runner.slots.release()
            self.inflight.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            self._room.set()
        if result is None:
            self.given_back.append(item.idx)
        else:
            self.results.append(result)
            if len(self.results) >= FLUSH_ITEMS:
                await self._flush()

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self._flush()
            except Exception:  # kept for the next try
                log.exception("job %s: writing results failed", self.job.id)

    async def _flush(self) -> None:
        runner = self.runner
        if self.results:
            batch, self.results = self.results, []
            try:
                ok, failed = await runner.jobs.finish_items(self.job.id, batch)
            except BaseException:
                self.results[:0] = batch
                raise
            if runner.metrics is not None:
                runner.metrics.items.labels(self.kind.name, COMPLETED).inc(ok)
                runner.metrics.items.labels(self.kind.name, FAILED).inc(failed)
        if self.given_back:
            back, self.given_back = self.given_back, []
            await runner.jobs.release_items(self.job.id, runner.owner, back)

    async def _done(self) -> bool:
        """No item left to claim: whether the job's items are all finished (then it moves
        on to finalizing) or it was stopped; else others hold some (wait for them)."""
        while self.inflight and not self._stopping:
            self._room.clear()
            await self._room.wait()
        await self._flush()
        free, held = await self.runner.jobs.pending(self.job.id)
        if free or held:
            return self._stopping
        await self.runner._end(self.job, COMPLETED_JOB, "every item is finished")
        return True
