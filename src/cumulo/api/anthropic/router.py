"""Routes of the Anthropic-compatible front door."""

from __future__ import annotations

from starlette.routing import Route

from cumulo.api.anthropic.service import ANTHROPIC, AnthropicService
from cumulo.api.http import guarded


def routes(service: AnthropicService) -> list[Route]:
    return [
        Route("/v1/messages", guarded(service.messages, ANTHROPIC.error_response), methods=["POST"])
    ]
