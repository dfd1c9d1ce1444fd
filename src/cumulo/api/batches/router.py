"""Routes of the Batch API."""

from __future__ import annotations

from starlette.routing import Route

from cumulo.api.batches.service import BatchService
from cumulo.api.http import Handler, error_response, guarded


def routes(service: BatchService) -> list[Route]:
    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, guarded(handler, error_response), methods=[method])

    return [
        route("/v1/batches", service.create, "POST"),
        route("/v1/batches", service.list, "GET"),
        route("/v1/batches/{batch_id}", service.get, "GET"),
        route("/v1/batches/{batch_id}/cancel", service.cancel, "POST"),
    ]
