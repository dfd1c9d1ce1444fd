"""Admin endpoints for the audit ledger (platform admins only).

    GET /admin/ledger         ?before_seq ?after_seq ?tenant_id ?action ?limit
    GET /admin/ledger/verify

The listing is newest first (the next page is `before_seq=<last seq>`), or oldest first
from `after_seq` when that is given: `{"object": "list", "data": [entry...], "has_more"}`.
Each entry: seq, ts, actor (key id), action, target, tenant_id, data, prev_hash, hash.

Verification walks the whole chain and answers 200 either way:
`{"ok", "entries_checked", "head": {"seq", "hash"} | null, "first_bad": {"seq", "reason",
"detail"} | null, "warnings": [...]}`, reasons as in `cumulo.governance.ledger`. Both
endpoints first write the entries this process still has queued.
Errors use the OpenAI error shape, as the rest of the admin API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cumulo.api.admin.bounds import query_int, renderable
from cumulo.api.http import JSONResponse, guarded
from cumulo.api.openai.service import error_response
from cumulo.governance.ledger import Ledger

MAX_LIMIT = 1000

# Raises (AuthenticationFailed, PermissionDenied) unless the request comes from an admin.
RequireAdmin = Callable[[Request], Awaitable[object]]


class HasLedger(Protocol):
    @property
    def ledger(self) -> Ledger: ...


def ledger_routes(source: Ledger | HasLedger, require_admin: RequireAdmin) -> list[Route]:
    """The routes, for the integrator to mount: `source` is the Ledger or the Platform."""
    service = LedgerService(source if isinstance(source, Ledger) else source.ledger, require_admin)
    return [
        Route("/admin/ledger", guarded(service.list, error_response), methods=["GET"]),
        Route("/admin/ledger/verify", guarded(service.verify, error_response), methods=["GET"]),
    ]


class LedgerService:
    def __init__(self, ledger: Ledger, require_admin: RequireAdmin) -> None:
        self.ledger = ledger
        self.require_admin = require_admin

    async def list(self, request: Request) -> Response:
        """GET /admin/ledger: entries, newest first (or oldest first from `after_seq`)."""
        await self.require_admin(request)
        q = request.query_params
        limit = query_int(request, "limit", 1, MAX_LIMIT) or 100
        await self.ledger.flush()
        found = await self.ledger.entries(
            after_seq=query_int(request, "after_seq"),
            before_seq=query_int(request, "before_seq"),
            tenant_id=q.get("tenant_id") or None,
            action=q.get("action") or None,
            limit=limit + 1,
        )
        data = [renderable(e.as_dict(), "ledger entry") for e in found[:limit]]
        return JSONResponse({"object": "list", "data": data, "has_more": len(found) > limit})

    async def verify(self, request: Request) -> Response:
        """GET /admin/ledger/verify: check the whole chain; name the first bad entry."""
        await self.require_admin(request)
        result = await self.ledger.verify()
        return JSONResponse(result.as_dict())
