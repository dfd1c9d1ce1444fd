"""The web console at /console: server-rendered pages (Jinja2), HTMX for live parts,
vendored static assets (nothing fetched from the network). See `core.py` for sign-in,
roles and CSRF, `pages.py` and `views/` for the pages."""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from cumulo.api.batches import BatchService
from cumulo.api.evals import EvalService
from cumulo.api.fine_tuning import FineTuningService
from cumulo.console.core import Console
from cumulo.console.views import EXTRA, VIEWS
from cumulo.platform import Platform

__all__ = ["Console", "console_routes"]


def console_routes(
    platform: Platform,
    batches: BatchService | None = None,
    evals: EvalService | None = None,
    fine_tuning: FineTuningService | None = None,
) -> list[BaseRoute]:
    """Every console route, and its static files at /console/static. `batches`: the Batch
    API's operations, for the batches on the files page; `evals`: the Evals API's, for the
    evaluations page; `fine_tuning`: the Fine-tuning API's, for the fine-tuning page."""
    console = Console(platform, [v.PAGE for v in VIEWS], batches, evals, fine_tuning)
    routes: list[BaseRoute] = []
    for view in (*VIEWS, *EXTRA):
        routes.extend(view.routes(console))
    static = StaticFiles(directory=Path(__file__).parent / "static")
    routes.append(Mount("/console/static", static, name="console-static"))
    return routes
