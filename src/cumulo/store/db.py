"""The store: every read and write of persistent state goes through here.

Nothing here runs on the request path: keys are loaded into memory at start
and refreshed in the background, and usage is written in batches by the
usage recorder.

Every operation works on SQLite (the default, one file) and on PostgreSQL
(asyncpg; several replicas share one database). URLs: see `cumulo.store.url`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import String, Table, case, event, func, insert, select, text, update
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError, InvalidRequestError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from cumulo.errors import ConfigError, Unavailable
from cumulo.store.checkpoints import checkpoint_statements
from cumulo.store.outage import OutageHooks
from cumulo.store.schema import api_keys, tenants, usage
from cumulo.store.sqlite_rows import RowWriter
from cumulo.store.url import parse_url, safe_url

MIGRATIONS = Path(__file__).parent / "migrations"
# Serialises migrations of replicas starting at once on one PostgreSQL database
# (pg_advisory_xact_lock; released when the migration's transaction ends).
MIGRATION_LOCK = 0x63756D756C6F  # "cumulo"
# PostgreSQL connections per process: the store is used by background tasks and the
# admin API only, so a few suffice; pre-ping replaces connections the server closed.
PG_POOL = {"pool_size": 5, "max_overflow": 5, "pool_pre_ping": True, "pool_recycle": 1800}


class KeyReplaced(Exception):
    """The key to rotate was rotated or revoked already (its id is the argument)."""


@dataclass(slots=True, frozen=True)
class KeyRow:
    id: str
    name: str
    role: str
    secret_hash: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None
    secret_enc: str | None = None  # the secret under the master key (SigV4), since 0002
    tenant_id: str | None = None  # since 0005: None for platform admins and pre-0005 keys
    models: list[str] | None = None  # narrower than the tenant's (None: not narrowed)
    limits: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    expires_at: float | None = None  # set on the old key when it is rotated
    updated_at: float | None = None


@dataclass(slots=True, frozen=True)
class TenantRow:
    id: str
    name: str
    models: list[str] | None
    limits: dict[str, Any] | None
    budget: dict[str, Any] | None
    guardrails: list[str] | None
    log_invocations: bool
    log_retention_days: int | None
    created_at: float
    updated_at: float
    deleted_at: float | None


_TENANT_FIELDS = (
    "models",
    "limits",
    "budget",
    "guardrails",
    "log_invocations",
    "log_retention_days",
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@lru_cache(maxsize=16)
def _string_columns(table: Table, columns: tuple[str, ...]) -> tuple[tuple[str, int], ...]:
    """(column, its length or 0 if unbounded) of the string columns among `columns`."""
    out = []
    for name in columns:
        col = table.c.get(name)
        if col is not None and isinstance(col.type, String):
            out.append((name, col.type.length or 0))
    return tuple(out)


def fit_values(
    table: Table, columns: tuple[str, ...], values: Sequence[tuple[Any, ...]]
) -> Sequence[tuple[Any, ...]]:
    """`fit_to_columns` for rows given as tuples of `columns`."""
    out: list[tuple[Any, ...]] | None = None
    for name, length in _string_columns(table, columns):
        j = columns.index(name)
        # A batch repeats few distinct strings (models, keys, endpoints): check each once.
        distinct = {row[j] for row in values}
        if not any(_unfit(v, length) for v in distinct):
            continue
        out = out if out is not None else list(values)
        for i, row in enumerate(out):
            value = row[j]
            if _unfit(value, length):
                out[i] = (*row[:j], _fit(value, length), *row[j + 1 :])
    return values if out is None else out


def _unfit(value: str | None, length: int) -> bool:
    return value is not None and ((length > 0 and len(value) > length) or "\x00" in value)


def _fit(value: str, length: int) -> str:
    value = value.replace("\x00", "\ufffd")
    return value[:length] if length else value


def fit_to_columns(table: Table, rows: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
    """`rows` with strings made storable everywhere (rows sharing the first's keys).

    PostgreSQL refuses what SQLite stores: a value longer than its VARCHAR, or a NUL
    character. One such value, e.g. a model name a caller made up, would fail its
    whole batch; instead it is cut to the column's length and NUL becomes U+FFFD, the
    same on both. Rows that need nothing are returned as they are.
    """
    columns = _string_columns(table, tuple(rows[0])) if rows else ()
    out = list(rows)
    for i, row in enumerate(out):
        for name, length in columns:
            value = row[name]
            if value is not None and ((length and len(value) > length) or "\x00" in value):
                row = {**row, name: _fit(value, length)}
                out[i] = row
    return out


def _alembic_config(url: str | URL) -> AlembicConfig:
    """Alembic's config for cumulo's migrations on `url` (also for tests and tools)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    rendered = parse_url(url).render_as_string(hide_password=False)
    cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def _deleted_name(tenant_id: str) -> Any:
    """A deleted tenant's name: frees the name, and still fits the column on PostgreSQL."""
    suffix = "#deleted-" + tenant_id
    room = cast(String, tenants.c.name.type).length or 200
    return func.substr(tenants.c.name, 1, room - len(suffix)) + suffix


class Store:
    """The database at `url`: any form `cumulo.store.url.parse_url` accepts.

    Raises ConfigError if the URL is invalid or names a database cumulo cannot use.
    """

    def __init__(self, url: str | URL) -> None:
        self.url: URL = parse_url(url)
        options: dict[str, Any] = {}
        if self.url.get_backend_name() == "sqlite":
            path = self.url.database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        elif self.url.get_backend_name() == "postgresql":
            options = dict(PG_POOL)
            if self.url.get_driver_name() == "asyncpg":
                options["connect_args"] = {
                    "timeout": 10,
                    "server_settings": {"application_name": "cumulo"},
                }
        try:
            self.engine: AsyncEngine = create_async_engine(self.url, **options)
        except (NoSuchModuleError, InvalidRequestError, ImportError) as exc:
            raise ConfigError(
                f"database_url: cannot use {self.safe_url} ({exc}); "
                "use sqlite:///path or postgresql://user@host:5432/db"
            ) from exc
        # A lost database is `Unavailable` (503), whoever runs the statement (`outage`).
        OutageHooks(self.safe_url).install(self.engine.sync_engine)
        # Usage rows, the one write made under load, skip the async adapter (`sqlite_rows`).
        self._rows: RowWriter | None = None
        if self.engine.dialect.name == "sqlite":
            sync_engine: Engine = self.engine.sync_engine
            event.listen(sync_engine, "connect", _sqlite_pragmas)
            path = self.url.database
            if path and path != ":memory:":
                self._rows = RowWriter(path, lambda conn: _sqlite_pragmas(conn, None))

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages and logs."""
        return safe_url(self.url)

    def __repr__(self) -> str:
        return f"Store({self.safe_url})"

    async def close(self) -> None:
        if self._rows is not None:
            await self._rows.close()
        await self.engine.dispose()

    async def _connect(self) -> AsyncConnection:
        """A connection; Unavailable (naming the database, never its password) if none."""
        try:
            return await self.engine.connect()
        except (OSError, TimeoutError, DBAPIError, Unavailable) as exc:
            reason = exc.__cause__ if isinstance(exc, Unavailable) else exc
            reason = reason.orig if isinstance(reason, DBAPIError) else reason
            raise Unavailable(f"cannot connect to the database {self.safe_url}: {reason}") from exc

    async def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to `revision` (default: the newest migration).

        On PostgreSQL, replicas starting at once take turns (an advisory lock).
        """
        await self._alembic(command.upgrade, revision)

    async def downgrade(self, revision: str) -> None:
        """Downgrade the schema to `revision` (data in dropped columns is lost)."""
        await self._alembic(command.downgrade, revision)

    async def _alembic(self, step: Callable[[AlembicConfig, str], None], revision: str) -> None:
        cfg = _alembic_config(self.url)

        def run(sync_conn: Any) -> None:
            cfg.attributes["connection"] = sync_conn
            step(cfg, revision)

        conn = await self._connect()
        try:
            async with conn.begin():
                if conn.dialect.name == "postgresql":
                    lock = text("SELECT pg_advisory_xact_lock(:key)")
                    await conn.execute(lock, {"key": MIGRATION_LOCK})
                await conn.run_sync(run)
        finally:
            await conn.close()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    # -- keys ---------------------------------------------------------------

    async def add_key(
        self,
        id: str,
        name: str,
        role: str,
        secret_hash: str,
        secret_enc: str | None = None,
        *,
        tenant_id: str | None = None,
        models: list[str] | None = None,
        limits: dict[str, Any] | None = None,
        budget: dict[str, Any] | None = None,
        expire_key: tuple[str, float] | None = None,
    ) -> KeyRow:
        """Add a key; `expire_key=(old_id, at)` also sets the old key's expiry (rotation),
        in the same transaction. Raises KeyReplaced (adding nothing) if the old key was
        already rotated or revoked: a key gets one successor at most."""
        now = time.time()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=id,
                    name=name,
                    role=role,
                    secret_hash=secret_hash,
                    created_at=now,
                    secret_enc=secret_enc,
                    tenant_id=tenant_id,
                    models=models,
                    limits=limits,
                    budget=budget,
                    updated_at=now,
                )
            )
            if expire_key is not None:
                old_id, at = expire_key
                res = await conn.execute(
                    update(api_keys)
                    .where(
                        api_keys.c.id == old_id,
                        api_keys.c.expires_at.is_(None),
                        api_keys.c.revoked_at.is_(None),
                    )
                    .values(expires_at=at, updated_at=now)
                )
                if not res.rowcount:  # rolls the new key back too
                    raise KeyReplaced(old_id)
        return KeyRow(
            id,
            name,
            role,
            secret_hash,
            now,
            None,
            None,
            secret_enc,
            tenant_id,
            models,
            limits,
            budget,
            None,
            now,
        )

    async def get_key(self, id: str) -> KeyRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == id))).first()
        return KeyRow(*row) if row is not None else None

    async def list_keys(
        self, include_revoked: bool = False, tenant_id: str | None = None
    ) -> list[KeyRow]:
        q = select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_at.is_(None))
        if tenant_id is not None:
            q = q.where(api_keys.c.tenant_id == tenant_id)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [KeyRow(*r) for r in rows]

    async def revoke_key(self, id: str) -> bool:
        async with self.engine.begin() as conn:
            res = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return bool(res.rowcount)

    # -- tenants --------------------------------------------------------------

    async def add_tenant(self, id: str, name: str, **fields: Any) -> TenantRow:
        unknown = set(fields) - set(_TENANT_FIELDS)
        if unknown:
            raise ValueError(f"unknown tenant fields: {sorted(unknown)}")
        now = time.time()
        values = {"log_invocations": False, **fields}
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(tenants).values(id=id, name=name, created_at=now, updated_at=now, **values)
            )
        return await self._tenant(id)  # type: ignore[return-value]

    async def _tenant(self, id: str) -> TenantRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(tenants).where(tenants.c.id == id))).first()
        return TenantRow(*row) if row is not None else None

    async def get_tenant(self, id: str) -> TenantRow | None:
        row = await self._tenant(id)
        return row if row is not None and row.deleted_at is None else None

    async def tenant_by_name(self, name: str) -> TenantRow | None:
        q = select(tenants).where(tenants.c.name == name, tenants.c.deleted_at.is_(None))
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return TenantRow(*row) if row is not None else None

    async def list_tenants(self) -> list[TenantRow]:
        q = select(tenants).where(tenants.c.deleted_at.is_(None)).order_by(tenants.c.created_at)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [TenantRow(*r) for r in rows]

    async def update_tenant(self, id: str, **fields: Any) -> TenantRow | None:
        unknown = set(fields) - set(_TENANT_FIELDS) - {"name"}
        if unknown:
            raise ValueError(f"unknown tenant fields: {sorted(unknown)}")
        async with self.engine.begin() as conn:
            res = await conn.execute(
                update(tenants)
                .where(tenants.c.id == id, tenants.c.deleted_at.is_(None))
                .values(updated_at=time.time(), **fields)
            )
        return await self.get_tenant(id) if res.rowcount else None

    async def delete_tenant(self, id: str) -> bool:
        """Soft delete (usage and ledger entries keep naming it); its keys are revoked."""
        now = time.time()
        async with self.engine.begin() as conn:
            res = await conn.execute(
                update(tenants)
                .where(tenants.c.id == id, tenants.c.deleted_at.is_(None))
                .values(deleted_at=now, updated_at=now, name=_deleted_name(id))
            )
            if res.rowcount:
                await conn.execute(
                    update(api_keys)
                    .where(api_keys.c.tenant_id == id, api_keys.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
        return bool(res.rowcount)

    async def has_admin_key(self) -> bool:
        q = (
            select(func.count())
            .select_from(api_keys)
            .where(api_keys.c.role == "admin", api_keys.c.revoked_at.is_(None))
        )
        async with self.engine.connect() as conn:
            return bool((await conn.execute(q)).scalar_one())

    async def keys_version(self) -> tuple[int, float, int, float]:
        """Changes whenever a key or tenant is added, changed or revoked (cheap; polled)."""
        # Sums, not maxima: a change stamped earlier than the latest one (replicas' clocks
        # differ) still changes the version.
        stamps = func.sum(
            func.coalesce(api_keys.c.revoked_at, api_keys.c.updated_at, api_keys.c.created_at)
        )
        qk = select(func.count(), func.coalesce(stamps, 0)).select_from(api_keys)
        qt = select(func.count(), func.coalesce(func.sum(tenants.c.updated_at), 0)).select_from(
            tenants
        )
        async with self.engine.connect() as conn:
            nk, lk = (await conn.execute(qk)).one()
            nt, lt = (await conn.execute(qt)).one()
        return int(nk), float(lk), int(nt), float(lt)

    async def touch_keys(self, last_used: dict[str, float]) -> None:
        if not last_used:
            return
        async with self.engine.begin() as conn:
            for key_id, ts in last_used.items():
                await conn.execute(
                    update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=ts)
                )

    # -- usage --------------------------------------------------------------

    async def insert_usage(self, rows: Sequence[dict[str, Any]]) -> None:
        """Usage rows as dicts (all with the first's keys)."""
        if rows:
            columns = tuple(rows[0])
            await self.insert_usage_values(columns, [tuple(r[c] for c in columns) for r in rows])

    async def insert_usage_values(
        self,
        columns: tuple[str, ...],
        values: Sequence[tuple[Any, ...]],
        checkpoints: Mapping[str, int] | None = None,
    ) -> None:
        """Usage rows as tuples of `columns` (what the usage recorder writes), and with them,
        in the same transaction, the usage journals' checkpoints (journal id -> its last
        record among these rows; `cumulo.store.checkpoints`)."""
        if not values:
            return
        unknown = set(columns) - set(usage.c.keys())
        if unknown:
            raise ValueError(f"unknown usage columns: {sorted(unknown)}")
        values = fit_values(usage, columns, values)
        also = checkpoint_statements(checkpoints or {})
        if self._rows is not None:
            await self._rows.insert(usage.name, columns, values, also)
            return
        async with self.engine.begin() as conn:
            await conn.execute(insert(usage), [dict(zip(columns, v, strict=True)) for v in values])
            for sql, params in also:
                await conn.execute(text(sql), params)

    async def usage_summary(
        self, since: float | None = None, tenant_id: str | None = None
    ) -> dict[str, list[dict[str, Any]]]:
        """Totals per key, per model and per tenant (optionally since a Unix time, for one
        tenant)."""
        cols = [
            func.count().label("requests"),
            func.coalesce(func.sum(usage.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(usage.c.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(case((usage.c.status >= 400, 1), else_=0)), 0).label("errors"),
            func.avg(usage.c.latency_ms).label("avg_latency_ms"),
            func.coalesce(func.sum(usage.c.cost_usd), 0.0).label("cost_usd"),
            func.coalesce(func.sum(usage.c.guardrail_interventions), 0).label(
                "guardrail_interventions"
            ),
        ]
        groups = (
            ("by_key", usage.c.key_id),
            ("by_model", usage.c.model),
            ("by_tenant", usage.c.tenant_id),
        )
        out: dict[str, list[dict[str, Any]]] = {}
        async with self.engine.connect() as conn:
            for group, column in groups:
                q = select(column.label(group.removeprefix("by_")), *cols).group_by(column)
                if since is not None:
                    q = q.where(usage.c.ts >= since)
                if tenant_id is not None:
                    q = q.where(usage.c.tenant_id == tenant_id)
                rows = (await conn.execute(q.order_by(column))).mappings().all()
                out[group] = [dict(r) for r in rows]
        return out

    async def spend_since(
        self,
        since: float,
        scopes: Sequence[tuple[str, str]] | None = None,
        until: float | None = None,
    ) -> dict[tuple[str, str], float]:
        """Cost in USD since `since` (before `until`, if given), per ("tenant", id) and per
        ("key", id) (only `scopes`, if given): seeds budgets."""
        out: dict[tuple[str, str], float] = {}
        async with self.engine.connect() as conn:
            for scope, column in (("tenant", usage.c.tenant_id), ("key", usage.c.key_id)):
                ids = None if scopes is None else [i for kind, i in scopes if kind == scope]
                if ids == []:
                    continue
                q = (
                    select(column, func.sum(usage.c.cost_usd))
                    .where(usage.c.ts >= since, column.is_not(None))
                    .group_by(column)
                )
                if ids is not None:
                    q = q.where(column.in_(ids))
                if until is not None:
                    q = q.where(usage.c.ts < until)
                for ident, total in (await conn.execute(q)).all():
                    out[(scope, ident)] = float(total or 0.0)
        return out

    async def count_usage(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(usage))).scalar_one())
