"""SQL for the alerts and invocation_logs tables (migration 0007).

Each function takes the `Store` or its `AsyncEngine` and runs one statement in
its own transaction. None of them is called on the request path: writes come
from the background writers in `governance.telemetry.alerts` and `governance.audit.invocations`,
reads from the admin API.

Rows go in and come out as plain dicts keyed by column name. Listings are
newest first by id, i.e. in the order rows were stored (replicas flush every
second or so, so that is their time order within a second or two), and page
with `before_id` (the smallest id of the previous page).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from cumulo.store.db import Store, fit_to_columns
from cumulo.store.schema import alerts, invocation_logs

Engine = Store | AsyncEngine


def _engine(target: Engine) -> AsyncEngine:
    return target.engine if isinstance(target, Store) else target


async def _insert(target: Engine, table: Any, rows: Sequence[dict[str, Any]]) -> None:
    if not rows:
        return
    async with _engine(target).begin() as conn:
        await conn.execute(insert(table), list(fit_to_columns(table, rows)))


async def _select(target: Engine, query: Select[Any]) -> list[dict[str, Any]]:
    async with _engine(target).connect() as conn:
        return [dict(r) for r in (await conn.execute(query)).mappings().all()]


# -- alerts -------------------------------------------------------------------


async def insert_alerts(target: Engine, rows: Sequence[dict[str, Any]]) -> None:
    """Insert alert rows: ts, kind, severity, tenant_id, key_id, message, details."""
    await _insert(target, alerts, rows)


async def recent_alerts(
    target: Engine,
    *,
    tenant_id: str | None = None,
    since: float | None = None,
    kind: str | None = None,
    key_id: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Alerts newest first, optionally of one tenant, key or kind, since a Unix time."""
    where: list[ColumnElement[bool]] = []
    if tenant_id is not None:
        where.append(alerts.c.tenant_id == tenant_id)
    if since is not None:
        where.append(alerts.c.ts >= since)
    if kind is not None:
        where.append(alerts.c.kind == kind)
    if key_id is not None:
        where.append(alerts.c.key_id == key_id)
    if before_id is not None:
        where.append(alerts.c.id < before_id)
    query = select(alerts).where(*where).order_by(alerts.c.id.desc()).limit(limit)
    return await _select(target, query)


async def purge_alerts(target: Engine, before: float) -> int:
    """Delete alerts raised before a Unix time; the number deleted."""
    async with _engine(target).begin() as conn:
        res = await conn.execute(delete(alerts).where(alerts.c.ts < before))
    return int(res.rowcount)


# -- invocation logs ----------------------------------------------------------


async def insert_invocations(target: Engine, rows: Sequence[dict[str, Any]]) -> None:
    """Insert invocation rows: ts, tenant_id, key_id, endpoint, model, status,
    prompt_tokens, completion_tokens, request_json, response_text."""
    await _insert(target, invocation_logs, rows)


async def invocation_entries(
    target: Engine,
    *,
    tenant_id: str | None = None,
    key_id: str | None = None,
    model: str | None = None,
    since: float | None = None,
    until: float | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Logged invocations newest first, filtered by tenant, key, model and time."""
    t = invocation_logs.c
    where: list[ColumnElement[bool]] = []
    if tenant_id is not None:
        where.append(t.tenant_id == tenant_id)
    if key_id is not None:
        where.append(t.key_id == key_id)
    if model is not None:
        where.append(t.model == model)
    if since is not None:
        where.append(t.ts >= since)
    if until is not None:
        where.append(t.ts < until)
    if before_id is not None:
        where.append(t.id < before_id)
    query = select(invocation_logs).where(*where).order_by(t.id.desc()).limit(limit)
    return await _select(target, query)


async def invocation_tenants(target: Engine) -> list[str]:
    """The tenants that have logged invocations (what the purge walks through)."""
    query = select(invocation_logs.c.tenant_id).distinct()
    async with _engine(target).connect() as conn:
        return [r[0] for r in (await conn.execute(query)).all()]


async def purge_invocations(target: Engine, tenant_id: str, before: float) -> int:
    """Delete one tenant's invocations logged before a Unix time; the number deleted."""
    t = invocation_logs.c
    async with _engine(target).begin() as conn:
        res = await conn.execute(
            delete(invocation_logs).where(t.tenant_id == tenant_id, t.ts < before)
        )
    return int(res.rowcount)
