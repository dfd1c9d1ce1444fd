"""Routes of the OpenAI Files API."""

from __future__ import annotations

from starlette.routing import Route

from cumulo.api.files.service import FilesService
from cumulo.api.http import Handler, error_response, guarded


def routes(service: FilesService) -> list[Route]:
    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, guarded(handler, error_response), methods=[method])

    return [
        route("/v1/files", service.upload, "POST"),
        route("/v1/files", service.list, "GET"),
        route("/v1/files/{file_id}", service.retrieve, "GET"),
        route("/v1/files/{file_id}", service.delete, "DELETE"),
        route("/v1/files/{file_id}/content", service.content, "GET"),
    ]
