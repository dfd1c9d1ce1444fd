"""The Evals API front door: evals, their runs and the runs' output items.

Implements https://platform.openai.com/docs/api-reference/evals (OpenAI's hosted product
is retired; its SDK's `client.evals` works unchanged against cumulo). An eval belongs to
its creator's tenant, and its runs and output items with it: another tenant's answer 404
as if they did not exist. A run is a job of kind `eval` (`cumulo.jobs.evals`): progress,
cancellation and resumption after a restart are the job runner's. Creating an eval, a run
and cancelling a run are ledger entries.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.http import OPENAI, JSONResponse, header, list_limit, read_body
from cumulo.errors import InvalidRequest, NotFound
from cumulo.evals.graders import MAX_CRITERIA, CriterionInvalid, check, content_text
from cumulo.evals.items import MAX_ITEMS, check_row, check_schema, validator
from cumulo.evals.perturb import RobustnessInvalid, check_marks, perturbations_of
from cumulo.evals.perturb import check as check_robustness
from cumulo.evals.templates import references
from cumulo.files import FileStore
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.jobs import AuditLog, JobRunner
from cumulo.jobs.evals import KIND
from cumulo.jobs.runner import CANCELLING, FINALIZING, IN_PROGRESS, VALIDATING
from cumulo.store.evals import EvalRow, EvalTable
from cumulo.store.jobs import COMPLETED, FAILED, JobRow, JobTable

MAX_BODY = 32 << 20  # file_content rows inline
MAX_METADATA = 16
# A job's status as OpenAI's eval run names it.
STATUS = {
    VALIDATING: "queued",
    IN_PROGRESS: "in_progress",
    FINALIZING: "in_progress",
    CANCELLING: "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "canceled",
    "expired": "failed",
}
SAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
    },
}


def _obj(body: Any, key: str, param: str | None = None) -> dict[str, Any]:
    v = body.get(key)
    if not isinstance(v, dict):
        raise InvalidRequest(f"{param or key} must be an object.", param=param or key)
    return v


def _metadata(v: Any) -> dict[str, str] | None:
    if v is None:
        return None
    if not isinstance(v, dict) or len(v) > MAX_METADATA:
        raise InvalidRequest(
            f"metadata must be an object of at most {MAX_METADATA} pairs.", param="metadata"
        )
    for key, value in v.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            raise InvalidRequest(
                f"metadata[{key[:64]!r}]: keys of at most 64 characters, string values of at "
                "most 512.",
                param="metadata",
            )
    return dict(v)


def _name(v: Any, default: str) -> str:
    if v is None:
        return default
    if not isinstance(v, str) or len(v) > 256:
        raise InvalidRequest("name must be a string of at most 256 characters.", param="name")
    return v


def render_eval(row: EvalRow) -> dict[str, Any]:
    cfg = row.data_source_config
    props: dict[str, Any] = {"item": cfg["item_schema"]}
    required = ["item"]
    if cfg.get("include_sample_schema"):
        props["sample"] = SAMPLE_SCHEMA
        required.append("sample")
    return {
        "object": "eval",
        "id": row.id,
        "name": row.name,
        "data_source_config": {
            "type": "custom",
            "schema": {"type": "object", "properties": props, "required": required},
        },
        "testing_criteria": row.testing_criteria,
        "created_at": int(row.created_at),
        "metadata": row.metadata,
    }


def _count_usage(usage: dict[str, dict[str, Any]], sample: dict[str, Any] | None) -> None:
    """Adds one call (a generation, or a grader's judge or embedding call) to the usage of
    its model."""
    model = (sample or {}).get("model")
    u = (sample or {}).get("usage")
    if not model or not isinstance(u, dict):
        return
    assert sample is not None
    m = usage.setdefault(
        model,
        {
            "model_name": model,
            "invocation_count": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "total_tokens": 0,
            "cached_tokens": 0,
            "cost": None,  # cumulo: USD, when the model's deployments have prices
        },
    )
    m["invocation_count"] += 1
    for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
        v = u.get(k)
        m[k] += v if isinstance(v, int) else 0
    cost = sample.get("cost")
    if isinstance(cost, (int, float)):
        m["cost"] = round((m["cost"] or 0.0) + float(cost), 9)


def items_of(job: JobRow) -> int:
    """How many original items a run grades: its job's items less the perturbed copies."""
    return job.total // (1 + len(perturbations_of(job.params["data_source"])))


def summarize(
    job: JobRow, results: list[dict[str, Any]]
) -> tuple[dict[str, int], list[dict[str, Any]], list[dict[str, Any]]]:
    """result_counts, per_model_usage, per_testing_criteria_results of a run's output items.

    Counts and criteria are of the original items; usage is of every call the run made:
    generations (perturbed ones too) and the graders' judge and embedding calls, each under
    its own model."""
    counts = {"total": items_of(job), "passed": 0, "failed": 0, "errored": 0}
    usage: dict[str, dict[str, Any]] = {}
    criteria: dict[str, dict[str, Any]] = {}
    for c in job.params["testing_criteria"]:
        criteria[c["name"]] = {"testing_criteria": c["name"], "passed": 0, "failed": 0}
    for out in results:
        _count_usage(usage, out["sample"])
        for r in out["results"]:
            _count_usage(usage, r.get("sample"))
        if out.get("perturbation") is not None:
            continue
        counts[{"pass": "passed", "fail": "failed"}.get(out["status"], "errored")] += 1
        for r in out["results"]:
            entry = criteria.get(r["name"])
            if entry is not None and r.get("error") is None:
                entry["passed" if r["passed"] else "failed"] += 1
    return counts, list(usage.values()), list(criteria.values())


def robustness_counts(job: JobRow, results: list[dict[str, Any]]) -> dict[str, Any] | None:
    """cumulo: the run's robustness option and the result counts of each perturbation."""
    rob = job.params["data_source"].get("robustness")
    if rob is None:
        return None
    total = items_of(job)
    per = {
        name: {"total": total, "passed": 0, "failed": 0, "errored": 0}
        for name in rob["perturbations"]
    }
    for out in results:
        p = out.get("perturbation")
        if p is not None and p["type"] in per:
            key = {"pass": "passed", "fail": "failed"}.get(out["status"], "errored")
            per[p["type"]][key] += 1
    return {**rob, "result_counts": per}


def _run_error(error: Any) -> dict[str, str] | None:
    """A failed job's errors (the runner's `{"object": "list", "data": [...]}`) as the one
    error object of OpenAI's run."""
    if not error:
        return None
    data = error.get("data") if isinstance(error, dict) else error
    messages = [str(e.get("message")) for e in data or [] if isinstance(e, dict)]
    code = next(
        (str(e["code"]) for e in data or [] if isinstance(e, dict) and e.get("code")), "run_failed"
    )
    return {"code": code, "message": "; ".join(messages) or "the run failed"}


class EvalService:
    def __init__(
        self,
        auth: Authenticator,
        files: FileStore,
        evals: EvalTable,
        jobs: JobTable,
        audit: AuditLog,
        runner: JobRunner | None = None,
    ) -> None:
        self.auth = auth
        self.files = files
        self.evals = evals
        self.jobs = jobs
        self.audit = audit
        self.runner = runner

    async def _who(self, request: Request) -> Principal:
        return await self.auth.authenticate(header(request, b"authorization"))

    async def _eval(self, who: Principal, eval_id: str) -> EvalRow:
        row = await self.evals.get(who.tenant_id, eval_id)
        if row is None:
            raise NotFound(f"No eval found with id '{eval_id}'.", param="eval_id")
        return row

    async def _run(self, who: Principal, request: Request) -> tuple[EvalRow, JobRow]:
        return await self._run_of(
            who, request.path_params["eval_id"], request.path_params["run_id"]
        )

    async def _run_of(self, who: Principal, eval_id: str, run_id: str) -> tuple[EvalRow, JobRow]:
        ev = await self._eval(who, eval_id)
        job = await self.jobs.get(run_id)
        if (
            job is None
            or job.kind != KIND
            or job.tenant_id != who.tenant_id
            or job.params.get("eval_id") != ev.id
        ):
            raise NotFound(f"No run found with id '{run_id}'.", param="run_id")
        return ev, job

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await read_body(request, MAX_BODY)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"The body is not JSON: {exc}.") from None
        if not isinstance(body, dict):
            raise InvalidRequest("The body must be a JSON object.")
        return body

    # -- evals ---------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        """POST /v1/evals."""
        who = await self._who(request)
        return JSONResponse(render_eval(await self.create_eval(who, await self._body(request))))

    async def create_eval(self, who: Principal, body: dict[str, Any]) -> EvalRow:
        """An eval of `who`'s tenant from a request body of POST /v1/evals (the console's
        form goes through here too)."""
        cfg = _obj(body, "data_source_config")
        if cfg.get("type") != "custom":
            raise InvalidRequest(
                "data_source_config.type must be 'custom' (logs and stored completions are "
                "OpenAI's hosted data, not available in cumulo).",
                param="data_source_config.type",
            )
        schema = cfg.get("item_schema")
        if (why := check_schema(schema) or check_marks(schema)) is not None:
            raise InvalidRequest(why, param="data_source_config.item_schema")
        raw_criteria = body.get("testing_criteria")
        if not isinstance(raw_criteria, list) or not 1 <= len(raw_criteria) <= MAX_CRITERIA:
            raise InvalidRequest(
                f"testing_criteria must be a list of 1 to {MAX_CRITERIA} criteria.",
                param="testing_criteria",
            )
        try:
            criteria = [check(c, i) for i, c in enumerate(raw_criteria)]
        except CriterionInvalid as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None
        names = [c["name"] for c in criteria]
        if len(set(names)) != len(names):
            raise InvalidRequest(
                "testing_criteria: each criterion needs its own name.", param="testing_criteria"
            )
        row = await self.evals.create(
            id=f"eval_{uuid.uuid4().hex}",
            tenant_id=who.tenant_id,
            key_id=who.key_id,
            name=_name(body.get("name"), "eval"),
            created_at=time.time(),
            data_source_config={
                "type": "custom",
                "item_schema": schema,
                "include_sample_schema": bool(cfg.get("include_sample_schema")),
            },
            testing_criteria=criteria,
            metadata=_metadata(body.get("metadata")),
        )
        await self.audit.append(
            who.key_id,
            "eval.created",
            row.id,
            who.tenant_id,
            {"criteria": [c["type"] for c in criteria]},
        )
        return row

    async def get(self, request: Request) -> Response:
        who = await self._who(request)
        return JSONResponse(render_eval(await self._eval(who, request.path_params["eval_id"])))

    async def update(self, request: Request) -> Response:
        """POST /v1/evals/{id}: name and metadata."""
        who = await self._who(request)
        row = await self._eval(who, request.path_params["eval_id"])
        body = await self._body(request)
        values: dict[str, Any] = {}
        if "name" in body:
            values["name"] = _name(body["name"], row.name)
        if "metadata" in body:
            values["metadata"] = _metadata(body["metadata"])
        if values:
            await self.evals.update(row.id, **values)
        return JSONResponse(render_eval(await self._eval(who, row.id)))

    async def delete(self, request: Request) -> Response:
        who = await self._who(request)
        row = await self._eval(who, request.path_params["eval_id"])
        for run_id in await self.evals.run_ids(row.id):
            await self.jobs.move(
                run_id, [VALIDATING, IN_PROGRESS], status=CANCELLING, cancelling_at=time.time()
            )
        await self.evals.delete(row.id)
        await self.audit.append(who.key_id, "eval.deleted", row.id, who.tenant_id, {})
        if self.runner is not None:
            self.runner.poke()
        return JSONResponse({"object": "eval.deleted", "deleted": True, "eval_id": row.id})

    def _page_args(self, request: Request) -> tuple[int, str | None, bool]:
        limit = list_limit(request)
        order = request.query_params.get("order", "asc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
        return limit, request.query_params.get("after"), order == "asc"

    @staticmethod
    def _list(data: list[dict[str, Any]], more: bool) -> JSONResponse:
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": more,
            }
        )

    async def list_evals(self, request: Request) -> Response:
        """GET /v1/evals?limit=&after=&order=."""
        who = await self._who(request)
        limit, cursor, asc = self._page_args(request)
        after = None
        if cursor is not None:
            after = await self.evals.get(who.tenant_id, cursor)
            if after is None:
                raise InvalidRequest(f"after: no eval {cursor!r}.", param="after")
        rows = await self.evals.page(who.tenant_id, limit + 1, after, asc)
        return self._list([render_eval(r) for r in rows[:limit]], len(rows) > limit)

    async def page_evals(
        self, who: Principal, limit: int, after: str | None = None
    ) -> tuple[list[EvalRow], bool]:
        """A page of `who`'s tenant's evals, newest first, and whether more follow."""
        cursor = await self._eval(who, after) if after is not None else None
        rows = await self.evals.page(who.tenant_id, limit + 1, cursor, False)
        return rows[:limit], len(rows) > limit

    # -- runs ----------------------------------------------------------------------------

    def _data_source(self, ds: dict[str, Any]) -> dict[str, Any]:
        kind = ds.get("type")
        if kind not in ("completions", "jsonl"):
            raise InvalidRequest(
                "data_source.type must be 'completions' or 'jsonl' (responses are OpenAI's "
                "hosted data, not available in cumulo).",
                param="data_source.type",
            )
        out: dict[str, Any] = {"type": kind}
        if kind == "completions":
            model = ds.get("model")
            if not isinstance(model, str) or not model or len(model) > 256:
                raise InvalidRequest(
                    "data_source.model must name a model.", param="data_source.model"
                )
            out["model"] = model
            im = _obj(ds, "input_messages", "data_source.input_messages")
            if im.get("type") != "template":
                raise InvalidRequest(
                    "data_source.input_messages.type must be 'template' (item_reference is not "
                    "available in cumulo).",
                    param="data_source.input_messages.type",
                )
            tmpl = im.get("template")
            if not isinstance(tmpl, list) or not 1 <= len(tmpl) <= 64:
                raise InvalidRequest(
                    "data_source.input_messages.template must be a list of 1 to 64 messages.",
                    param="data_source.input_messages.template",
                )
            messages = []
            for i, m in enumerate(tmpl):
                p = f"data_source.input_messages.template[{i}]"
                if not isinstance(m, dict) or m.get("role") not in (
                    "user",
                    "assistant",
                    "system",
                    "developer",
                ):
                    raise InvalidRequest(
                        f"{p}.role must be user, assistant, system or developer.", param=f"{p}.role"
                    )
                try:
                    text = content_text(m.get("content"), p)
                except CriterionInvalid as exc:
                    raise InvalidRequest(str(exc), param=exc.param) from None
                for ref in references(text):
                    if not ref.startswith("item."):
                        raise InvalidRequest(
                            f"{p}.content: {{{{{ref}}}}}: a generation template can only refer "
                            "to the item.",
                            param=f"{p}.content",
                        )
                role = "system" if m["role"] == "developer" else m["role"]
                messages.append({"role": role, "content": text})
            out["template"] = messages
            sp = ds.get("sampling_params") or {}
            if not isinstance(sp, dict):
                raise InvalidRequest(
                    "data_source.sampling_params must be an object.",
                    param="data_source.sampling_params",
                )
            params: dict[str, Any] = {}
            for key, lo, hi in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
                v = sp.get(key)
                if v is not None:
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                        raise InvalidRequest(
                            f"data_source.sampling_params.{key} must be in [{lo}, {hi}].",
                            param=f"data_source.sampling_params.{key}",
                        )
                    params[key] = float(v)
            for key, hi in (("max_completion_tokens", 1 << 20), ("seed", 1 << 62)):
                v = sp.get(key)
                if v is not None:
                    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
                        raise InvalidRequest(
                            f"data_source.sampling_params.{key} must be an integer in [0, {hi}].",
                            param=f"data_source.sampling_params.{key}",
                        )
                    params[key] = v
            out["sampling_params"] = params
        return out

    async def _stored_rows(
        self, who: Principal, ev: EvalRow, run_id: str, src: dict[str, Any], need_sample: bool
    ) -> tuple[str, str]:
        """(file id, SHA-256) of the run's data: the caller's file, or its inline rows stored
        as a file of purpose `evals` (checked first: a bad row is a 400 naming it)."""
        if src.get("type") == "file_id":
            fid = src.get("id")
            if not isinstance(fid, str):
                raise InvalidRequest(
                    "data_source.source.id must be a file id.", param="data_source.source.id"
                )
            try:
                record = await self.files.get(who.tenant_id, fid)
            except NotFound:
                raise NotFound(
                    f"No file found with id '{fid}'.", param="data_source.source.id"
                ) from None
            if record.purpose != "evals":
                raise InvalidRequest(
                    f"The file {fid} has purpose {record.purpose!r}; a run needs a file "
                    "uploaded with purpose 'evals'.",
                    param="data_source.source.id",
                )
            return record.id, record.sha256
        if src.get("type") != "file_content":
            raise InvalidRequest(
                "data_source.source.type must be 'file_content' or 'file_id'.",
                param="data_source.source.type",
            )
        content = src.get("content")
        if not isinstance(content, list) or not 1 <= len(content) <= MAX_ITEMS:
            raise InvalidRequest(
                f"data_source.source.content must be a list of 1 to {MAX_ITEMS} rows.",
                param="data_source.source.content",
            )
        lines = []
        schema = ev.data_source_config["item_schema"]
        checker = validator(schema)
        for i, obj in enumerate(content):
            row, err = check_row(i, obj, schema, need_sample, checker)
            if err is not None:
                field = f"data_source.source.content[{i}]" + (
                    f".{err['param']}" if err["param"] else ""
                )
                raise InvalidRequest(err["message"], param=field)
            lines.append(orjson.dumps(row))
        data = b"\n".join(lines) + b"\n"

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        record = await self.files.create(
            tenant_id=who.tenant_id,
            key_id=who.key_id,
            purpose="evals",
            filename=f"{run_id}_items.jsonl",
            chunks=chunks(),
            actor=who.key_id,
        )
        return record.id, record.sha256

    async def create_run(self, request: Request) -> Response:
        """POST /v1/evals/{id}/runs."""
        who = await self._who(request)
        body = await self._body(request)
        job = await self.start_run(who, request.path_params["eval_id"], body)
        return JSONResponse(await self.render_run(request, job, with_results=False))

    async def start_run(self, who: Principal, eval_id: str, body: dict[str, Any]) -> JobRow:
        """A run of one of `who`'s tenant's evals, from a body of POST /v1/evals/{id}/runs."""
        ev = await self._eval(who, eval_id)
        ds = _obj(body, "data_source")
        source = self._data_source(ds)
        if ds.get("robustness") is not None:
            if source["type"] != "completions":
                raise InvalidRequest(
                    "data_source.robustness needs a completions data source (jsonl samples "
                    "are not generated here, so their inputs cannot be perturbed).",
                    param="data_source.robustness",
                )
            try:
                source["robustness"] = check_robustness(
                    ds["robustness"], ev.data_source_config["item_schema"]
                )
            except RobustnessInvalid as exc:
                raise InvalidRequest(str(exc), param=exc.param) from None
        src = _obj(ds, "source", "data_source.source")
        run_id = f"evalrun_{uuid.uuid4().hex}"
        file_id, sha = await self._stored_rows(who, ev, run_id, src, source["type"] == "jsonl")
        now = time.time()
        job = await self.jobs.create(
            id=run_id,
            kind=KIND,
            tenant_id=who.tenant_id,
            key_id=who.key_id,
            status=VALIDATING,
            created_at=now,
            params={
                "eval_id": ev.id,
                "name": _name(body.get("name"), source.get("model") or "jsonl"),
                "metadata": _metadata(body.get("metadata")),
                "data_source": source,
                "source": {"type": src["type"], **({"id": src["id"]} if "id" in src else {})},
                "item_schema": ev.data_source_config["item_schema"],
                "testing_criteria": ev.testing_criteria,
            },
            input_file_id=file_id,
            input_sha256=sha,
        )
        await self.evals.add_run(ev.id, run_id, now)
        await self.jobs.add_event(job.id, f"created by key {who.key_id}")
        await self.audit.append(
            who.key_id,
            "eval.run.created",
            job.id,
            who.tenant_id,
            {
                "eval_id": ev.id,
                "input_file_id": file_id,
                "input_sha256": sha,
                "model": source.get("model"),
            },
        )
        if self.runner is not None:
            self.runner.poke()
        return job

    async def outputs(self, job: JobRow) -> list[dict[str, Any]]:
        """The run's output items so far, in item order."""
        out: list[tuple[int, dict[str, Any]]] = []
        for status in (COMPLETED, FAILED):
            async for idx, result in self.jobs.results(job.id, status):
                if result is not None:
                    out.append((idx, orjson.loads(result)))
        out.sort(key=lambda x: x[0])
        return [o for _, o in out]

    async def render_run(
        self, request: Request, job: JobRow, with_results: bool = True
    ) -> dict[str, Any]:
        params = job.params
        results = await self.outputs(job) if with_results else []
        counts, usage, criteria = summarize(job, results)
        base = str(request.base_url).rstrip("/")
        ds = dict(params["data_source"])
        ds["source"] = params.get("source")
        if ds["type"] == "completions":
            ds["input_messages"] = {"type": "template", "template": ds.pop("template")}
        return {
            "object": "eval.run",
            "id": job.id,
            "eval_id": params["eval_id"],
            "name": params.get("name"),
            "status": STATUS.get(job.status, job.status),
            "model": params["data_source"].get("model"),
            "data_source": ds,
            "created_at": int(job.created_at),
            "metadata": params.get("metadata"),
            "error": _run_error(job.error),
            "result_counts": counts,
            "per_model_usage": usage,
            "per_testing_criteria_results": criteria,
            # cumulo: the perturbations the items were also sent with, and their counts
            "robustness": robustness_counts(job, results),
            "report_url": f"{base}/v1/evals/{params['eval_id']}/report?runs={job.id}",
            # cumulo: progress of the job
            "progress": {"total": job.total, "done": job.completed + job.failed},
        }

    async def get_run(self, request: Request) -> Response:
        who = await self._who(request)
        _, job = await self._run(who, request)
        return JSONResponse(await self.render_run(request, job))

    async def list_runs(self, request: Request) -> Response:
        who = await self._who(request)
        ev = await self._eval(who, request.path_params["eval_id"])
        limit, cursor, asc = self._page_args(request)
        ids = await self.evals.run_ids(ev.id)
        if asc:
            ids.reverse()
        if cursor is not None:
            if cursor not in ids:
                raise InvalidRequest(f"after: no run {cursor!r}.", param="after")
            ids = ids[ids.index(cursor) + 1 :]
        status = request.query_params.get("status")
        page: list[dict[str, Any]] = []
        more = False
        for run_id in ids:
            job = await self.jobs.get(run_id)
            if job is None:
                continue
            run = await self.render_run(request, job)
            if status is not None and run["status"] != status:
                continue
            if len(page) == limit:
                more = True
                break
            page.append(run)
        return self._list(page, more)

    async def cancel_run(self, request: Request) -> Response:
        """POST /v1/evals/{id}/runs/{run_id}: cancel (items in flight are cancelled too)."""
        who = await self._who(request)
        p = request.path_params
        return JSONResponse(
            await self.render_run(request, await self.cancel(who, p["eval_id"], p["run_id"]))
        )

    async def cancel(self, who: Principal, eval_id: str, run_id: str) -> JobRow:
        """Cancel a run of one of `who`'s tenant's evals (the operation behind
        `POST /v1/evals/{id}/runs/{run_id}`, also the web console's); the run as it is now."""
        _, job = await self._run_of(who, eval_id, run_id)
        if await self.jobs.move(
            job.id, [VALIDATING, IN_PROGRESS], status=CANCELLING, cancelling_at=time.time()
        ):
            await self.jobs.add_event(job.id, f"cancel requested by key {who.key_id}")
            await self.audit.append(
                who.key_id,
                "eval.run.cancelled",
                job.id,
                who.tenant_id,
                {"eval_id": job.params["eval_id"]},
            )
            if self.runner is not None:
                self.runner.poke()
        elif job.status not in (CANCELLING, FINALIZING, "cancelled"):
            raise InvalidRequest(
                f"Cannot cancel a run that is {STATUS[job.status]}.",
                param="run_id",
                code="run_not_cancellable",
            )
        return await self.jobs.get(job.id) or job

    async def delete_run(self, request: Request) -> Response:
        """DELETE /v1/evals/{id}/runs/{run_id}: cancels it if running; it is no longer listed."""
        who = await self._who(request)
        ev, job = await self._run(who, request)
        await self.jobs.move(
            job.id, [VALIDATING, IN_PROGRESS], status=CANCELLING, cancelling_at=time.time()
        )
        await self.evals.drop_run(job.id)
        params = {**job.params, "eval_id": None, "deleted_from": ev.id}
        await self.jobs.move(
            job.id,
            [
                job.status,
                CANCELLING,
                "cancelled",
                "completed",
                "failed",
                FINALIZING,
                VALIDATING,
                IN_PROGRESS,
            ],
            params=params,
        )
        if self.runner is not None:
            self.runner.poke()
        return JSONResponse({"object": "eval.run.deleted", "deleted": True, "run_id": job.id})

    # -- output items --------------------------------------------------------------------

    @staticmethod
    def _render_item(ev_id: str, job: JobRow, out: dict[str, Any]) -> dict[str, Any]:
        idx = out["datasource_item_id"]
        sample = dict(out["sample"])
        run = job.id.removeprefix("evalrun_")
        original = f"outputitem_{idx}_{run}"
        perturbation = out.get("perturbation")
        extra: dict[str, Any] = {}
        if perturbation is not None:
            # cumulo: a perturbed sample, linked to the original item's output item
            extra["perturbation"] = {
                "type": perturbation["type"],
                "original_id": original,
                "item": perturbation["item"],
            }
        return {
            **extra,
            "object": "eval.run.output_item",
            "id": original
            if perturbation is None
            else (f"outputitem_{idx}-{perturbation['type']}_{run}"),
            "eval_id": ev_id,
            "run_id": job.id,
            "created_at": out["created_at"],
            "status": out["status"],
            "datasource_item_id": idx,
            "datasource_item": out["datasource_item"],
            "results": out["results"],
            "sample": sample,
        }

    async def list_items(self, request: Request) -> Response:
        """GET …/output_items?status=pass|fail&limit=&after=&order=."""
        who = await self._who(request)
        ev, job = await self._run(who, request)
        limit, cursor, asc = self._page_args(request)
        status = request.query_params.get("status")
        if status not in (None, "pass", "fail", "error"):
            raise InvalidRequest("status must be 'pass', 'fail' or 'error'.", param="status")
        items = [self._render_item(ev.id, job, o) for o in await self.outputs(job)]
        if status is not None:
            items = [i for i in items if i["status"] == status]
        if not asc:
            items.reverse()
        if cursor is not None:
            ids = [i["id"] for i in items]
            if cursor not in ids:
                raise InvalidRequest(f"after: no output item {cursor!r}.", param="after")
            items = items[ids.index(cursor) + 1 :]
        return self._list(items[:limit], len(items) > limit)

    async def get_item(self, request: Request) -> Response:
        who = await self._who(request)
        ev, job = await self._run(who, request)
        item_id = request.path_params["item_id"]
        for o in await self.outputs(job):
            rendered = self._render_item(ev.id, job, o)
            if rendered["id"] == item_id:
                return JSONResponse(rendered)
        raise NotFound(f"No output item found with id '{item_id}'.", param="item_id")

    # -- comparison ----------------------------------------------------------------------

    async def eval_of(self, who: Principal, eval_id: str) -> EvalRow:
        """One of `who`'s tenant's evals (another tenant's: NotFound)."""
        return await self._eval(who, eval_id)

    async def run_counts(
        self, who: Principal, eval_ids: list[str]
    ) -> dict[str, list[tuple[JobRow, dict[str, int]]]]:
        """The runs of `who`'s tenant's evals `eval_ids` (newest first) with their
        result_counts, for a page of evals: a few queries whatever the number of items
        (the counts are an indexed GROUP BY of the items' outcomes, not the output items
        read and parsed)."""
        ids = {e: await self.evals.run_ids(e) for e in eval_ids}
        jobs = await self.jobs.statuses([r for runs in ids.values() for r in runs])
        outcomes = await self.jobs.outcomes(list(jobs))
        out: dict[str, list[tuple[JobRow, dict[str, int]]]] = {}
        for eval_id, run_ids in ids.items():
            rows = out.setdefault(eval_id, [])
            for run_id in run_ids:
                job = jobs.get(run_id)
                if job is None or job.kind != KIND or job.tenant_id != who.tenant_id:
                    continue
                o = outcomes.get(run_id, {})
                passed, failed = o.get("pass", 0), o.get("fail", 0)
                errored = sum(o.values()) - passed - failed
                counts = {"total": items_of(job), "passed": passed, "failed": failed}
                rows.append((job, {**counts, "errored": errored}))
        return out

    async def runs(self, who: Principal, eval_id: str) -> list[JobRow]:
        """The runs of one of `who`'s tenant's evals, newest first."""
        _, jobs = await self._runs_of(who, eval_id, None, limit=None)
        return jobs

    async def _runs_of(
        self, who: Principal, eval_id: str, raw: str | None, limit: int | None = 16
    ) -> tuple[EvalRow, list[JobRow]]:
        ev = await self._eval(who, eval_id)
        ids = [r for r in (raw or "").split(",") if r] or list(
            reversed(await self.evals.run_ids(ev.id))
        )
        if limit is not None and not 1 <= len(ids) <= limit:
            raise InvalidRequest("runs must name 1 to 16 runs of this eval.", param="runs")
        jobs = []
        for run_id in ids:
            job = await self.jobs.get(run_id)
            if (
                job is None
                or job.kind != KIND
                or job.tenant_id != who.tenant_id
                or job.params.get("eval_id") != ev.id
            ):
                raise NotFound(f"No run found with id '{run_id}'.", param="runs")
            jobs.append(job)
        return ev, jobs

    async def compare(self, request: Request) -> Response:
        """GET /v1/evals/{id}/compare?runs=a,b (cumulo's extension)."""
        from cumulo.evals.compare import compare

        who = await self._who(request)
        ev, jobs = await self._runs_of(
            who, request.path_params["eval_id"], request.query_params.get("runs")
        )
        runs = [(j, await self.outputs(j)) for j in jobs]
        return JSONResponse(compare(ev, runs))

    async def report(self, request: Request) -> Response:
        """GET /v1/evals/{id}/report?runs=a,b: the comparison as a self-contained HTML page."""
        who = await self._who(request)
        page = await self.report_html(
            who, request.path_params["eval_id"], request.query_params.get("runs")
        )
        return Response(page, media_type="text/html; charset=utf-8")

    async def report_html(self, who: Principal, eval_id: str, runs: str | None) -> str:
        """The side-by-side report of an eval's runs (`runs`: ids joined by commas, or none
        for all of them), for `who`'s tenant only."""
        from cumulo.evals.compare import compare
        from cumulo.evals.report import html

        ev, jobs = await self._runs_of(who, eval_id, runs)
        outs = [(j, await self.outputs(j)) for j in jobs]
        return await anyio.to_thread.run_sync(html, compare(ev, outs))


__all__ = ["OPENAI", "EvalService", "render_eval", "robustness_counts", "summarize"]
