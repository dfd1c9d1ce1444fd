"""Routes of the admin API."""

from __future__ import annotations

from starlette.routing import Route

from cumulo.api.admin.service import AdminService
from cumulo.api.http import guarded
from cumulo.api.openai.service import error_response


def routes(service: AdminService) -> list[Route]:
    return [
        Route("/admin/keys", guarded(service.create_key, error_response), methods=["POST"]),
        Route("/admin/keys", guarded(service.list_keys, error_response), methods=["GET"]),
        Route(
            "/admin/keys/{key_id}", guarded(service.revoke_key, error_response), methods=["DELETE"]
        ),
        Route("/admin/usage", guarded(service.usage, error_response), methods=["GET"]),
        Route("/admin/engine", guarded(service.engine, error_response), methods=["GET"]),
        Route("/admin/deployments", guarded(service.deployments, error_response), methods=["GET"]),
    ]
