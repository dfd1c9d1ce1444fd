"""Routes of the Bedrock-runtime-compatible front door.

`modelId` may be %-encoded and contain `/` or `:` (the `path` convertor).
"""

from __future__ import annotations

from starlette.routing import Route

from cumulo.api.bedrock.service import BEDROCK, BedrockService
from cumulo.api.http import Handler, guarded


def routes(service: BedrockService) -> list[Route]:
    def route(path: str, handler: Handler) -> Route:
        return Route(path, guarded(handler, BEDROCK.error_response), methods=["POST"])

    return [
        route("/model/{model_id:path}/converse", service.converse),
        route("/model/{model_id:path}/converse-stream", service.converse_stream),
    ]
