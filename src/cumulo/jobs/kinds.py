"""What a job kind provides to the runner (`cumulo.jobs.runner`).

A kind (batch now; evaluation and fine-tuning next) knows how to check a job's input and
split it into items, how to run one item, and how to deliver the results. The runner
does the rest for every kind alike: claiming, leases and heartbeats, concurrency,
writing each result once, cancellation, expiry, events, audit and metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from cumulo.origin import Origin
from cumulo.store.jobs import ItemResult, ItemRow, JobRow


class AuditLog(Protocol):
    """The audit ledger, as jobs use it (`governance.ledger.Ledger` is one)."""

    async def append(
        self,
        actor: str | None,
        action: str,
        target: str | None = None,
        tenant_id: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> Any: ...


class JobInvalid(Exception):
    """The job's input cannot be run: the job fails with `errors` (JSON objects)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} errors")
        self.errors = errors


class ItemWorker(Protocol):
    """Runs the items of one job in one process (made by `JobKind.worker`)."""

    async def load(self, items: Sequence[ItemRow]) -> list[bytes]:
        """The payloads of `items` (claimed in increasing index order)."""
        ...

    async def run(self, item: ItemRow, payload: bytes) -> ItemResult | None:
        """Run one item as the job's owner; None: not run (give it back, to run later).

        Must not raise except `asyncio.CancelledError` (the job was cancelled or the
        process is stopping): a failed item is an `ItemResult` with status `failed`.
        """
        ...

    async def close(self) -> None: ...


class JobKind(Protocol):
    name: str

    def origin(self, job: JobRow) -> Origin:
        """What the job's requests are marked as (usage origin, price, engine priority)."""
        ...

    async def validate(self, job: JobRow, add_items: Any) -> int:
        """Check the input and add its items (`await add_items([(idx, offset, length)])`);
        the number of items. Raises JobInvalid."""
        ...

    def worker(self, job: JobRow) -> ItemWorker: ...

    async def finalize(self, job: JobRow) -> dict[str, Any]:
        """Deliver the results of a job that is ending (`job.ending`: completed, cancelled,
        expired); the job fields to set (e.g. its output files)."""
        ...

    def audit_data(self, job: JobRow) -> dict[str, Any]:
        """What its ledger entries record about the job (e.g. the input file's hash)."""
        ...
