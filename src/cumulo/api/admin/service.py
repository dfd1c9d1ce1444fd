"""Admin endpoints: keys (create, list, revoke, rotate), usage summaries, deployments' routing
and engine state.

Handlers parse, authorize (`access`) and render; the operations are governance's
(`identity.key_service`, which appends every change to the audit ledger). Errors use the
OpenAI error shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.admin import access
from cumulo.api.admin.bounds import query_bool, query_time, renderable
from cumulo.api.admin.protocol import CreateKey, RotateKey
from cumulo.api.http import OPENAI, JSONResponse, read_body
from cumulo.errors import NotFound
from cumulo.governance.guardrails import Guardrail
from cumulo.governance.identity.auth import Authenticator, Principal
from cumulo.governance.identity.key_service import KeyService
from cumulo.governance.telemetry.usage import UsageRecorder
from cumulo.routing.deployment import DeploymentState
from cumulo.routing.router import Route, Router
from cumulo.store.db import KeyRow

M = TypeVar("M", bound=BaseModel)


def _key_view(row: KeyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "tenant_id": row.tenant_id,
        "models": row.models,
        "limits": row.limits,
        "budget": row.budget,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "revoked_at": row.revoked_at,
        "last_used_at": row.last_used_at,
    }


def parse(model: type[M], body: bytes) -> M:
    """A wire model from a JSON body (none: `{}`), or a 400 naming the field."""
    return OPENAI.parse(model.model_validate_json, body or b"{}")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def deployment_view(d: DeploymentState) -> dict[str, Any]:
    dep = d.provider.deployment
    price = None
    if d.price is not None:
        price = {
            "input_per_mtok": d.price.input_per_mtok,
            "output_per_mtok": d.price.output_per_mtok,
            "source": d.price.source,
        }
    return {
        "label": d.label,
        "provider": dep.provider,
        "upstream_model": dep.model or dep.path,
        "state": d.breaker.state,
        "opened_count": d.breaker.opened_count,
        "in_flight": d.in_flight,
        "requests": d.requests,
        "failures": d.failures,
        "latency_ewma_ms": _ms(d.latency_ewma),
        "ttft_ewma_ms": _ms(d.ttft_ewma),
        "price": price,
        "weight": dep.weight,
        "ready": d.ready,
    }


def route_view(route: Route) -> dict[str, Any]:
    routing = route.config.routing
    return {
        "model": route.config.name,
        "kind": route.config.kind,
        "strategy": routing.strategy,
        "fallbacks": list(route.config.fallbacks),
        "context_window": route.config.context_window,
        "deployments": [deployment_view(d) for d in route.deployments],
    }


async def key_in_scope(keys: KeyService, who: Principal, key_id: str) -> KeyRow:
    """An active key `who` may manage (another tenant's: not found, as if it did not exist)."""
    row = await keys.active(key_id)
    if row is None or not access.owns(who, row.tenant_id):
        raise NotFound(f"No active key with id '{key_id}'.", param="id", code="key_not_found")
    return row


class AdminService:
    def __init__(
        self,
        auth: Authenticator,
        keys: KeyService,
        usage: UsageRecorder,
        guardrails: Mapping[str, Guardrail],
        router: Router,
    ) -> None:
        self.auth = auth
        self.keys = keys
        self.usage_records = usage
        self.guardrail_set = guardrails
        self.router = router

    async def _key_in_scope(self, who: Principal, key_id: str) -> KeyRow:
        return await key_in_scope(self.keys, who, key_id)

    async def create_key(self, request: Request) -> Response:
        """POST /admin/keys: the secret is in this response and nowhere else, ever.

        A tenant admin creates keys in its own tenant only, never `admin` ones; a key's
        `models` must be within its tenant's.
        """
        who = await access.manager(self.auth, request)
        spec = parse(CreateKey, await read_body(request, 64 * 1024))
        tenant_id = access.scope(who, spec.tenant_id)
        access.require_may_issue(who, spec.role, tenant_id)
        row, token = await self.keys.create(
            who.key_id,
            spec.name,
            spec.role,
            tenant_id=tenant_id,
            models=spec.models,
            limits=spec.limits.model_dump() if spec.limits else None,
            budget=spec.budget.model_dump() if spec.budget else None,
        )
        return JSONResponse({**renderable(_key_view(row), "key"), "key": token}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        """GET /admin/keys[?include_revoked=true][&tenant_id=...]."""
        who = await access.manager(self.auth, request)
        tenant_id = access.scope(who, request.query_params.get("tenant_id"))
        revoked = query_bool(request, "include_revoked")
        rows = await self.keys.find(include_revoked=revoked, tenant_id=tenant_id)
        data = [renderable(_key_view(r), "key") for r in rows]
        return JSONResponse({"object": "list", "data": data})

    async def revoke_key(self, request: Request) -> Response:
        """DELETE /admin/keys/{id}."""
        who = await access.manager(self.auth, request)
        key_id = request.path_params["key_id"]
        row = await self._key_in_scope(who, key_id)
        await self.keys.revoke(who.key_id, row)
        return JSONResponse({"id": key_id, "revoked": True})

    async def rotate_key(self, request: Request) -> Response:
        """POST /admin/keys/{id}/rotate {"grace_s": 86400}: a new key with the same name,
        tenant, role and scopes; the old one keeps working for `grace_s` seconds
        (`KeyService.rotate`)."""
        who = await access.manager(self.auth, request)
        old = await self._key_in_scope(who, request.path_params["key_id"])
        spec = parse(RotateKey, await read_body(request, 64 * 1024))
        if old.role == "admin" and not who.is_admin:
            raise NotFound(f"No active key with id '{old.id}'.", param="id", code="key_not_found")
        row, token, expires = await self.keys.rotate(who.key_id, old, spec.grace_s)
        body = {**renderable(_key_view(row), "key"), "key": token, "replaces": old.id}
        body["old_expires_at"] = expires
        return JSONResponse(body, status_code=201)

    async def usage(self, request: Request) -> Response:
        """GET /admin/usage[?since=<unix seconds>][&tenant_id=...]: totals per key, model and
        tenant (a tenant admin sees its own tenant's only)."""
        who = await access.manager(self.auth, request)
        tenant_id = access.scope(who, request.query_params.get("tenant_id"))
        since = query_time(request, "since")
        return JSONResponse(await self.usage_records.summary(since, tenant_id))

    async def guardrails(self, request: Request) -> Response:
        """GET /admin/guardrails: every configured guardrail with its id and policies."""
        await access.manager(self.auth, request)
        data = [g.describe() for g in self.guardrail_set.values()]
        return JSONResponse({"object": "list", "data": data})

    async def deployments(self, request: Request) -> Response:
        """GET /admin/deployments: each model's routing and its deployments' live state.

        The state is this process's: with `--workers N` each worker routes on its own.
        """
        await access.admin(self.auth, request)
        data = [route_view(r) for r in self.router.routes.values()]
        return JSONResponse({"object": "list", "data": data})

    async def engine(self, request: Request) -> Response:
        """GET /admin/engine: each deployment's serving engine in this process, for the
        providers that run one (`Provider.stats`: local chat models, vLLM replicas).

        Per local deployment: running and waiting requests, slots and queue capacity, KV
        cache size, tokens in flight, total tokens and requests, recent tokens/s and the p50
        of recent queue times and times to first token (ms). Per vLLM replica: its state,
        process, port and restarts, and the figures of its own /metrics (running, waiting,
        KV cache usage, prompt and generation tokens).
        """
        await access.admin(self.auth, request)
        data = []
        seen: set[int] = set()  # a deployment serving several models (LoRA adapters): once
        for route in self.router.routes.values():
            for d in route.deployments:
                if id(d.provider) in seen:
                    continue
                seen.add(id(d.provider))
                stats = d.provider.stats()
                if stats is not None:
                    data.append({"model": route.config.name, "deployment": d.label, **stats})
        return JSONResponse({"object": "list", "data": data})
