"""Routes of the fine-tuning API."""

from __future__ import annotations

from starlette.routing import Route

from cumulo.api.fine_tuning.service import FineTuningService
from cumulo.api.http import Handler, error_response, guarded


def routes(service: FineTuningService) -> list[Route]:
    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, guarded(handler, error_response), methods=[method])

    base = "/v1/fine_tuning/jobs"
    return [
        route(base, service.create, "POST"),
        route(base, service.list, "GET"),
        route(base + "/{job_id}", service.get, "GET"),
        route(base + "/{job_id}/cancel", service.cancel, "POST"),
        route(base + "/{job_id}/pause", service.pause, "POST"),
        route(base + "/{job_id}/resume", service.resume, "POST"),
        route(base + "/{job_id}/events", service.events, "GET"),
        route(base + "/{job_id}/checkpoints", service.checkpoints, "GET"),
        route("/v1/fine_tuning/models/{model}/export", service.export, "GET"),
    ]
