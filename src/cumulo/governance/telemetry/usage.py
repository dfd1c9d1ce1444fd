"""Usage records: journaled and queued in memory on the request path, written in batches.

`record()` appends the record to this process's usage journal (`governance.telemetry.journal`:
one `write(2)` to a local file, no fsync) and to a list. The rest is
`store.batches`: written every `flush_interval_s` (sooner once `batch_size`
records wait), kept through a failed write, flushed on `close()`.

With the journal, nothing acknowledged is lost: a record is in the OS before its
response is complete, and each batch is stored with its journal checkpoint. At start,
`recover()` stores what journals of processes that died hold past their checkpoints.
When the store stays down until `max_queue` records wait, the queue is emptied into
the journal ("spilled": a new file takes new records, and the old ones are written from
disk once the store is back). A shutdown with the store down leaves the records in the
journal for the next start. Without a journal (`usage.journal: false`, or a journal
that cannot be written), records live only in memory: a killed process loses them, and
past `max_queue` the oldest are dropped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from cumulo.config import UsageConfig
from cumulo.governance.telemetry.journal import JournalFile, UsageJournal
from cumulo.origin import current as current_origin
from cumulo.store import checkpoints
from cumulo.store.batches import BatchWriter
from cumulo.store.db import Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UsageRecord:
    key_id: str | None
    endpoint: str
    model: str
    deployment: str | None
    stream: bool
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    ttft_ms: float | None
    status: int
    error_type: str | None
    served_model: str | None = None
    attempts: int = 0
    queue_ms: float | None = None  # time waiting for a local engine slot
    tenant_id: str | None = None
    cost_usd: float | None = None  # None: the deployment has no known price
    guardrail_interventions: int = 0
    cached_tokens: int = 0  # of prompt_tokens, read from a prompt cache (priced lower)
    origin: str | None = None  # the job kind whose work this was (`cumulo.origin`); None: a client
    job_id: str | None = None
    ts: float = 0.0
    # Where the recorder journaled it (not a column): the file and the record's seq there.
    journal: JournalFile | None = field(default=None, repr=False, compare=False)
    seq: int = field(default=0, repr=False, compare=False)

    def as_row(self) -> dict[str, object]:
        return dict(zip(USAGE_COLUMNS, _values(self), strict=True))


# The usage table's columns, as the recorder writes them (one tuple per record).
USAGE_COLUMNS: tuple[str, ...] = tuple(
    c for c in UsageRecord.__slots__ if c not in ("journal", "seq")
)
_values = attrgetter(*USAGE_COLUMNS)


class UsageRecorder(BatchWriter[UsageRecord]):
    what = "usage records"
    task_name = "cumulo-usage-writer"

    def __init__(
        self, store: Store, config: UsageConfig, journal: UsageJournal | None = None
    ) -> None:
        super().__init__(
            flush_interval_s=config.flush_interval_s,
            batch_size=config.batch_size,
            max_queue=config.max_queue,
        )
        self.store = store
        self.config = config
        self.journal = journal
        self._unread: list[JournalFile] = []  # journals whose records are on disk only
        self.spilled = 0  # records left to the journal while the queue was full
        self.recovered = 0  # records written from journals on disk

    def record(self, rec: UsageRecord) -> None:
        """Journal and queue one record: one write to the OS, no waiting on a disk; safe to
        call on the request path. A job's request (`cumulo.origin`) is marked with its origin
        and job, and its cost multiplied by the job's price multiplier (before the caller
        charges budgets with it)."""
        if not rec.ts:
            rec.ts = time.time()
        origin = current_origin()
        if origin is not None:  # a job's request: marked, and priced at the job's rate
            rec.origin, rec.job_id = origin.kind, origin.job_id
            if origin.cost_multiplier is not None and rec.cost_usd:
                rec.cost_usd *= origin.cost_multiplier
        if self.journal is not None:
            mark = self.journal.append(_values(rec))
            if mark is not None:
                rec.journal, rec.seq = mark
        self._queue(rec)

    def start(self) -> None:
        """Open this process's journal and start the background writer."""
        if self.journal is not None and self.journal.current is None:
            try:
                self.journal.open()
            except OSError as exc:
                log.error(
                    "cannot open a usage journal in %s (%s): usage records are kept in memory only",
                    self.journal.directory,
                    exc,
                )
        super().start()

    async def summary(
        self, since: float | None = None, tenant_id: str | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Totals per key, model and tenant (`Store.usage_summary`), with what this process
        still has queued written first."""
        await self.flush()
        return await self.store.usage_summary(since, tenant_id)

    async def recover(self) -> int:
        """Store what the journals of processes that died hold and the database lacks
        (at start, before budgets are seeded from usage); the number of records."""
        if self.journal is None:
            return 0
        self._unread.extend(self.journal.orphans())
        before = self.recovered
        try:
            await self._write_unread()
        except Exception:  # serving comes first: the background writer retries them
            log.exception(
                "writing usage journals left by stopped processes failed; %d stay in %s and "
                "are retried in the background",
                len(self._unread),
                self.journal.directory,
            )
        return self.recovered - before

    async def _write(self, batch: list[UsageRecord]) -> None:
        marks: dict[JournalFile, int] = {}
        for rec in batch:
            if rec.journal is not None:
                marks[rec.journal] = rec.seq  # in order: the last one is the file's checkpoint
        await self.store.insert_usage_values(
            USAGE_COLUMNS, [_values(r) for r in batch], {f.id: seq for f, seq in marks.items()}
        )
        for file, seq in marks.items():
            file.stored = seq

    async def housekeeping(self) -> None:
        """After each write: a new journal segment once the current one fills up (or after a
        failure), delete those whose records are all stored, write journals on disk only."""
        journal = self.journal
        if journal is None:
            return
        if journal.current is None:
            journal.reopen()
        elif journal.filling:
            journal.rotate()  # here rather than in the request that would find it full
        for file in [f for f in journal.sealed if f.done]:
            await self._retire(file)
        await self._write_unread()

    async def _retire(self, file: JournalFile) -> None:
        assert self.journal is not None
        self.journal.retire(file)  # the file first: a checkpoint without its file is harmless
        if file.stored:  # else it has no checkpoint
            await checkpoints.forget(self.store, file.id)

    async def _write_unread(self) -> None:
        """Store the records of each journal on disk only, past its checkpoint, then delete
        it. Under the flush lock: one writer at a time, so nothing is stored twice."""
        async with self._flush_lock:
            while self._unread:
                file = self._unread[0]
                await self._write_file(file)
                self._unread.pop(0)
                await self._retire(file)

    async def _write_file(self, file: JournalFile) -> None:
        assert self.journal is not None
        done = await checkpoints.checkpoint(self.store, file.id)
        columns = tuple(c for c in file.columns if c in USAGE_COLUMNS)
        batch: list[tuple[Any, ...]] = []
        last = written = 0
        for seq, values in self.journal.read(file, columns):
            if seq <= done:
                continue
            batch.append(values)
            last = seq
            if len(batch) >= self.batch_size:
                await self.store.insert_usage_values(columns, batch, {file.id: last})
                written += len(batch)
                batch = []
        if batch:
            await self.store.insert_usage_values(columns, batch, {file.id: last})
            written += len(batch)
        file.seq = file.stored = max(done, last)
        self.recovered += written
        if written:
            log.warning(
                "wrote %d usage records from the journal %s (not stored before)",
                written,
                file.path.name,
            )

    def _trim(self) -> None:
        """The store is down and the queue is past `max_queue`: journaled records leave
        memory (their files are written from disk later); the rest are dropped, oldest first."""
        journal = self.journal
        if len(self._pending) <= self.max_queue or journal is None or journal.current is None:
            super()._trim()
            return
        try:
            journal.rotate()
        except OSError as exc:
            log.error("cannot start a new usage journal file: %s", exc)
            super()._trim()
            return
        files = {rec.journal for rec in self._pending if rec.journal is not None}
        kept = [rec for rec in self._pending if rec.journal is None]
        self.spilled += len(self._pending) - len(kept)
        log.warning(
            "usage queue full while the database is down: %d records left to the journal, "
            "to be written from it once the database is back",
            len(self._pending) - len(kept),
        )
        self._pending[:] = kept
        for file in files:
            journal.sealed.remove(file)
            self._unread.append(file)
        super()._trim()

    async def close(self) -> None:
        """Stop, write what is queued; if the store is down, the journal keeps it (logged)."""
        try:
            await super().close()
            await self._write_unread()
        except Exception as exc:  # noqa: BLE001 - the store is down: logged below, loudly
            journaled = sum(1 for rec in self._pending if rec.journal is not None)
            if journaled or self._unread:
                log.error(
                    "%d usage records (and %d journal files written from disk only) could "
                    "not be written at shutdown (%s: %s); they are kept in the usage journal "
                    "in %s and written at the next start",
                    journaled,
                    len(self._unread),
                    type(exc).__name__,
                    exc,
                    self.journal.directory if self.journal is not None else "-",
                )
            lost = len(self._pending) - journaled
            if lost:
                log.error(
                    "%d usage records were LOST at shutdown: the database is unavailable "
                    "(%s: %s) and they are not in a journal",
                    lost,
                    type(exc).__name__,
                    exc,
                )
        finally:
            if self.journal is not None:
                await self._close_journal()

    async def _close_journal(self) -> None:
        assert self.journal is not None
        files = [*self.journal.sealed, *self._unread]
        if self.journal.current is not None:
            files.append(self.journal.current)
        for file in files:
            if file.done and file not in self._unread:
                try:
                    await self._retire(file)
                except Exception as exc:  # noqa: BLE001 - the file is gone: its checkpoint stays
                    log.warning(
                        "cannot delete the checkpoint of usage journal %s: %s", file.id, exc
                    )
            else:
                self.journal.release(file)
        self._unread.clear()
