"""Models: the catalog (as `GET /v1/models` shows it to this key) and, for platform
admins, each deployment's circuit state, latency, price and readiness
(`GET /admin/deployments`) with the local engines' stats refreshed live
(`GET /admin/engine`, polled by HTMX; the page works without it)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cumulo.api.admin.service import route_view
from cumulo.api.openai.service import render_model
from cumulo.console.core import Console, Ctx
from cumulo.console.pages import ADMIN, EVERYONE, Page

PAGE = Page("/models", "Models", EVERYONE)
ENGINE = Page("/models/engine", "Engine", ADMIN)


def routes(console: Console) -> list[Route]:
    platform = console.platform

    def engine_stats() -> list[dict[str, Any]]:
        out = []
        for route in platform.router.routes.values():
            for d in route.deployments:
                stats = d.provider.stats()
                if stats is not None:
                    out.append({"model": route.config.name, "deployment": d.label, **stats})
        return out

    async def models(request: Request, ctx: Ctx) -> Response:
        catalog = [
            render_model(e.config, e.ready, e.load_error)
            for e in platform.catalog.entries()
            if ctx.is_admin or platform.catalog.may_use(ctx.who, e.name)
        ]
        routing = [route_view(r) for r in platform.router.routes.values()] if ctx.is_admin else []
        return console.render(
            request,
            ctx,
            "models.html",
            {
                "catalog": catalog,
                "routing": routing,
                "engines": engine_stats() if ctx.is_admin else [],
            },
        )

    async def engine(request: Request, ctx: Ctx) -> Response:
        return console.render(request, ctx, "_engine.html", {"engines": engine_stats()})

    return [
        Route("/console/models", console.view(models, PAGE), methods=["GET"]),
        Route("/console/models/engine", console.view(engine, ENGINE), methods=["GET"]),
    ]
