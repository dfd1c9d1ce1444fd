"""Evaluations: the key's tenant's evals and their runs (status, result counts counted in
SQL, progress, refreshed by HTMX while a run is going; a reload shows it without
JavaScript); create an eval from an uploaded JSONL file of items, its graders (built by
`cumulo.evals.criteria`, as `cumulo eval run --grader` builds them) and one run per chosen
model, the way `cumulo eval run` does; cancel a run; open the side-by-side report.
Everything goes through the Evals API's operations (`api/evals/service.EvalService`) for
the key's tenant: another tenant's eval or run is a 404 here as on `/v1/evals`."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from cumulo.api.evals import EvalService
from cumulo.api.evals.service import STATUS
from cumulo.console.core import Console, Ctx
from cumulo.console.pages import EVERYONE, Page
from cumulo.errors import InvalidRequest, NotFound, PayloadTooLarge
from cumulo.evals import CriterionInvalid
from cumulo.evals.criteria import DEFAULT_THRESHOLD, SIMILARITY, STRING_CHECKS, criterion
from cumulo.evals.graders import meteor_available

PAGE = Page("/evals", "Evaluations", EVERYONE)
PER_PAGE = 20
CHUNK = 1 << 20
ACTIVE = ("queued", "in_progress")
MAX_TOKENS = 256
MAX_FIELDS = 200
# What each grader the form offers checks (the criteria are `cumulo.evals.criteria`'s, as
# `cumulo eval run --grader` builds them).
HINTS = {
    "exact": "the answer equals the ideal",
    "contains": "the answer contains the ideal, ignoring case",
    "judge": "the judge model labels the answer correct",
    "fuzzy_match": "edit-distance similarity",
    "bleu": "BLEU",
    "gleu": "GLEU",
    "meteor": "METEOR",
    "cosine": "cosine of the embedding model's vectors",
    **{f"rouge_{n}": f"ROUGE-{n}" for n in range(1, 6)},
    "rouge_l": "ROUGE-L",
}
ITEM_SCHEMA = {
    "type": "object",
    "properties": {"input": {"type": "string"}, "ideal": {"type": "string"}},
    "required": ["input", "ideal"],
}


@functools.cache
def _meteor() -> bool:
    """Whether METEOR can be offered (it needs NLTK's WordNet corpus on this server)."""
    return meteor_available()


def _number(value: object, param: str) -> float | None:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise InvalidRequest(f"{param} must be a number.", param=param) from None


def _choice(value: object, allowed: list[str], param: str, what: str) -> str | None:
    """A chosen model (empty: none), which must be one of `allowed`."""
    name = value.strip() if isinstance(value, str) else ""
    if not name:
        return None
    if name not in allowed:
        raise InvalidRequest(f"The {what} {name[:256]!r} is not one this key may use.", param=param)
    return name


def _service(console: Console) -> EvalService:
    if console.evals is None:
        raise NotFound("Evaluations are not served here.")
    return console.evals


def routes(console: Console) -> list[Route]:
    files = console.platform.files

    def chat_models(ctx: Ctx) -> list[str]:
        return console.models(ctx, "chat")

    def graders(ctx: Ctx) -> dict[str, list[str]]:
        """The graders the form offers, by kind: cosine where the key may use an embedding
        model, meteor where the server has its corpus."""
        offered = [
            g
            for g in SIMILARITY
            if (g != "cosine" or console.models(ctx, "embedding")) and (g != "meteor" or _meteor())
        ]
        return {"string": list(STRING_CHECKS), "similarity": offered, "judge": ["judge"]}

    async def values(request: Request, ctx: Ctx) -> dict[str, Any]:
        service = _service(console)
        after = request.query_params.get("after") or None
        rows, more = await service.page_evals(ctx.who, PER_PAGE, after)
        counted = await service.run_counts(ctx.who, [ev.id for ev in rows])
        evals: list[dict[str, Any]] = []
        for ev in rows:
            runs = [
                {
                    "id": job.id,
                    "name": job.params.get("name"),
                    "model": job.params["data_source"].get("model"),
                    "status": STATUS.get(job.status, job.status),
                    "counts": counts,
                    "total": job.total,
                    "done": job.completed + job.failed,
                }
                for job, counts in counted.get(ev.id, [])
            ]
            evals.append({"eval": ev, "runs": runs})
        active = any(r["status"] in ACTIVE for e in evals for r in e["runs"])
        return {"evals": evals, "has_more": more, "active": active, "after": after}

    async def listing(request: Request, ctx: Ctx) -> Response:
        return console.render(
            request,
            ctx,
            "evals.html",
            {
                **await values(request, ctx),
                "models": chat_models(ctx),
                "embedders": console.models(ctx, "embedding"),
                "graders": graders(ctx),
                "hints": HINTS,
                "threshold": DEFAULT_THRESHOLD,
                "max_bytes": files.limits.max_bytes,
                "created": request.query_params.get("created"),
            },
        )

    async def fragment(request: Request, ctx: Ctx) -> Response:
        return console.render(request, ctx, "_evals.html", await values(request, ctx))

    async def create(request: Request, ctx: Ctx) -> Response:
        """POST /console/evals (multipart: file, name, model and grader (each repeatable),
        threshold, judge, embedding_model); the CSRF token in the query. Uploads the items
        (purpose evals), creates the eval with a criterion per grader, starts a run per
        model."""
        service = _service(console)
        limit = files.limits.max_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + 64 * 1024:
            raise PayloadTooLarge(f"The file is over the limit of {limit} bytes.", param="file")
        form = await request.form(max_files=1, max_fields=MAX_FIELDS, max_part_size=limit + 1)
        item = form.get("file")
        if not isinstance(item, UploadFile) or not item.filename:
            raise InvalidRequest("Choose a JSONL file of items to upload.", param="file")
        allowed = chat_models(ctx)
        models = [m for m in form.getlist("model") if isinstance(m, str)]
        if not models:
            raise InvalidRequest("Choose at least one model.", param="model")
        for m in models:
            if m not in allowed:
                raise InvalidRequest(f"The model {m!r} is not one this key may use.", param="model")
        chosen = [g for g in form.getlist("grader") if isinstance(g, str)]
        if not chosen:
            raise InvalidRequest("Choose at least one grader.", param="grader")
        if len(set(chosen)) != len(chosen):
            raise InvalidRequest("Choose each grader once.", param="grader")
        threshold = _number(form.get("threshold"), "threshold")
        judge = _choice(form.get("judge"), allowed, "judge", "judge model")
        embedder = _choice(
            form.get("embedding_model"),
            console.models(ctx, "embedding"),
            "embedding_model",
            "embedding model",
        )
        try:
            criteria = [criterion(g, threshold, judge, embedder) for g in chosen]
        except CriterionInvalid as exc:
            raise InvalidRequest(str(exc), param=exc.param) from None
        raw_name = form.get("name")
        name = (raw_name if isinstance(raw_name, str) else "").strip()
        name = name or PurePath(item.filename).stem

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await item.read(CHUNK):
                yield chunk

        record = await files.create(
            tenant_id=ctx.who.tenant_id,
            key_id=ctx.who.key_id,
            purpose="evals",
            filename=item.filename,
            chunks=chunks(),
            actor=ctx.who.key_id,
        )
        ev = await service.create_eval(
            ctx.who,
            {
                "name": name,
                "data_source_config": {"type": "custom", "item_schema": ITEM_SCHEMA},
                "testing_criteria": criteria,
            },
        )
        template = [{"role": "user", "content": "{{item.input}}"}]
        for model in models:
            await service.start_run(
                ctx.who,
                ev.id,
                {
                    "name": model,
                    "data_source": {
                        "type": "completions",
                        "model": model,
                        "input_messages": {"type": "template", "template": template},
                        "sampling_params": {"temperature": 0, "max_completion_tokens": MAX_TOKENS},
                        "source": {"type": "file_id", "id": record.id},
                    },
                },
            )
        return RedirectResponse(f"/console/evals?created={quote(ev.id)}", status_code=303)

    async def report(request: Request, ctx: Ctx) -> Response:
        """The report `GET /v1/evals/{id}/report` serves, for this session's key."""
        service = _service(console)
        runs = request.query_params.get("runs") or None
        page = await service.report_html(ctx.who, request.path_params["eval_id"], runs)
        return Response(
            page,
            media_type="text/html; charset=utf-8",
            headers={
                "cache-control": "no-store",
                "x-content-type-options": "nosniff",
                "content-security-policy": (
                    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                    "frame-ancestors 'none'"
                ),
            },
        )

    async def cancel(request: Request, ctx: Ctx) -> Response:
        """POST /console/evals/{eval_id}/runs/{run_id}/cancel: the Evals API's cancel."""
        p = request.path_params
        await _service(console).cancel(ctx.who, p["eval_id"], p["run_id"])
        return RedirectResponse("/console/evals", status_code=303)

    return [
        Route("/console/evals", console.view(listing, PAGE), methods=["GET"]),
        Route(
            "/console/evals/{eval_id}/runs/{run_id}/cancel",
            console.view(cancel, PAGE),
            methods=["POST"],
        ),
        Route("/console/evals", console.view(create, PAGE), methods=["POST"]),
        Route("/console/evals/runs", console.view(fragment, PAGE), methods=["GET"]),
        Route("/console/evals/{eval_id}/report", console.view(report, PAGE), methods=["GET"]),
    ]
