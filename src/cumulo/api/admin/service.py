"""Admin endpoints: keys (create, list, revoke), usage summaries, deployments' routing state.

Every endpoint needs an admin key; errors use the OpenAI error shape.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from cumulo.api.admin.protocol import CreateKey
from cumulo.api.http import JSONResponse, read_body
from cumulo.api.openai.service import validation_error
from cumulo.errors import InvalidRequest, NotFound
from cumulo.governance import keys
from cumulo.governance.auth import Principal
from cumulo.platform import Platform
from cumulo.providers.local import LocalProvider
from cumulo.routing.router import DeploymentState, Route
from cumulo.store.db import KeyRow


def _key_view(row: KeyRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "role": row.role,
        "created_at": row.created_at,
        "revoked_at": row.revoked_at,
        "last_used_at": row.last_used_at,
    }


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


class AdminService:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.store = platform.store
        self.auth = platform.auth

    async def _admin(self, request: Request) -> Principal:
        who = await self.auth.authenticate(request.headers.get("authorization"))
        self.auth.require_admin(who)
        return who

    async def create_key(self, request: Request) -> Response:
        """POST /admin/keys: the secret is in this response and nowhere else, ever."""
        await self._admin(request)
        body = await read_body(request, 64 * 1024)
        try:
            spec = CreateKey.model_validate_json(body or b"{}")
        except ValidationError as exc:
            raise validation_error(exc) from exc
        new = keys.generate()
        sealed = self.platform.master_key.encrypt(new.id, new.secret)  # for SigV4 (bedrock)
        row = await self.store.add_key(
            new.id, spec.name, spec.role, keys.hash_secret(new.secret), sealed
        )
        self.auth.add(row)
        return JSONResponse({**_key_view(row), "key": new.token}, status_code=201)

    async def list_keys(self, request: Request) -> Response:
        """GET /admin/keys[?include_revoked=true]."""
        await self._admin(request)
        revoked = request.query_params.get("include_revoked", "false").lower() in ("1", "true")
        rows = await self.store.list_keys(include_revoked=revoked)
        return JSONResponse({"object": "list", "data": [_key_view(r) for r in rows]})

    async def revoke_key(self, request: Request) -> Response:
        """DELETE /admin/keys/{id}."""
        await self._admin(request)
        key_id = request.path_params["key_id"]
        if not await self.store.revoke_key(key_id):
            raise NotFound(f"No active key with id '{key_id}'.", param="id", code="key_not_found")
        self.auth.remove(key_id)
        return JSONResponse({"id": key_id, "revoked": True})

    async def usage(self, request: Request) -> Response:
        """GET /admin/usage[?since=<unix seconds>]: totals per key and per model."""
        await self._admin(request)
        since_raw = request.query_params.get("since")
        try:
            since = float(since_raw) if since_raw else None
        except ValueError as exc:
            raise InvalidRequest("'since' must be a Unix time in seconds.", param="since") from exc
        await self.platform.usage.flush()
        return JSONResponse(await self.store.usage_summary(since))

    async def deployments(self, request: Request) -> Response:
        """GET /admin/deployments: each model's routing and its deployments' live state.

        The state is this process's: with `--workers N` each worker routes on its own.
        """
        await self._admin(request)
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
        await self._admin(request)
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
