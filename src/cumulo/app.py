"""Assembles the ASGI app: front doors, admin API, health and metrics over one Platform."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cumulo.api.admin.router import routes as admin_routes
from cumulo.api.admin.service import AdminService
from cumulo.api.anthropic.router import routes as anthropic_routes
from cumulo.api.anthropic.service import AnthropicService
from cumulo.api.bedrock.router import routes as bedrock_routes
from cumulo.api.bedrock.service import BedrockService
from cumulo.api.http import JSONResponse
from cumulo.api.openai.router import routes as openai_routes
from cumulo.api.openai.service import OpenAIService, error_response
from cumulo.config import Config, load_config
from cumulo.errors import CumuloError, NotFound
from cumulo.gateway import Gateway
from cumulo.platform import Platform

log = logging.getLogger(__name__)


def create_app(config: Config | None = None, home: Path | None = None) -> Starlette:
    """The app for `config` (default: `CUMULO_CONFIG` or the embedded default)."""
    platform = Platform(config or load_config(), home)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await platform.store.migrate()
        await platform.start()
        assert platform.router is not None
        gateway = Gateway(platform.router, platform.usage, platform.metrics)
        app.router.routes.extend(openai_routes(OpenAIService(platform, gateway)))
        app.router.routes.extend(bedrock_routes(BedrockService(platform, gateway)))
        app.router.routes.extend(anthropic_routes(AnthropicService(platform, gateway)))
        app.router.routes.extend(admin_routes(AdminService(platform)))
        try:
            yield
        finally:
            await platform.close()

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        checks = await platform.readiness()
        ok = all(checks.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    async def metrics(request: Request) -> Response:
        """Prometheus exposition of this process's metrics (no key, like health)."""
        body, content_type = platform.metrics.render(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return error_response(NotFound(f"No route for {request.method} {request.url.path}."))
        err = CumuloError(str(exc.detail))
        err.status = exc.status_code
        err.type = "invalid_request_error"
        return error_response(err)

    app = Starlette(
        routes=[
            Route("/health/live", live),
            Route("/health/ready", ready),
            Route("/metrics", metrics),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    app.state.platform = platform
    return app


def create_app_from_env() -> Starlette:
    """Factory for uvicorn workers: config from `CUMULO_CONFIG`, home from `CUMULO_HOME`."""
    return create_app()
