"""Routes of the OpenAI-compatible front door."""

from __future__ import annotations

from starlette.routing import Route

from cumulo.api.http import OPENAI, Handler, guarded
from cumulo.api.openai.service import OpenAIService


def routes(service: OpenAIService) -> list[Route]:
    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, guarded(handler, OPENAI.error_response), methods=[method])

    return [
        route("/v1/chat/completions", service.chat_completions, "POST"),
        route("/v1/embeddings", service.embeddings, "POST"),
        route("/v1/models", service.list_models, "GET"),
        route("/v1/models/{model:path}", service.get_model, "GET"),
    ]
