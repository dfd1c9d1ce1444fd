"""SQL for the job tables `jobs`, `job_items` and `job_events` (migration 0010).

What the states mean and who moves a job between them is `cumulo.jobs`; this module only
reads and writes rows. Nothing here runs on the request path.

Claims work on SQLite and PostgreSQL alike. A claim is one `UPDATE ... WHERE <key> IN
(SELECT ... LIMIT n) RETURNING`: on PostgreSQL the inner select takes its rows `FOR UPDATE
SKIP LOCKED`, so workers claiming at once get disjoint rows without waiting on each other;
SQLite has one writer at a time, which gives the same result. A claimed row carries its
claimant (`lease_owner`) until `lease_expires_at`; the claimant renews it, and once it
lapses (the claimant died) anyone may claim the row again.

An item's result is written by an update conditional on the item still being `pending`
(its `lease_owner` then names the write, `done:<token>`),
so it is written once, whoever else ran the item too (a worker taken for dead that was
only slow): the output holds each item once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from cumulo.store.db import Store
from cumulo.store.schema import job_events, job_items, jobs

PENDING, COMPLETED, FAILED = "pending", "completed", "failed"
_JOB_FIELDS = tuple(c.name for c in jobs.columns)


@dataclass(slots=True, frozen=True)
class JobRow:
    id: str
    kind: str
    tenant_id: str | None
    key_id: str | None
    status: str
    ending: str | None
    total: int
    completed: int
    failed: int
    created_at: float
    started_at: float | None
    finalizing_at: float | None
    cancelling_at: float | None
    finished_at: float | None
    expires_at: float | None
    error: Any
    params: dict[str, Any]
    input_file_id: str | None
    input_sha256: str | None
    output_file_id: str | None
    error_file_id: str | None
    lease_owner: str | None
    lease_expires_at: float | None
    heartbeat_at: float | None
    priority: int
    concurrency: int | None

    @property
    def progress(self) -> float:
        """The share of its items finished, 0 to 1 (what the CLI's bar and the console show)."""
        return (self.completed + self.failed) / self.total if self.total else 0.0


@dataclass(slots=True, frozen=True)
class ItemRow:
    idx: int
    offset: int
    length: int
    attempt: int


@dataclass(slots=True, frozen=True)
class ItemResult:
    idx: int
    status: str  # COMPLETED or FAILED
    result: str  # the line for the output or error file
    outcome: str | None = None  # in the kind's words (an eval run's pass, fail or error)


@dataclass(slots=True, frozen=True)
class EventRow:
    seq: int
    ts: float
    level: str
    message: str


def _job(row: Any) -> JobRow:
    return JobRow(**{k: row._mapping[k] for k in _JOB_FIELDS})


def _lapsed(table: Any, now: float) -> Any:
    return or_(table.c.lease_expires_at.is_(None), table.c.lease_expires_at < now)


class JobTable:
    """The job tables of `store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine = store.engine

    async def create(self, **values: Any) -> JobRow:
        async with self.engine.begin() as conn:
            await conn.execute(insert(jobs).values(**values))
        row = await self.get(values["id"])
        assert row is not None
        return row

    async def get(self, job_id: str) -> JobRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).first()
        return _job(row) if row is not None else None

    async def page(
        self,
        kind: str,
        tenant_id: str | None,
        *,
        everyone: bool = False,
        limit: int = 20,
        after: JobRow | None = None,
    ) -> list[JobRow]:
        """Newest first; `after`: those created before that one (a page's cursor). Without
        `everyone`, the jobs of `tenant_id` only (None: keys without a tenant)."""
        q = select(jobs).where(jobs.c.kind == kind)
        if not everyone:
            q = q.where(
                jobs.c.tenant_id.is_(None) if tenant_id is None else jobs.c.tenant_id == tenant_id
            )
        if after is not None:
            q = q.where(
                or_(
                    jobs.c.created_at < after.created_at,
                    and_(jobs.c.created_at == after.created_at, jobs.c.id < after.id),
                )
            )
        q = q.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [_job(r) for r in await conn.execute(q)]

    async def move(self, job_id: str, from_: Sequence[str], **values: Any) -> bool:
        """Set `values` if the job's status is one of `from_`; whether it was."""
        q = update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(from_)).values(**values)
        async with self.engine.begin() as conn:
            return bool((await conn.execute(q)).rowcount)

    async def claim(self, owner: str, statuses: Sequence[str], lease_s: float) -> JobRow | None:
        """Take the lease of one job in `statuses` that nobody holds (or whose holder let it
        lapse): highest priority, then oldest first."""
        now = time.time()
        pick = (
            select(jobs.c.id)
            .where(jobs.c.status.in_(statuses), _lapsed(jobs, now))
            .order_by(jobs.c.priority.desc(), jobs.c.created_at)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        q = (
            update(jobs)
            .where(jobs.c.id == pick, _lapsed(jobs, now))
            .values(lease_owner=owner, lease_expires_at=now + lease_s, heartbeat_at=now)
            .returning(*jobs.columns)
        )
        async with self.engine.begin() as conn:
            row = (await conn.execute(q)).first()
        return _job(row) if row is not None else None

    async def release(self, job_id: str, owner: str) -> None:
        q = (
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )
        async with self.engine.begin() as conn:
            await conn.execute(q)

    async def in_status(self, statuses: Sequence[str]) -> list[JobRow]:
        q = (
            select(jobs)
            .where(jobs.c.status.in_(statuses))
            .order_by(jobs.c.priority.desc(), jobs.c.created_at)
        )
        async with self.engine.connect() as conn:
            return [_job(r) for r in await conn.execute(q)]

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, JobRow]:
        if not job_ids:
            return {}
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(jobs).where(jobs.c.id.in_(job_ids)))
            return {r.id: _job(r) for r in rows}

    async def heartbeat(self, owner: str, lease_s: float) -> None:
        """Renew every lease `owner` holds: on jobs, and on its items still pending."""
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(
                update(jobs)
                .where(jobs.c.lease_owner == owner)
                .values(lease_expires_at=now + lease_s, heartbeat_at=now)
            )
            await conn.execute(
                update(job_items)
                .where(job_items.c.lease_owner == owner, job_items.c.status == PENDING)
                .values(lease_expires_at=now + lease_s)
            )

    async def counts(self) -> dict[tuple[str, str], int]:
        """(kind, status) → number of jobs."""
        q = select(jobs.c.kind, jobs.c.status, func.count()).group_by(jobs.c.kind, jobs.c.status)
        async with self.engine.connect() as conn:
            return {(k, s): int(n) for k, s, n in await conn.execute(q)}

    # -- items ----------------------------------------------------------------

    async def add_items(self, job_id: str, items: Sequence[tuple[int, int, int]]) -> None:
        """Items (index, offset, length), pending."""
        if not items:
            return
        rows = [
            {
                "job_id": job_id,
                "idx": i,
                "line_offset": o,
                "line_length": n,
                "status": PENDING,
                "attempt": 0,
            }
            for i, o, n in items
        ]
        async with self.engine.begin() as conn:
            await conn.execute(insert(job_items), rows)

    async def clear_items(self, job_id: str) -> None:
        """Delete the job's items (a validation that did not finish is done again)."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(job_items).where(job_items.c.job_id == job_id))

    async def claim_items(self, job_id: str, owner: str, n: int, lease_s: float) -> list[ItemRow]:
        """Lease up to `n` pending items of the job nobody holds, lowest index first."""
        now = time.time()
        # Materialized: PostgreSQL may otherwise run a `LIMIT ... SKIP LOCKED` subquery once
        # per row it updates, skipping the rows it just locked, and claim far more than `n`.
        pick = (
            select(job_items.c.idx)
            .where(
                job_items.c.job_id == job_id,
                job_items.c.status == PENDING,
                _lapsed(job_items, now),
            )
            .order_by(job_items.c.idx)
            .limit(n)
            .with_for_update(skip_locked=True)
            .cte("picked")
            .prefix_with("MATERIALIZED")
        )
        q = (
            update(job_items)
            .where(job_items.c.job_id == job_id, job_items.c.idx == pick.c.idx)
            .values(
                lease_owner=owner,
                lease_expires_at=now + lease_s,
                attempt=job_items.c.attempt + 1,
            )
            .returning(
                job_items.c.idx,
                job_items.c.line_offset,
                job_items.c.line_length,
                job_items.c.attempt,
            )
        )
        async with self.engine.begin() as conn:
            rows = (await conn.execute(q)).all()
        return sorted((ItemRow(*r) for r in rows), key=lambda r: r.idx)

    async def release_items(self, job_id: str, owner: str, idxs: Sequence[int]) -> None:
        """Give back items not run to the end (cancelled, shut down): claimable at once."""
        if not idxs:
            return
        q = (
            update(job_items)
            .where(
                job_items.c.job_id == job_id,
                job_items.c.idx.in_(idxs),
                job_items.c.lease_owner == owner,
                job_items.c.status == PENDING,
            )
            .values(lease_owner=None, lease_expires_at=None)
        )
        async with self.engine.begin() as conn:
            await conn.execute(q)

    async def finish_items(self, job_id: str, results: Sequence[ItemResult]) -> tuple[int, int]:
        """Write each result if its item is still pending, and add those written to the job's
        counts, in one transaction; (completed, failed) written.

        One statement for all (executemany); the rows it wrote are told apart from rows
        another writer finished by the token this call leaves in their `lease_owner`."""
        if not results:
            return 0, 0
        token = f"done:{uuid.uuid4().hex}"
        now = time.time()
        write = (
            update(job_items)
            .where(
                job_items.c.job_id == job_id,
                job_items.c.idx == bindparam("i"),
                job_items.c.status == PENDING,
            )
            .values(
                status=bindparam("s"),
                result=bindparam("r"),
                outcome=bindparam("o"),
                finished_at=now,
                lease_owner=token,
                lease_expires_at=None,
            )
        )
        written = (
            select(job_items.c.status, func.count())
            .where(job_items.c.job_id == job_id, job_items.c.lease_owner == token)
            .group_by(job_items.c.status)
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                write, [{"i": r.idx, "s": r.status, "r": r.result, "o": r.outcome} for r in results]
            )
            done = {s: int(n) for s, n in await conn.execute(written)}
            ok, failed = done.get(COMPLETED, 0), done.get(FAILED, 0)
            if ok or failed:
                await conn.execute(
                    update(jobs)
                    .where(jobs.c.id == job_id)
                    .values(completed=jobs.c.completed + ok, failed=jobs.c.failed + failed)
                )
        return ok, failed

    async def pending(self, job_id: str) -> tuple[int, int]:
        """(pending items nobody holds, pending items held under a live lease)."""
        now = time.time()
        q = select(
            func.count(),
            func.count().filter(job_items.c.lease_expires_at >= now),
        ).where(job_items.c.job_id == job_id, job_items.c.status == PENDING)
        async with self.engine.connect() as conn:
            total, held = (await conn.execute(q)).one()
        return int(total) - int(held), int(held)

    async def outcomes(self, job_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """How many items of each job have each outcome: job id -> {outcome: count}. One
        GROUP BY over the index (job_id, outcome)."""
        if not job_ids:
            return {}
        q = (
            select(job_items.c.job_id, job_items.c.outcome, func.count())
            .where(job_items.c.job_id.in_(job_ids), job_items.c.outcome.is_not(None))
            .group_by(job_items.c.job_id, job_items.c.outcome)
        )
        out: dict[str, dict[str, int]] = {}
        async with self.engine.connect() as conn:
            for job_id, outcome, n in await conn.execute(q):
                out.setdefault(job_id, {})[outcome] = int(n)
        return out

    async def results(
        self, job_id: str, status: str, chunk: int = 1000
    ) -> AsyncIterator[tuple[int, str | None]]:
        """(index, result) of the job's items in `status`, in index order."""
        last = -1
        while True:
            q = (
                select(job_items.c.idx, job_items.c.result)
                .where(
                    job_items.c.job_id == job_id,
                    job_items.c.status == status,
                    job_items.c.idx > last,
                )
                .order_by(job_items.c.idx)
                .limit(chunk)
            )
            async with self.engine.connect() as conn:
                rows = (await conn.execute(q)).all()
            for idx, result in rows:
                yield idx, result
            if len(rows) < chunk:
                return
            last = rows[-1][0]

    async def unfinished(self, job_id: str, chunk: int = 1000) -> AsyncIterator[ItemRow]:
        """The job's pending items, in index order."""
        last = -1
        while True:
            q = (
                select(
                    job_items.c.idx,
                    job_items.c.line_offset,
                    job_items.c.line_length,
                    job_items.c.attempt,
                )
                .where(
                    job_items.c.job_id == job_id,
                    job_items.c.status == PENDING,
                    job_items.c.idx > last,
                )
                .order_by(job_items.c.idx)
                .limit(chunk)
            )
            async with self.engine.connect() as conn:
                rows = (await conn.execute(q)).all()
            for r in rows:
                yield ItemRow(*r)
            if len(rows) < chunk:
                return
            last = rows[-1][0]

    # -- events ---------------------------------------------------------------

    async def add_event(self, job_id: str, message: str, level: str = "info") -> None:
        """Append a step-level log line (numbered after the job's last one)."""
        for _ in range(5):  # two writers numbering the same line: the second tries again
            try:
                async with self.engine.begin() as conn:
                    seq = (
                        await conn.execute(
                            select(func.coalesce(func.max(job_events.c.seq), 0)).where(
                                job_events.c.job_id == job_id
                            )
                        )
                    ).scalar_one()
                    await conn.execute(
                        insert(job_events).values(
                            job_id=job_id,
                            seq=int(seq) + 1,
                            ts=time.time(),
                            level=level,
                            message=message[:4000],
                        )
                    )
                return
            except IntegrityError:
                continue

    async def events(self, job_id: str, limit: int = 100) -> list[EventRow]:
        q = (
            select(job_events.c.seq, job_events.c.ts, job_events.c.level, job_events.c.message)
            .where(job_events.c.job_id == job_id)
            .order_by(job_events.c.seq)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [EventRow(*r) for r in await conn.execute(q)]
