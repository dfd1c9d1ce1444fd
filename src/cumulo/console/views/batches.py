"""Batches (on the Batches and files page): start a batch from an uploaded file, watch its
progress (refreshed by HTMX while one runs; a reload shows it without JavaScript),
download its output and error files, cancel it. The operations are the Batch API's
(`api/batches/service.BatchService`), for the key's tenant, as `/v1/batches` does them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from cumulo.api.batches.protocol import BatchCreate
from cumulo.console.core import Console, Ctx, checked, form_fields
from cumulo.console.pages import EVERYONE, Page

PAGE = Page("/batches", "Batches", EVERYONE)  # on the files page: no navigation entry
ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings")
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")


def routes(console: Console) -> list[Route]:
    async def fragment(request: Request, ctx: Ctx) -> Response:
        return console.render(request, ctx, "_batches.html", await batch_values(console, ctx))

    async def create(request: Request, ctx: Ctx) -> Response:
        service = console.batches
        assert service is not None
        fields = await form_fields(request)
        spec = checked(
            BatchCreate,
            {
                "input_file_id": fields.get("input_file_id", ""),
                "endpoint": fields.get("endpoint", ""),
                "completion_window": "24h",
            },
        )
        await service.start(ctx.who, spec)
        return RedirectResponse("/console/files#batches", status_code=303)

    async def cancel(request: Request, ctx: Ctx) -> Response:
        service = console.batches
        assert service is not None
        await service.stop(ctx.who, request.path_params["batch_id"])
        return RedirectResponse("/console/files#batches", status_code=303)

    return [
        Route("/console/batches", console.view(fragment, PAGE), methods=["GET"]),
        Route("/console/batches", console.view(create, PAGE), methods=["POST"]),
        Route("/console/batches/{batch_id}/cancel", console.view(cancel, PAGE), methods=["POST"]),
    ]


async def batch_values(console: Console, ctx: Ctx) -> dict[str, object]:
    service = console.batches
    if service is None:
        return {"batches": None}
    jobs, more = await service.page(ctx.who, 50)
    inputs = await console.platform.files.list(ctx.who.tenant_id, purpose="batch", limit=100)
    return {
        "batches": jobs,
        "batches_more": more,
        "batch_inputs": inputs.data,
        "endpoints": ENDPOINTS,
        "active": any(j.status in ACTIVE for j in jobs),
    }
