"""Admin endpoints for alerts and logged invocations.

    GET /admin/alerts       ?tenant_id ?key_id ?kind ?since ?before_id ?limit
    GET /admin/invocations  ?tenant_id ?key_id ?model ?since ?until ?before_id ?limit

A platform admin sees every tenant's (or the one `tenant_id` names); a tenant
admin sees its own tenant's only (another tenant's id is answered 404, as in
`api/admin/access.py`); a caller key gets 403. Both answer `{"object": "list", "data": [...],
"has_more": bool}`, newest first; the next page is `before_id=<last id>`.
Errors use the OpenAI error shape, as the rest of the admin API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cumulo.api.admin import access
from cumulo.api.admin.bounds import query_int, query_time
from cumulo.api.http import JSONResponse, error_response, guarded
from cumulo.governance.audit.invocations import InvocationLog
from cumulo.governance.telemetry.alerts import AlertSink

MAX_LIMIT = 1000


Authenticate = Callable[[Request], Awaitable[access.Scoped]]


def routes(
    authenticate: Authenticate, alerts: AlertSink, invocations: InvocationLog
) -> list[Route]:
    """The routes, for the integrator to mount; `authenticate` raises on a bad key."""
    service = AlertsService(authenticate, alerts, invocations)
    return [
        Route("/admin/alerts", guarded(service.alerts, error_response), methods=["GET"]),
        Route("/admin/invocations", guarded(service.invocations, error_response), methods=["GET"]),
    ]


class AlertsService:
    def __init__(
        self, authenticate: Authenticate, alerts: AlertSink, invocations: InvocationLog
    ) -> None:
        self.authenticate = authenticate
        self.sink = alerts
        self.log = invocations

    async def _tenant_scope(self, request: Request) -> str | None:
        """The tenant the caller may see (None: all), narrowed by `?tenant_id`: the rules
        of every admin endpoint (`access`)."""
        who = await self.authenticate(request)
        access.require_manager(who)
        return access.scope(who, request.query_params.get("tenant_id") or None)

    async def alerts(self, request: Request) -> Response:
        """GET /admin/alerts: alerts raised by any replica, newest first."""
        tenant_id = await self._tenant_scope(request)
        q = request.query_params
        limit = _limit(request)
        found = await self.sink.recent(
            tenant_id,
            query_time(request, "since"),
            limit + 1,
            kind=q.get("kind") or None,
            key_id=q.get("key_id") or None,
            before_id=query_int(request, "before_id"),
        )
        return _page([a.as_dict() for a in found], limit)

    async def invocations(self, request: Request) -> Response:
        """GET /admin/invocations: logged prompts and responses, newest first."""
        tenant_id = await self._tenant_scope(request)
        q = request.query_params
        limit = _limit(request)
        found = await self.log.entries(
            tenant_id,
            key_id=q.get("key_id") or None,
            model=q.get("model") or None,
            since=query_time(request, "since"),
            until=query_time(request, "until"),
            before_id=query_int(request, "before_id"),
            limit=limit + 1,
        )
        return _page([e.as_dict() for e in found], limit)


def _page(data: list[dict[str, Any]], limit: int) -> Response:
    return JSONResponse({"object": "list", "data": data[:limit], "has_more": len(data) > limit})


def _limit(request: Request) -> int:
    limit = query_int(request, "limit", 1, MAX_LIMIT)
    return 100 if limit is None else limit
