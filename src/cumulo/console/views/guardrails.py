"""Guardrails: the ones this key may apply, and a box to try a text against one, with the
ApplyGuardrail logic itself (`Guardrail.check_blocks`, the Bedrock response's
assessment, the same accounting of interventions as `POST /guardrail/{id}/apply`)."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cumulo.api.bedrock.guardrail import render_apply
from cumulo.console.core import Console, Ctx, form_fields
from cumulo.console.pages import EVERYONE, Page
from cumulo.errors import InvalidRequest, NotFound
from cumulo.governance.guardrails.config import Source

PAGE = Page("/guardrails", "Guardrails", EVERYONE)
MAX_TEXT = 32_000


def routes(console: Console) -> list[Route]:
    platform = console.platform

    def visible(ctx: Ctx) -> list[dict[str, object]]:
        return [
            g.describe()
            for gid, g in sorted(platform.guardrails.items())
            if platform.guarding.may_apply(ctx.who, gid)
        ]

    async def page(request: Request, ctx: Ctx) -> Response:
        return console.render(
            request,
            ctx,
            "guardrails.html",
            {"guardrails": visible(ctx), "result": None, "fields": {}},
        )

    async def apply(request: Request, ctx: Ctx) -> Response:
        started = time.perf_counter()
        fields = await form_fields(request)
        gid = fields.get("guardrail", "")
        guard = platform.guardrails.get(gid)
        if guard is None or not platform.guarding.may_apply(ctx.who, gid):
            raise NotFound(f"The guardrail '{gid}' was not found.", param="guardrail")
        raw = fields.get("source", "INPUT")
        if raw not in ("INPUT", "OUTPUT"):
            raise InvalidRequest("'source' must be INPUT or OUTPUT.", param="source")
        source: Source = "OUTPUT" if raw == "OUTPUT" else "INPUT"
        text = fields.get("text", "")
        if not text or len(text) > MAX_TEXT:
            raise InvalidRequest(f"Write a text of 1 to {MAX_TEXT} characters.", param="text")
        verdict = guard.check_blocks([text], source)
        platform.guardrail_applied(ctx.who, guard, source, verdict)
        latency = round((time.perf_counter() - started) * 1000)
        result = render_apply(guard, verdict, [text], source, True, latency)
        values = {"guardrails": visible(ctx), "result": result, "fields": fields}
        template = (
            "_guardrail_result.html" if request.headers.get("hx-request") else "guardrails.html"
        )
        return console.render(request, ctx, template, values)

    return [
        Route("/console/guardrails", console.view(page, PAGE), methods=["GET"]),
        Route("/console/guardrails", console.view(apply, PAGE), methods=["POST"]),
    ]
