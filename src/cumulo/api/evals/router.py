"""Routes of the Evals API."""

from __future__ import annotations

from starlette.routing import Route

from cumulo.api.evals.service import EvalService
from cumulo.api.http import Handler, error_response, guarded


def routes(service: EvalService) -> list[Route]:
    def route(path: str, handler: Handler, method: str) -> Route:
        return Route(path, guarded(handler, error_response), methods=[method])

    e, r = "/v1/evals/{eval_id}", "/v1/evals/{eval_id}/runs/{run_id}"
    return [
        route("/v1/evals", service.create, "POST"),
        route("/v1/evals", service.list_evals, "GET"),
        route(e, service.get, "GET"),
        route(e, service.update, "POST"),
        route(e, service.delete, "DELETE"),
        route(f"{e}/compare", service.compare, "GET"),
        route(f"{e}/report", service.report, "GET"),
        route(f"{e}/runs", service.create_run, "POST"),
        route(f"{e}/runs", service.list_runs, "GET"),
        route(r, service.get_run, "GET"),
        route(r, service.cancel_run, "POST"),
        route(r, service.delete_run, "DELETE"),
        route(f"{r}/output_items", service.list_items, "GET"),
        route(f"{r}/output_items/{{item_id}}", service.get_item, "GET"),
    ]
