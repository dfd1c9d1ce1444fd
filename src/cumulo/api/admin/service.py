"""Admin endpoints: keys (create, list, revoke, rotate), usage summaries, deployments' routing
and engine state.

Who may call what is in `access`; every change is appended to the audit ledger. Errors use
the OpenAI error shape.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.admin import access
from cumulo.api.admin.bounds import query_bool, query_time, renderable
from cumulo.api.admin.protocol import CreateKey, RotateKey
from cumulo.api.http import JSONResponse, read_body
from cumulo.api.openai.service import parse_body
from cumulo.errors import InvalidRequest, NotFound, PermissionDenied
from cumulo.governance.identity import keys
from cumulo.governance.identity.auth import Principal
from cumulo.platform import Platform
from cumulo.providers.local import LocalProvider
from cumulo.routing.deployment import DeploymentState
from cumulo.routing.router import Route
from cumulo.store.db import KeyReplaced, KeyRow

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
    return parse_body(model, body or b"{}")


def check_models(platform: Platform, models: list[str] | None, param: str = "models") -> None:
    """Every name in `models` is a configured model (400 naming the first that is not)."""
    for i, name in enumerate(models or ()):
        if platform.config.model(name) is None:
            raise InvalidRequest(
                f"Unknown model '{name}' in '{param}'.",
                param=f"{param}.{i}",
                code="model_not_found",
            )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _deployment_view(d: DeploymentState) -> dict[str, Any]:
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


def _route_view(route: Route) -> dict[str, Any]:
    routing = route.config.routing
    return {
        "model": route.config.name,
        "kind": route.config.kind,
        "strategy": routing.strategy,
        "fallbacks": list(route.config.fallbacks),
        "context_window": route.config.context_window,
        "deployments": [_deployment_view(d) for d in route.deployments],
    }


def _already_rotated(key_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"The key '{key_id}' was already rotated; rotate its successor instead.",
        param="id",
        code="key_already_rotated",
    )


class AdminService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.store = platform.store
        self.auth = platform.auth

    async def _key_in_scope(self, who: Principal, key_id: str) -> KeyRow:
        row = await self.store.get_key(key_id)
        if row is None or row.revoked_at is not None or not access.owns(who, row.tenant_id):
            raise NotFound(f"No active key with id '{key_id}'.", param="id", code="key_not_found")
        return row

    async def create_key(self, request: Request) -> Response:
        """POST /admin/keys: the secret is in this response and nowhere else, ever.

        A tenant admin creates keys in its own tenant only, never `admin` ones; a key's
        `models` must be within its tenant's.
        """
        who = await access.manager(self.auth, request)
        spec = parse(CreateKey, await read_body(request, 64 * 1024))
        tenant_id = access.scope(who, spec.tenant_id)
        if spec.role == "admin" and (not who.is_admin or tenant_id is not None):
            raise PermissionDenied(
                "Only a platform admin creates admin keys, and they belong to no tenant.",
                param="role",
                code="role_not_allowed",
            )
        if spec.role == "tenant_admin" and tenant_id is None:
            raise InvalidRequest(
                "A tenant admin key needs a tenant.", param="tenant_id", code="tenant_required"
            )
        check_models(self.platform, spec.models)
        if tenant_id is not None:
            tenant = await self.store.get_tenant(tenant_id)
            if tenant is None:
                raise NotFound(
                    f"No tenant with id '{tenant_id}'.", param="tenant_id", code="not_found"
                )
            outside = sorted(set(spec.models or ()) - set(tenant.models or spec.models or ()))
            if outside:
                raise InvalidRequest(
                    f"The tenant may not use {', '.join(repr(m) for m in outside)}.",
                    param="models",
                    code="model_not_allowed",
                )
        row = await self._issue(
            who,
            spec.name,
            spec.role,
            tenant_id=tenant_id,
            models=spec.models,
            limits=spec.limits.model_dump() if spec.limits else None,
            budget=spec.budget.model_dump() if spec.budget else None,
        )
        return JSONResponse(
            {**renderable(_key_view(row[0]), "key"), "key": row[1]}, status_code=201
        )

    async def _issue(
        self,
        who: Principal,
        name: str,
        role: str,
        *,
        tenant_id: str | None,
        models: list[str] | None,
        limits: dict[str, Any] | None,
        budget: dict[str, Any] | None,
        replaces: tuple[str, float] | None = None,
    ) -> tuple[KeyRow, str]:
        new = keys.generate()
        sealed = self.platform.master_key.encrypt(new.id, new.secret)  # for SigV4 (bedrock)
        row = await self.store.add_key(
            new.id,
            name,
            role,
            keys.hash_secret(new.secret),
            sealed,
            tenant_id=tenant_id,
            models=models,
            limits=limits,
            budget=budget,
            expire_key=replaces,
        )
        self.auth.add(row)
        data: dict[str, Any] = {"name": name, "role": role, "models": models}
        data |= {"limits": limits, "budget": budget}
        if replaces is None:
            await self.platform.audit(who, "key.create", new.id, tenant_id, data)
        else:
            data |= {"replaces": replaces[0], "old_expires_at": replaces[1]}
            await self.platform.audit(who, "key.rotate", new.id, tenant_id, data)
        return row, new.token

    async def list_keys(self, request: Request) -> Response:
        """GET /admin/keys[?include_revoked=true][&tenant_id=...]."""
        who = await access.manager(self.auth, request)
        tenant_id = access.scope(who, request.query_params.get("tenant_id"))
        revoked = query_bool(request, "include_revoked")
        rows = await self.store.list_keys(include_revoked=revoked, tenant_id=tenant_id)
        data = [renderable(_key_view(r), "key") for r in rows]
        return JSONResponse({"object": "list", "data": data})

    async def revoke_key(self, request: Request) -> Response:
        """DELETE /admin/keys/{id}."""
        who = await access.manager(self.auth, request)
        key_id = request.path_params["key_id"]
        row = await self._key_in_scope(who, key_id)
        if not await self.store.revoke_key(key_id):
            raise NotFound(f"No active key with id '{key_id}'.", param="id", code="key_not_found")
        self.auth.remove(key_id)
        await self.platform.audit(who, "key.revoke", key_id, row.tenant_id, {"name": row.name})
        return JSONResponse({"id": key_id, "revoked": True})

    async def rotate_key(self, request: Request) -> Response:
        """POST /admin/keys/{id}/rotate {"grace_s": 86400}: a new key with the same name,
        tenant, role and scopes; the old one keeps working for `grace_s` seconds.

        A key is rotated once: a key already replaced (still in its grace period) is a
        400, and one expired or revoked is not found, so one key never has two live
        successors."""
        who = await access.manager(self.auth, request)
        old = await self._key_in_scope(who, request.path_params["key_id"])
        spec = parse(RotateKey, await read_body(request, 64 * 1024))
        if old.role == "admin" and not who.is_admin:
            raise NotFound(f"No active key with id '{old.id}'.", param="id", code="key_not_found")
        now = time.time()
        if old.expires_at is not None and old.expires_at <= now:
            raise NotFound(f"No active key with id '{old.id}'.", param="id", code="key_not_found")
        if old.expires_at is not None:
            raise _already_rotated(old.id)
        expires = now + spec.grace_s
        try:
            row, token = await self._issue(
                who,
                old.name,
                old.role,
                tenant_id=old.tenant_id,
                models=old.models,
                limits=old.limits,
                budget=old.budget,
                replaces=(old.id, expires),
            )
        except KeyReplaced as exc:  # another rotation (or a revocation) got there first
            raise _already_rotated(old.id) from exc
        self.auth.add(dataclasses.replace(old, expires_at=expires))
        body = {**renderable(_key_view(row), "key"), "key": token, "replaces": old.id}
        body["old_expires_at"] = expires
        return JSONResponse(body, status_code=201)

    async def usage(self, request: Request) -> Response:
        """GET /admin/usage[?since=<unix seconds>][&tenant_id=...]: totals per key, model and
        tenant (a tenant admin sees its own tenant's only)."""
        who = await access.manager(self.auth, request)
        tenant_id = access.scope(who, request.query_params.get("tenant_id"))
        since = query_time(request, "since")
        await self.platform.usage.flush()
        return JSONResponse(await self.store.usage_summary(since, tenant_id))

    async def guardrails(self, request: Request) -> Response:
        """GET /admin/guardrails: every configured guardrail with its id and policies."""
        await access.manager(self.auth, request)
        data = [g.describe() for g in self.platform.guardrails.values()]
        return JSONResponse({"object": "list", "data": data})

    async def deployments(self, request: Request) -> Response:
        """GET /admin/deployments: each model's routing and its deployments' live state.

        The state is this process's: with `--workers N` each worker routes on its own.
        """
        await access.admin(self.auth, request)
        router = self.platform.router
        assert router is not None, "Platform.start() was not called"
        data = [_route_view(r) for r in router.routes.values()]
        return JSONResponse({"object": "list", "data": data})

    async def engine(self, request: Request) -> Response:
        """GET /admin/engine: each local chat deployment's batching engine, in this process.

        Per deployment: running and waiting requests, slots and queue capacity, KV cache
        size, tokens in flight, total tokens and requests, recent tokens/s and the p50 of
        recent queue times and times to first token (ms).
        """
        await access.admin(self.auth, request)
        router = self.platform.router
        assert router is not None, "Platform.start() was not called"
        data = []
        for route in router.routes.values():
            for d in route.deployments:
                if isinstance(d.provider, LocalProvider) and d.provider.kind == "chat":
                    stats = d.provider.engine_stats()
                    data.append(
                        {
                            "model": route.config.name,
                            "deployment": d.label,
                            "loaded": stats is not None,
                            **(stats.as_dict() if stats is not None else {}),
                        }
                    )
        return JSONResponse({"object": "list", "data": data})
