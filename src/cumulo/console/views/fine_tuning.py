"""Fine-tuning: the key's tenant's fine-tuning jobs, and one job's status, loss curve
(a pygal line chart of its training-loss events), events and checkpoints, refreshed by
HTMX while it trains (a reload shows the same without JavaScript). "Try it" opens the
playground on a succeeded job's model. Everything goes through the Fine-tuning API's
operations (`api/fine_tuning/service.FineTuningService`) for the key's tenant: another
tenant's job is a 404 here as on `/v1/fine_tuning/jobs`."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from cumulo.api.fine_tuning import FineTuningService, render_job
from cumulo.console import charts
from cumulo.console.core import Console, Ctx
from cumulo.console.pages import EVERYONE, Page
from cumulo.errors import NotFound

PAGE = Page("/fine-tuning", "Fine-tuning", EVERYONE)
PER_PAGE = 20
EVENTS = 100
CHECKPOINTS = 20
ACTIVE = ("validating_files", "queued", "running", "cancelling")
CANCELLABLE = ("validating_files", "queued", "running", "paused")  # as the API's statuses


def _service(console: Console) -> FineTuningService:
    if console.fine_tuning is None:
        raise NotFound("Fine-tuning is not served here.")
    return console.fine_tuning


def loss_chart(events: list[dict[str, Any]]) -> Markup:
    """Training (and validation, where measured) loss per step, from the metrics events."""
    steps = sorted(
        (
            e["data"]
            for e in events
            if e["type"] == "metrics" and e["data"].get("type") != "checkpoint"
        ),
        key=lambda d: d["step"],
    )
    series: dict[str, list[float | None]] = {"training loss": [d.get("train_loss") for d in steps]}
    if any(d.get("valid_loss") is not None for d in steps):
        series["validation loss"] = [d.get("valid_loss") for d in steps]
    labels = [str(d["step"]) for d in steps]
    return charts.line("Loss per step", labels, series, empty="No training step yet")


def routes(console: Console) -> list[Route]:
    async def listing(request: Request, ctx: Ctx) -> Response:
        rows, more = await _service(console).page(
            ctx.who, PER_PAGE, request.query_params.get("after") or None
        )
        jobs = [render_job(j) for j in rows]
        return console.render(
            request,
            ctx,
            "fine_tuning.html",
            {
                "jobs": jobs,
                "has_more": more,
                "active": any(j["status"] in ACTIVE for j in jobs),
                "cancellable": CANCELLABLE,
            },
        )

    async def values(ctx: Ctx, job_id: str) -> dict[str, Any]:
        service = _service(console)
        job = render_job(await service.job(ctx.who, job_id))
        events, more = await service.event_list(ctx.who, job_id, EVENTS)
        checkpoints, _ = await service.checkpoint_list(ctx.who, job_id, CHECKPOINTS)
        return {
            "job": job,
            "events": events,
            "events_more": more,
            "checkpoints": checkpoints,
            "chart": loss_chart(events),
            "active": job["status"] in ACTIVE,
            "cancellable": job["status"] in CANCELLABLE,
        }

    async def detail(request: Request, ctx: Ctx) -> Response:
        values_ = await values(ctx, request.path_params["job_id"])
        return console.render(request, ctx, "fine_tuning_job.html", values_)

    async def fragment(request: Request, ctx: Ctx) -> Response:
        values_ = await values(ctx, request.path_params["job_id"])
        return console.render(request, ctx, "_fine_tuning_job.html", values_)

    async def cancel(request: Request, ctx: Ctx) -> Response:
        """POST /console/fine-tuning/{job_id}/cancel: the Fine-tuning API's cancel."""
        job_id = request.path_params["job_id"]
        await _service(console).stop(ctx.who, job_id)
        return RedirectResponse(f"/console/fine-tuning/{quote(job_id)}", status_code=303)

    return [
        Route("/console/fine-tuning", console.view(listing, PAGE), methods=["GET"]),
        Route("/console/fine-tuning/{job_id}/cancel", console.view(cancel, PAGE), methods=["POST"]),
        Route("/console/fine-tuning/{job_id}", console.view(detail, PAGE), methods=["GET"]),
        Route("/console/fine-tuning/{job_id}/live", console.view(fragment, PAGE), methods=["GET"]),
    ]
