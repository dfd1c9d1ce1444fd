"""The Batch API front door: create, retrieve, list and cancel batches.

Implements https://platform.openai.com/docs/api-reference/batch (create, retrieve,
cancel, list). A batch is a job of kind `batch` (`cumulo.jobs`); it belongs to its
creator's tenant, and another tenant's batch answers 404 as if it did not exist.
Creating and cancelling are ledger entries naming the input file's SHA-256; the runner
records the end.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.batches.protocol import BatchCreate
from cumulo.api.http import OPENAI, JSONResponse, header, list_limit, read_body
from cumulo.errors import InvalidRequest, NotFound
from cumulo.files import FileStore
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.jobs import AuditLog, JobRunner
from cumulo.jobs.batch import KIND
from cumulo.jobs.runner import CANCELLING, FINALIZING, IN_PROGRESS, VALIDATING
from cumulo.store.jobs import JobRow, JobTable

WINDOW_S = {"24h": 24 * 3600.0}
MAX_BODY = 64 * 1024
# When each status was reached, as OpenAI's batch object names it.
_ENDED_AT = {
    "completed": "completed_at",
    "failed": "failed_at",
    "expired": "expired_at",
    "cancelled": "cancelled_at",
}


def _ts(value: float | None) -> int | None:
    return None if value is None else int(value)


def render_batch(job: JobRow) -> dict[str, Any]:
    """OpenAI's batch object."""
    params = job.params
    out: dict[str, Any] = {
        "id": job.id,
        "object": "batch",
        "endpoint": params.get("endpoint"),
        "errors": job.error,
        "input_file_id": job.input_file_id,
        "completion_window": params.get("completion_window", "24h"),
        "status": job.status,
        "output_file_id": job.output_file_id,
        "error_file_id": job.error_file_id,
        "created_at": int(job.created_at),
        "in_progress_at": _ts(job.started_at),
        "expires_at": _ts(job.expires_at),
        "finalizing_at": _ts(job.finalizing_at),
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": _ts(job.cancelling_at),
        "cancelled_at": None,
        "request_counts": {"total": job.total, "completed": job.completed, "failed": job.failed},
        "metadata": params.get("metadata"),
    }
    if job.status in _ENDED_AT:
        out[_ENDED_AT[job.status]] = _ts(job.finished_at)
    return out


class BatchService:
    def __init__(
        self,
        auth: Authenticator,
        files: FileStore,
        jobs: JobTable,
        audit: AuditLog,
        runner: JobRunner | None = None,
    ) -> None:
        self.auth = auth
        self.files = files
        self.jobs = jobs
        self.audit = audit
        self.runner = runner  # this process's, if jobs run here: told of new work at once

    async def _who(self, request: Request) -> Principal:
        return await self.auth.authenticate(header(request, b"authorization"))

    async def _own(self, who: Principal, batch_id: str) -> JobRow:
        job = await self.jobs.get(batch_id)
        if job is None or job.kind != KIND or job.tenant_id != who.tenant_id:
            raise NotFound(f"No batch found with id '{batch_id}'.", param="batch_id")
        return job

    async def create(self, request: Request) -> Response:
        """POST /v1/batches."""
        who = await self._who(request)
        body = OPENAI.parse(BatchCreate.model_validate_json, await read_body(request, MAX_BODY))
        return JSONResponse(render_batch(await self.start(who, body)))

    async def start(self, who: Principal, body: BatchCreate) -> JobRow:
        """A new batch of `who`'s over one of its tenant's files of purpose `batch` (the
        operation behind `POST /v1/batches`, also the web console's)."""
        record = await self.files.get(who.tenant_id, body.input_file_id)  # 404 if not its own
        if record.purpose != "batch":
            raise InvalidRequest(
                f"The file {record.id} has purpose {record.purpose!r}; a batch needs a file "
                "uploaded with purpose 'batch'.",
                param="input_file_id",
            )
        now = time.time()
        job = await self.jobs.create(
            id=f"batch_{uuid.uuid4().hex}",
            kind=KIND,
            tenant_id=who.tenant_id,
            key_id=who.key_id,
            status=VALIDATING,
            created_at=now,
            expires_at=now + WINDOW_S[body.completion_window],
            params={
                "endpoint": body.endpoint,
                "completion_window": body.completion_window,
                "metadata": body.metadata,
            },
            input_file_id=record.id,
            input_sha256=record.sha256,
            concurrency=body.concurrency,
        )
        await self.jobs.add_event(job.id, f"created by key {who.key_id}")
        await self.audit.append(
            who.key_id,
            "batch.created",
            job.id,
            who.tenant_id,
            {"input_file_id": record.id, "input_sha256": record.sha256, "endpoint": body.endpoint},
        )
        if self.runner is not None:
            self.runner.poke()
        return job

    async def get(self, request: Request) -> Response:
        """GET /v1/batches/{batch_id}."""
        who = await self._who(request)
        return JSONResponse(render_batch(await self._own(who, request.path_params["batch_id"])))

    async def list(self, request: Request) -> Response:
        """GET /v1/batches?limit=&after= (newest first)."""
        who = await self._who(request)
        limit = list_limit(request)
        page, more = await self.page(who, limit, request.query_params.get("after"))
        return JSONResponse(
            {
                "object": "list",
                "data": [render_batch(j) for j in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": more,
            }
        )

    async def page(
        self, who: Principal, limit: int, after: str | None = None
    ) -> tuple[Sequence[JobRow], bool]:
        """`who`'s tenant's batches, newest first, after the batch `after`; whether more
        follow."""
        cursor = None
        if after is not None:
            try:
                cursor = await self._own(who, after)
            except NotFound:
                raise InvalidRequest(f"after: no batch {after!r}.", param="after") from None
        rows = await self.jobs.page(KIND, who.tenant_id, limit=limit + 1, after=cursor)
        return rows[:limit], len(rows) > limit

    async def cancel(self, request: Request) -> Response:
        """POST /v1/batches/{batch_id}/cancel: in-flight requests are cancelled too."""
        who = await self._who(request)
        return JSONResponse(render_batch(await self.stop(who, request.path_params["batch_id"])))

    async def stop(self, who: Principal, batch_id: str) -> JobRow:
        """Cancel a batch of `who`'s tenant (the operation behind
        `POST /v1/batches/{batch_id}/cancel`, also the web console's)."""
        job = await self._own(who, batch_id)
        now = time.time()
        if await self.jobs.move(
            job.id, [VALIDATING, IN_PROGRESS], status=CANCELLING, cancelling_at=now
        ):
            await self.jobs.add_event(job.id, f"cancel requested by key {who.key_id}")
            await self.audit.append(
                who.key_id,
                "batch.cancelled",
                job.id,
                who.tenant_id,
                {"input_file_id": job.input_file_id, "input_sha256": job.input_sha256},
            )
            if self.runner is not None:
                self.runner.poke()
        elif job.status not in (CANCELLING, FINALIZING, "cancelled"):
            raise InvalidRequest(
                f"Cannot cancel a batch that is {job.status}.",
                param="batch_id",
                code="batch_not_cancellable",
            )
        return await self._own(who, job.id)
