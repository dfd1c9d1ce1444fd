"""Routes of the OpenAI-compatible front door."""

from __future__ import annotations

from starlette.routing import Route

from cumulo.api.http import OPENAI, Handler, guarded
from cumulo.api.openai.service import OpenAIService


def routes(service: OpenAIService) -> list[Route]:
    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, guarded(handler, OPENAI.error_response), methods=[method])

    text = service.completions
    per_model = [  # also under /models/{model}/ (see `api.openai.completions`)
        ("/v1/completions", text.completions, "POST"),
        ("/tokenize", text.tokenize, "POST"),
        ("/detokenize", text.detokenize, "POST"),
        ("/tokenizer_info", text.tokenizer_info, "GET"),
    ]
    return [
        *(route(path, handler, method) for path, handler, method in per_model),
        *(
            route("/models/{model:path}" + path, handler, method)
            for path, handler, method in per_model
        ),
        route("/v1/chat/completions", service.chat_completions, "POST"),
        route("/v1/embeddings", service.embeddings, "POST"),
        route("/v1/models", service.list_models, "GET"),
        route("/v1/models/{model:path}", service.get_model, "GET"),
    ]
