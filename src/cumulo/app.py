"""Assembles the ASGI app: front doors, admin API, health and metrics over one Platform."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from cumulo.api.admin import access
from cumulo.api.admin.alerts import routes as alert_routes
from cumulo.api.admin.ledger import ledger_routes
from cumulo.api.admin.router import routes as admin_routes
from cumulo.api.admin.service import AdminService
from cumulo.api.admin.tenants import TenantAdmin
from cumulo.api.anthropic.router import routes as anthropic_routes
from cumulo.api.anthropic.service import AnthropicService
from cumulo.api.batches import BatchService
from cumulo.api.batches import routes as batch_routes
from cumulo.api.bedrock.guardrail import bedrock_authenticator, guardrail_routes
from cumulo.api.bedrock.router import routes as bedrock_routes
from cumulo.api.bedrock.service import BedrockService
from cumulo.api.evals import EvalService
from cumulo.api.evals import routes as eval_routes
from cumulo.api.files import FilesService
from cumulo.api.files import routes as file_routes
from cumulo.api.fine_tuning import FineTuningService
from cumulo.api.fine_tuning import routes as fine_tuning_routes
from cumulo.api.http import DisconnectWatch, Handler, JSONResponse, error_response
from cumulo.api.openai.router import routes as openai_routes
from cumulo.api.openai.service import OpenAIService
from cumulo.config import Config, load_config
from cumulo.console import console_routes
from cumulo.errors import CumuloError, NotFound
from cumulo.jobs.finetune.serving import TunedModels
from cumulo.jobs.setup import job_runner
from cumulo.platform import Platform
from cumulo.store.evals import EvalTable
from cumulo.store.jobs import JobTable

log = logging.getLogger(__name__)

# What the HTTP server (`cumulo.server`) reads of the app, from the ASGI lifespan state:
# the `server:` settings (its protection of itself) and the requests in flight (a
# shutdown out of time ends them).
SERVER_CONFIG = "cumulo.server_config"
IN_FLIGHT = "cumulo.in_flight"


class HotPaths:
    """ASGI entry: the hot POST endpoints straight from the scope's path.

    Starlette's middleware stack and router cost tens of microseconds a
    request; the chat, embeddings and messages endpoints are reached by exact
    (method, path) instead. Their handlers are the same `guarded` endpoints,
    so errors are rendered exactly as through the router. Everything else
    (lifespan, admin, health, 404/405) goes through Starlette.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state
        self.endpoints: dict[tuple[str, str], Handler] = {}

    def add(self, routes: list[Route]) -> None:
        for r in routes:
            if r.methods and "{" not in r.path:
                for method in r.methods:
                    if method == "POST":
                        self.endpoints[(method, r.path)] = r.endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.endpoints.get((scope["method"], scope["path"]))
            if endpoint is not None:
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class StopOnModelFailure:
    """Stops the server process when a model not marked `optional` cannot load.

    Models load after the server has started (so health checks answer meanwhile); once
    they are done, a failure is logged and the process asks itself to shut down gracefully
    (SIGTERM, as an orchestrator would), then exits with status 3 once the platform is
    closed. uvicorn offers an app no other way to end its process with an error; 3 is its
    own startup-failure status, which also stops a `--workers N` parent from restarting
    the worker over and over.
    """

    EXIT_STATUS = 3

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.failed = False
        self._task = asyncio.create_task(self._watch(), name="cumulo-model-watch")

    async def _watch(self) -> None:
        await self.platform.models_loaded()
        failures = self.platform.models.failures(required=True)
        for name in failures:  # the catalog has logged why
            log.error(
                "stopping: the model %r cannot load. Fix it, or mark the model "
                "`optional: true` to serve without it.",
                name,
            )
        if failures:
            self.failed = True
            signal.raise_signal(signal.SIGTERM)

    async def close(self) -> None:
        """After the platform closed: end the process if a model failed."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self.failed:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self.EXIT_STATUS)


def create_app(
    config: Config | None = None, home: Path | None = None, stop_on_model_failure: bool = False
) -> HotPaths:
    """The app for `config` (default: `CUMULO_CONFIG` or the embedded default).

    With `stop_on_model_failure` (`cumulo serve`), a model that cannot load ends the
    process (`StopOnModelFailure`).
    """
    platform = Platform(config or load_config(), home)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, object]]:
        await platform.store.migrate()
        await platform.start()
        stopper = StopOnModelFailure(platform) if stop_on_model_failure else None
        gateway = platform.gateway
        in_flight = gateway.in_flight
        disconnects = DisconnectWatch(in_flight=in_flight)
        # Jobs (batches) run here unless only `cumulo worker` processes should run them.
        runner = job_runner(platform, gateway) if platform.config.jobs.run_in_server else None
        batches = BatchService(
            platform.auth, platform.files, JobTable(platform.store), platform.ledger, runner
        )
        evals = EvalService(
            platform.auth,
            platform.files,
            EvalTable(platform.store),
            JobTable(platform.store),
            platform.ledger,
            runner,
        )
        fine_tuning = FineTuningService(
            platform.auth,
            platform.files,
            JobTable(platform.store),
            platform.ledger,
            platform.config,
            platform.home,
            runner,
            platform.governance,
            platform.guarding,
        )
        limits = platform.config.server
        routes = [
            *openai_routes(
                OpenAIService(platform.auth, gateway, platform.models, limits, disconnects)
            ),
            *bedrock_routes(BedrockService(platform.auth, gateway, limits, disconnects)),
            *anthropic_routes(AnthropicService(platform.auth, gateway, limits, disconnects)),
            *batch_routes(batches),
            *eval_routes(evals),
            *fine_tuning_routes(fine_tuning),
            *admin_routes(
                AdminService(
                    platform.auth,
                    platform.keys,
                    platform.usage,
                    platform.guardrails,
                    platform.router,
                ),
                TenantAdmin(platform.auth, platform.tenants),
            ),
            *ledger_routes(platform.ledger, lambda r: access.admin(platform.auth, r)),
            *file_routes(FilesService(platform.auth, platform.files)),
            *guardrail_routes(
                platform.guardrails,
                bedrock_authenticator(platform.auth, platform.config.server.max_body_bytes),
                platform.guardrail_applied,
                may_apply=platform.guarding.may_apply,
            ),
            *alert_routes(
                lambda r: access.principal(platform.auth, r), platform.alerts, platform.invocations
            ),
        ]
        app.router.routes.extend([*routes, *console_routes(platform, batches, evals, fine_tuning)])
        hot.add([r for r in routes if r.path.startswith("/v1/")])
        if runner is not None:
            runner.start()
        tuned = TunedModels(
            JobTable(platform.store), platform.catalog, platform.router, platform.home
        )
        syncing = asyncio.create_task(
            tuned.run(platform.config.jobs.poll_interval_s, platform.models_loaded),
            name="cumulo-tuned-models",
        )
        try:
            yield {SERVER_CONFIG: platform.config.server, IN_FLIGHT: in_flight}
        finally:
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncing
            if runner is not None:
                await runner.close()  # lines in flight are given back, results written
            await disconnects.close()
            await platform.close()
            if stopper is not None:
                await stopper.close()

    async def live(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        checks = await platform.readiness()
        ok = all(checks.values())
        body: dict[str, object] = {"status": "ok" if ok else "unavailable", "checks": checks}
        # Which models are not serving, and why.
        if failed := platform.catalog.failures():
            body["failed_models"] = failed
        if loading := platform.catalog.loading():
            body["loading_models"] = loading
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        """Prometheus exposition of this process's metrics (no key, like health)."""
        body, content_type = platform.metrics.render(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    async def to_console(request: Request) -> Response:
        """`/` is the web console."""
        return RedirectResponse("/console", status_code=307)

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
            Route("/", to_console),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error},
    )
    app.state.platform = platform
    hot = HotPaths(app)
    return hot


def create_app_from_env() -> HotPaths:
    """Factory for uvicorn workers: config from `CUMULO_CONFIG`, home from `CUMULO_HOME`."""
    return create_app(stop_on_model_failure=True)
