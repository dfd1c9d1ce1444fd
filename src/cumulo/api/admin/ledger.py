"""Admin endpoints for the audit ledger (platform admins only).

    GET /admin/ledger         ?before_seq ?after_seq ?tenant_id ?action ?limit
    GET /admin/ledger/verify
    POST /admin/ledger/acknowledge  {"seq", "reason"}

The listing is newest first (the next page is `before_seq=<last seq>`), or oldest first
from `after_seq` when that is given: `{"object": "list", "data": [entry...], "has_more"}`.
Each entry: seq, ts, actor (key id), action, target, tenant_id, data, prev_hash, hash.

Verification walks the whole chain and answers 200 either way:
`{"ok", "entries_checked", "head": {"seq", "hash"} | null, "first_bad": {"seq", "reason",
"detail"} | null, "warnings": [...], "unacknowledged_repairs": [seq...]}`, reasons as in
`cumulo.governance.audit.ledger`. A repair of the chain fails verification (reason `repaired`)
until an admin acknowledges it: `POST /admin/ledger/acknowledge` with the seq verification
names and a reason appends a `ledger.acknowledged` entry (201, the entry); 400 if there is
nothing to acknowledge at that seq. Every endpoint first writes the entries this process
still has queued.
Errors use the OpenAI error shape, as the rest of the admin API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cumulo.api.admin.bounds import INT64_MAX, query_int, renderable
from cumulo.api.http import OPENAI, JSONResponse, error_response, guarded, read_body
from cumulo.errors import InvalidRequest
from cumulo.governance.audit.ledger import MAX_REASON, Ledger, NotAcknowledgeable

MAX_LIMIT = 1000


class Actor(Protocol):
    @property
    def key_id(self) -> str: ...


# Raises (AuthenticationFailed, PermissionDenied) unless the request comes from an admin.
RequireAdmin = Callable[[Request], Awaitable[Actor]]


class Acknowledge(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(
        ge=1, le=INT64_MAX, description="The entry verification names (a repair, or the end)."
    )
    reason: str = Field(
        min_length=1, max_length=MAX_REASON, description="Why it is accepted, for the record."
    )


def ledger_routes(ledger: Ledger, require_admin: RequireAdmin) -> list[Route]:
    """The routes, for the integrator to mount."""
    service = LedgerService(ledger, require_admin)
    return [
        Route("/admin/ledger", guarded(service.list, error_response), methods=["GET"]),
        Route("/admin/ledger/verify", guarded(service.verify, error_response), methods=["GET"]),
        Route(
            "/admin/ledger/acknowledge",
            guarded(service.acknowledge, error_response),
            methods=["POST"],
        ),
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

    async def acknowledge(self, request: Request) -> Response:
        """POST /admin/ledger/acknowledge: accept a repair (or a problem at the chain's end),
        recorded as a `ledger.acknowledged` entry by this admin."""
        who = await self.require_admin(request)
        spec = OPENAI.parse(Acknowledge.model_validate_json, await read_body(request, 64 * 1024))
        try:
            entry = await self.ledger.acknowledge(who.key_id, spec.seq, spec.reason)
        except NotAcknowledgeable as exc:
            raise InvalidRequest(
                f"Nothing to acknowledge: {exc}.", param="seq", code="nothing_to_acknowledge"
            ) from exc
        return JSONResponse(entry.as_dict(), status_code=201)
