"""The fine-tuning front door: create, list, retrieve, cancel, pause and resume jobs, and
read their events and checkpoints.

Implements https://platform.openai.com/docs/api-reference/fine-tuning. A fine-tuning job
is a job of kind `fine_tuning` (`cumulo.jobs.finetune`); it belongs to its creator's
tenant, and another tenant's job answers 404 as if it did not exist.

The training file is checked here, before the job exists: each line's chat format (an
error names the line and the field), and each example's length in the base model's
tokens against its context window. The base must be a local model (`provider: local`);
the method must be `supervised`. Statuses as OpenAI names them: the runner's
`validating` is `validating_files`, `in_progress` is `running` (`queued` before its first
step), `completed` is `succeeded` (or `failed` when training failed), a job being
cancelled is `cancelled` at once (it stops at its next step and is never served).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.fine_tuning.protocol import FineTuneCreate, Hyperparameters
from cumulo.api.http import OPENAI, JSONResponse, header, list_limit, read_body
from cumulo.config import Config
from cumulo.errors import BudgetExceeded, InvalidRequest, NotFound
from cumulo.files import FileStore
from cumulo.governance.chain import Governance
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.jobs import AuditLog, JobRunner
from cumulo.jobs.finetune.checks import DataCheck, Flagged, check_examples
from cumulo.jobs.finetune.data import line_numbers, parse_file
from cumulo.jobs.finetune.kind import KIND, METRICS, job_dir, read_all
from cumulo.jobs.finetune.train import CKPT_PREFIX
from cumulo.jobs.runner import CANCELLING, FINALIZING, IN_PROGRESS, VALIDATING
from cumulo.request.guarding import Guarding
from cumulo.store.jobs import JobRow, JobTable

PAUSED = "paused"
CANCELLABLE = [VALIDATING, IN_PROGRESS, PAUSED]
_VERBS = {"cancelled": "cancel", "paused": "pause", "resumed": "resume"}
MAX_BODY = 64 * 1024
MAX_EVENTS = 100_000
METHODS = ("supervised",)
_STATUS = {
    VALIDATING: "validating_files",
    IN_PROGRESS: "running",
    FINALIZING: "running",
    CANCELLING: "cancelled",
    "cancelled": "cancelled",
    "failed": "failed",
    "expired": "failed",
    PAUSED: "paused",
}


def _status(job: JobRow) -> str:
    if job.status == "completed":
        return "succeeded" if job.completed == 1 else "failed"
    return _STATUS.get(job.status, job.status)


def render_job(job: JobRow) -> dict[str, Any]:
    """OpenAI's `fine_tuning.job` object."""
    p = job.params
    status = _status(job)
    error = None
    if status == "failed":
        items = (job.error or {}).get("data") or [] if isinstance(job.error, dict) else []
        first = items[0] if items else {}
        error = {
            "code": first.get("code", "training_failed"),
            "message": first.get("message", "Training failed; see the job's events."),
            "param": first.get("param"),
        }
    hp = p.get("hyperparameters") or {}
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": int(job.created_at),
        "finished_at": int(job.finished_at) if job.finished_at else None,
        "model": p.get("model"),
        "fine_tuned_model": p.get("fine_tuned_model") if status == "succeeded" else None,
        "organization_id": job.tenant_id or "default",
        "status": status,
        "hyperparameters": hp,
        "training_file": job.input_file_id,
        "validation_file": p.get("validation_file"),
        "result_files": [],
        "trained_tokens": p.get("estimated_tokens") if status == "succeeded" else None,
        "error": error,
        "seed": p.get("seed", 0),
        "suffix": p.get("suffix"),
        "metadata": p.get("metadata"),
        "estimated_finish": None,
        "integrations": [],
        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}},
    }


@lru_cache(maxsize=8)
def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _window(path: Path, configured: int | None) -> int:
    data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    window = int(data.get("max_position_embeddings") or 2048)
    return min(window, configured) if configured else window


def _hyperparameters(body: FineTuneCreate) -> dict[str, Any]:
    hp = body.hyperparameters or Hyperparameters()
    if body.method is not None and body.method.supervised is not None:
        hp = body.method.supervised.hyperparameters or hp

    def pick(value: Any, auto: Any, lo: float, hi: float, name: str) -> Any:
        if value is None or value == "auto":
            return auto
        if not lo <= value <= hi:
            raise InvalidRequest(
                f"{name} must be between {lo} and {hi}, not {value}.",
                param=f"hyperparameters.{name}",
            )
        return value

    return {
        "n_epochs": pick(hp.n_epochs, 3, 1, 50, "n_epochs"),
        "batch_size": pick(hp.batch_size, 1, 1, 256, "batch_size"),
        "learning_rate_multiplier": pick(
            hp.learning_rate_multiplier, 1.0, 1e-6, 100, "learning_rate_multiplier"
        ),
    }


class FineTuningService:
    def __init__(
        self,
        auth: Authenticator,
        files: FileStore,
        jobs: JobTable,
        audit: AuditLog,
        config: Config,
        home: Path,
        runner: JobRunner | None = None,
        governance: Governance | None = None,
        guarding: Guarding | None = None,
    ) -> None:
        self.governance = governance
        self.guarding = guarding
        self.auth = auth
        self.files = files
        self.jobs = jobs
        self.audit = audit
        self.config = config
        self.home = home
        self.runner = runner

    async def _who(self, request: Request) -> Principal:
        return await self.auth.authenticate(header(request, b"authorization"))

    async def _own(self, who: Principal, job_id: str) -> JobRow:
        job = await self.jobs.get(job_id)
        if job is None or job.kind != KIND or job.tenant_id != who.tenant_id:
            raise NotFound(
                f"No fine-tuning job found with id '{job_id}'.", param="fine_tuning_job_id"
            )
        return job

    def _base(self, who: Principal, name: str) -> tuple[Path, int | None]:
        """The local directory and context window of base model `name`."""
        from cumulo.engine.hf import resolve_model_path

        if who.models is not None and name not in who.models:
            raise NotFound(f"The model '{name}' does not exist.", param="model")
        for m in self.config.models:
            if m.name != name:
                continue
            if m.kind != "chat":
                raise InvalidRequest(f"The model '{name}' is not a chat model.", param="model")
            for d in m.deployments:
                if d.provider == "local" and d.path:
                    return resolve_model_path(d.path), m.context_window
            raise InvalidRequest(
                f"The model '{name}' is served by a remote provider; cumulo fine-tunes local "
                "models only (provider: local).",
                param="model",
                code="model_not_available",
            )
        raise InvalidRequest(
            f"The model '{name}' does not exist or cannot be fine-tuned.", param="model"
        )

    async def _check_file(
        self,
        who: Principal,
        file_id: str,
        param: str,
        base: Path,
        window: int,
        model: str = "",
        flagged: Flagged = "refuse",
    ) -> tuple[str, int, DataCheck | None]:
        """(SHA-256, training tokens per epoch, what the guardrails did) of a valid file;
        else a 400 naming the line."""
        record = await self.files.get(who.tenant_id, file_id)  # 404 if not its own
        if record.purpose != "fine-tune":
            raise InvalidRequest(
                f"The file {file_id} has purpose {record.purpose!r}; fine-tuning needs a file "
                "uploaded with purpose 'fine-tune'.",
                param=param,
            )
        content, sha = await read_all(self.files, who.tenant_id, file_id)
        examples, errors = parse_file(content)
        if errors:
            first = errors[0]
            more = f" ({len(errors)} errors in all)" if len(errors) > 1 else ""
            raise InvalidRequest(
                f"{param} {file_id}: {first['message']}{more}",
                param=f"{param}.{first['param']}" if first.get("param") else param,
                code="invalid_training_file",
            )
        numbers = line_numbers(content)
        checked = None
        guards = self.guarding.for_request(who, model) if self.guarding is not None else None
        if guards is not None:
            checked = check_examples(guards, examples, numbers, flagged)
            if checked.refused_line is not None:
                found = ", ".join(f"{k} x{n}" for k, n in sorted(checked.findings.items()))
                raise InvalidRequest(
                    f"{param} {file_id}: line {checked.refused_line}: the example was flagged "
                    f"by your guardrails ({found}); fix or remove it, or create the job with "
                    "flagged='drop'.",
                    param=param,
                    code="flagged_training_data",
                )
            kept = set(range(len(numbers))) - {numbers.index(n) for n in checked.dropped}
            numbers = [n for i, n in enumerate(numbers) if i in kept]
            examples = checked.examples
            if not examples:
                raise InvalidRequest(
                    f"{param} {file_id}: every example was flagged by your guardrails.",
                    param=param,
                    code="flagged_training_data",
                )

        def lengths() -> list[tuple[int, int]]:
            from cumulo.jobs.finetune.train import encode_example

            tok = _tokenizer(str(base))
            out = []
            for ex in examples:
                enc = encode_example(tok, ex)
                out.append((len(enc.ids), enc.trained_tokens))
            return out

        sizes = await asyncio.to_thread(lengths)
        for n, (length, _) in zip(numbers, sizes, strict=True):
            if length > window:
                raise InvalidRequest(
                    f"{param} {file_id}: line {n}: the example is {length} tokens long; the "
                    f"base model's context window is {window} tokens.",
                    param=param,
                    code="context_length_exceeded",
                )
        return sha, sum(t for _, t in sizes), checked

    async def create(self, request: Request) -> Response:
        """POST /v1/fine_tuning/jobs."""
        who = await self._who(request)
        body = OPENAI.parse(FineTuneCreate.model_validate_json, await read_body(request, MAX_BODY))
        if body.method is not None and body.method.type not in METHODS:
            raise InvalidRequest(
                f"The fine-tuning method '{body.method.type}' is not available; cumulo trains "
                f"{', '.join(METHODS)}.",
                param="method.type",
            )
        hp = _hyperparameters(body)
        base, configured = self._base(who, body.model)
        window = _window(base, configured)
        sha, tokens, checked = await self._check_file(
            who, body.training_file, "training_file", base, window, body.model, body.flagged
        )
        if body.validation_file:
            await self._check_file(
                who, body.validation_file, "validation_file", base, window, body.model, "refuse"
            )
        training_file, training_sha = body.training_file, sha
        if checked is not None and checked.changed:  # what trains is the cleaned copy
            training_file, training_sha = await self._store_cleaned(
                who, body.training_file, checked
            )
        estimated = tokens * int(hp["n_epochs"])
        self._check_budget(who, estimated)
        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
        params = {
            "model": body.model,
            "base_path": str(base),
            "suffix": body.suffix,
            "seed": body.seed if body.seed is not None else 0,
            "metadata": body.metadata,
            "validation_file": body.validation_file,
            "hyperparameters": hp,
            "lora": (body.lora.model_dump() if body.lora else None),
            "checkpoint_every": body.checkpoint_every or 10,
            "estimated_tokens": estimated,
            "training_file": body.training_file,
            "training_sha256": sha,
            "data_checks": checked.summary() if checked is not None else None,
        }
        job = await self.jobs.create(
            id=job_id,
            kind=KIND,
            tenant_id=who.tenant_id,
            key_id=who.key_id,
            status=VALIDATING,
            created_at=time.time(),
            params=params,
            input_file_id=training_file,
            input_sha256=training_sha,
        )
        await self.jobs.add_event(job.id, f"created by key {who.key_id}")
        if checked is not None and checked.findings:
            summary = checked.summary()
            await self.jobs.add_event(
                job.id,
                f"training data checked by guardrails: {summary['findings']}; "
                f"{summary['dropped']} examples dropped, {summary['anonymized']} anonymized",
                "warn",
            )
            await self.audit.append(
                who.key_id,
                "fine_tuning.data_checked",
                job_id,
                who.tenant_id,
                {"training_file": body.training_file, "training_sha256": sha, **summary},
            )
        await self.audit.append(
            who.key_id,
            "fine_tuning.created",
            job.id,
            who.tenant_id,
            {
                "training_file": body.training_file,
                "training_sha256": sha,
                "model": body.model,
                "hyperparameters": hp,
            },
        )
        if self.runner is not None:
            self.runner.poke()
        return JSONResponse(render_job(job))

    async def _store_cleaned(
        self, who: Principal, file_id: str, checked: DataCheck
    ) -> tuple[str, str]:
        """The examples as the guardrails left them, stored as a `fine-tune` file; its id
        and SHA-256."""
        path = self.files.staging_path()
        lines = [json.dumps({"messages": ex}).encode() + b"\n" for ex in checked.examples]
        await asyncio.to_thread(path.write_bytes, b"".join(lines))
        record = await self.files.create_from_path(
            path,
            tenant_id=who.tenant_id,
            key_id=who.key_id,
            purpose="fine-tune",
            filename=f"{file_id}.checked.jsonl",
            actor=who.key_id,
        )
        return record.id, record.sha256

    def _check_budget(self, who: Principal, tokens: int) -> None:
        """Refuse up front a job whose training would cost more than the budget left."""
        price = self.config.jobs.training_price_per_mtok
        if price is None or self.governance is None:
            return
        left = self.governance.budget_left(who)
        cost = tokens * price / 1e6
        if left is not None and cost > left:
            raise BudgetExceeded(
                f"This job would train on about {tokens} tokens (${cost:.4f} at "
                f"${price:g} per million); the budget left this period is ${max(left, 0):.4f}.",
                param="training_file",
                code="budget_exceeded",
            )

    async def get(self, request: Request) -> Response:
        """GET /v1/fine_tuning/jobs/{id}."""
        who = await self._who(request)
        return JSONResponse(render_job(await self._own(who, request.path_params["job_id"])))

    def _limit(self, request: Request, default: int = 20) -> int:
        return list_limit(request, default)

    async def list(self, request: Request) -> Response:
        """GET /v1/fine_tuning/jobs?limit=&after= (newest first)."""
        who = await self._who(request)
        rows, more = await self.page(who, self._limit(request), request.query_params.get("after"))
        return JSONResponse(
            {"object": "list", "data": [render_job(j) for j in rows], "has_more": more}
        )

    async def page(
        self, who: Principal, limit: int, cursor: str | None = None
    ) -> tuple[builtins.list[JobRow], bool]:
        """A page of `who`'s tenant's fine-tuning jobs, newest first, and whether more follow."""
        after = None
        if cursor is not None:
            try:
                after = await self._own(who, cursor)
            except NotFound:
                raise InvalidRequest(
                    f"after: no fine-tuning job {cursor!r}.", param="after"
                ) from None
        rows = await self.jobs.page(KIND, who.tenant_id, limit=limit + 1, after=after)
        return rows[:limit], len(rows) > limit

    async def job(self, who: Principal, job_id: str) -> JobRow:
        """One of `who`'s tenant's fine-tuning jobs (another tenant's: NotFound)."""
        return await self._own(who, job_id)

    async def _move(
        self, request: Request, from_: builtins.list[str], to: str, verb: str, **values: Any
    ) -> Response:
        who = await self._who(request)
        job = await self.move(who, request.path_params["job_id"], from_, to, verb, **values)
        return JSONResponse(render_job(job))

    async def move(
        self,
        who: Principal,
        job_id: str,
        from_: builtins.list[str],
        to: str,
        verb: str,
        **values: Any,
    ) -> JobRow:
        """Move one of `who`'s tenant's jobs from a status in `from_` to `to` (a ledger
        entry `fine_tuning.<verb>`); the job as it is now."""
        job = await self._own(who, job_id)
        if await self.jobs.move(job.id, from_, status=to, **values):
            await self.jobs.add_event(job.id, f"{verb} by key {who.key_id}")
            await self.audit.append(
                who.key_id,
                f"fine_tuning.{verb}",
                job.id,
                who.tenant_id,
                {"model": job.params.get("model")},
            )
            if self.runner is not None:
                self.runner.poke()
        elif job.status != to:
            raise InvalidRequest(
                f"Cannot {_VERBS[verb]} a fine-tuning job that is {_status(job)}.",
                param="fine_tuning_job_id",
            )
        return await self._own(who, job.id)

    async def _tuned(self, who: Principal, name: str) -> tuple[JobRow, int | None]:
        """The job that made the tuned model `name` (`ft:...:<job>`, or a checkpoint's
        `ft:...:<job>:ckpt-step-N`) and the checkpoint's step; NotFound unless `who` may
        call it (its tenant's, and a key that may use its base)."""
        missing = NotFound(f"The model '{name}' does not exist.", param="model")
        parts = name.split(":")
        step: int | None = None
        if len(parts) > 4 and parts[-1].startswith(CKPT_PREFIX):
            try:
                step = int(parts[-1][len(CKPT_PREFIX) :])
            except ValueError:
                raise missing from None
            parts = parts[:-1]
        if not name.startswith("ft:") or len(parts) < 4:
            raise missing
        try:
            job = await self._own(who, parts[-1])
        except NotFound:
            raise missing from None
        made = job.params.get("fine_tuned_model")
        if made != ":".join(parts) or not who.may_use(str(job.params.get("model"))):
            raise missing
        return job, step

    async def export(self, request: Request) -> Response:
        """GET /v1/fine_tuning/models/{model}/export?format=adapter|merged (cumulo): the
        tuned model's adapter (PEFT) or merged model (Hugging Face, safetensors) as a tar
        archive; `X-Cumulo-Sha256` is the SHA-256 of its files (names and contents, in
        name order), recorded on the ledger as `fine_tuning.exported`."""
        from starlette.responses import StreamingResponse

        from cumulo.jobs.finetune import export as ex
        from cumulo.jobs.finetune.hashes import sha256_of_files

        who = await self._who(request)
        name = request.path_params["model"]
        form = request.query_params.get("format", "adapter")
        if form not in ("adapter", "merged"):
            raise InvalidRequest("format must be 'adapter' or 'merged'.", param="format")
        job, step = await self._tuned(who, name)
        where = job_dir(self.home, job.id)
        path = ex.adapter_dir(where, step)
        if path is None:
            raise NotFound(
                f"The files of the model '{name}' are not on this server.", param="model"
            )
        if form == "merged":
            path = await asyncio.to_thread(
                ex.merged_dir, where, Path(job.params["base_path"]), step
            )
        files = ex.files_of(path)
        sha = await asyncio.to_thread(sha256_of_files, path, files)
        await self.audit.append(
            who.key_id,
            "fine_tuning.exported",
            job.id,
            who.tenant_id,
            {"model": name, "format": form, "sha256": sha},
        )
        return StreamingResponse(
            ex.tar_stream(path, files),
            media_type="application/x-tar",
            headers={"x-cumulo-sha256": sha},
        )

    async def cancel(self, request: Request) -> Response:
        """POST /v1/fine_tuning/jobs/{id}/cancel."""
        return await self._move(
            request, CANCELLABLE, CANCELLING, "cancelled", cancelling_at=time.time()
        )

    async def stop(self, who: Principal, job_id: str) -> JobRow:
        """Cancel one of `who`'s tenant's jobs (the operation behind
        `POST /v1/fine_tuning/jobs/{id}/cancel`, also the web console's)."""
        return await self.move(
            who, job_id, CANCELLABLE, CANCELLING, "cancelled", cancelling_at=time.time()
        )

    async def pause(self, request: Request) -> Response:
        """POST /v1/fine_tuning/jobs/{id}/pause: training stops at its next step (a checkpoint)."""
        return await self._move(request, [IN_PROGRESS], PAUSED, "paused")

    async def resume(self, request: Request) -> Response:
        """POST /v1/fine_tuning/jobs/{id}/resume: training goes on from its last checkpoint."""
        return await self._move(request, [PAUSED], IN_PROGRESS, "resumed")

    async def events(self, request: Request) -> Response:
        """GET /v1/fine_tuning/jobs/{id}/events?limit=&after= (newest first)."""
        who = await self._who(request)
        data, more = await self.event_list(
            who,
            request.path_params["job_id"],
            self._limit(request),
            request.query_params.get("after"),
        )
        return JSONResponse({"object": "list", "data": data, "has_more": more})

    async def event_list(
        self, who: Principal, job_id: str, limit: int, after: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], bool]:
        """A job's `fine_tuning.job.event` objects, newest first (metrics events carry their
        figures in `data`), and whether more follow."""
        job = await self._own(who, job_id)
        rows = builtins.list(reversed(await self.jobs.events(job.id, MAX_EVENTS)))
        if after is not None:
            seqs = [f"ftevent-{job.id}-{r.seq}" for r in rows]
            rows = rows[seqs.index(after) + 1 :] if after in seqs else []
        data = []
        for r in rows[:limit]:
            event: dict[str, Any] = {
                "id": f"ftevent-{job.id}-{r.seq}",
                "object": "fine_tuning.job.event",
                "created_at": int(r.ts),
                "level": "error" if r.level == "error" else "info",
                "message": r.message,
                "type": "message",
                "data": None,
            }
            if r.level == METRICS:
                figures = json.loads(r.message)
                event["type"] = "metrics"
                event["data"] = figures
                if figures.get("type") == "checkpoint":
                    event["message"] = f"Checkpoint written at step {figures['step']}"
                else:
                    event["message"] = (
                        f"Step {figures['step']}/{figures['total_steps']}: training loss="
                        f"{figures['train_loss']:.4f}, {figures['tokens_per_s']:.0f} tokens/s"
                    )
            data.append(event)
        return data, len(rows) > limit

    async def checkpoints(self, request: Request) -> Response:
        """GET /v1/fine_tuning/jobs/{id}/checkpoints?limit=&after= (newest first)."""
        who = await self._who(request)
        data, more = await self.checkpoint_list(
            who,
            request.path_params["job_id"],
            self._limit(request, 10),
            request.query_params.get("after"),
        )
        return JSONResponse({"object": "list", "data": data, "has_more": more})

    async def checkpoint_list(
        self, who: Principal, job_id: str, limit: int, after: str | None = None
    ) -> tuple[builtins.list[dict[str, Any]], bool]:
        """A job's `fine_tuning.job.checkpoint` objects, newest first; with `after` (a
        checkpoint's id), those older than it."""
        from cumulo.jobs.finetune.train import checkpoint_metrics, checkpoints

        job = await self._own(who, job_id)
        found = builtins.list(reversed(checkpoints(job_dir(self.home, job.id))))
        if after is not None:
            prefix = f"ftckpt-{job.id}-"
            step_s = after[len(prefix) :] if after.startswith(prefix) else ""
            if not step_s.isdigit() or len(step_s) > 12:
                raise InvalidRequest(
                    f"after: no checkpoint {after[:80]!r} of this job.", param="after"
                )
            found = [(step, path) for step, path in found if step < int(step_s)]
        data = []
        for step, path in found[:limit]:
            m = checkpoint_metrics(path)
            data.append(
                {
                    "id": f"ftckpt-{job.id}-{step}",
                    "object": "fine_tuning.job.checkpoint",
                    "created_at": int(path.stat().st_mtime),
                    "fine_tuning_job_id": job.id,
                    "fine_tuned_model_checkpoint": (
                        f"ft:{job.params['model']}:{job.params.get('suffix') or 'custom'}:"
                        f"{job.id}:ckpt-step-{step}"
                    ),
                    "step_number": step,
                    "metrics": {
                        "step": step,
                        "train_loss": m.get("train_loss"),
                        "valid_loss": m.get("valid_loss"),
                    },
                }
            )
        return data, len(found) > limit
