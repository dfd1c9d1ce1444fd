"""The store: every read and write of persistent state goes through here.

Nothing here runs on the request path: keys are loaded into memory at start
and refreshed in the background, and usage is written in batches by the
usage recorder.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import case, event, func, insert, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cumulo.store.schema import api_keys, usage

MIGRATIONS = Path(__file__).parent / "migrations"


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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


@lru_cache(maxsize=4)
def _sqlite_insert(columns: tuple[str, ...]) -> str:
    known = set(usage.c.keys())
    if not set(columns) <= known:
        raise ValueError(f"unknown usage columns: {sorted(set(columns) - known)}")
    return f"INSERT INTO usage ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


def _alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.engine: AsyncEngine = create_async_engine(url)
        if self.engine.dialect.name == "sqlite":
            sync_engine: Engine = self.engine.sync_engine
            event.listen(sync_engine, "connect", _sqlite_pragmas)

    async def close(self) -> None:
        await self.engine.dispose()

    async def migrate(self) -> None:
        """Upgrade the schema to the newest migration."""
        cfg = _alembic_config(self.url)
        async with self.engine.begin() as conn:

            def run(sync_conn: Any) -> None:
                cfg.attributes["connection"] = sync_conn
                command.upgrade(cfg, "head")

            await conn.run_sync(run)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    # -- keys ---------------------------------------------------------------

    async def add_key(
        self, id: str, name: str, role: str, secret_hash: str, secret_enc: str | None = None
    ) -> KeyRow:
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
                )
            )
        return KeyRow(id, name, role, secret_hash, now, None, None, secret_enc)

    async def list_keys(self, include_revoked: bool = False) -> list[KeyRow]:
        q = select(api_keys).order_by(api_keys.c.created_at)
        if not include_revoked:
            q = q.where(api_keys.c.revoked_at.is_(None))
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

    async def has_admin_key(self) -> bool:
        q = (
            select(func.count())
            .select_from(api_keys)
            .where(api_keys.c.role == "admin", api_keys.c.revoked_at.is_(None))
        )
        async with self.engine.connect() as conn:
            return bool((await conn.execute(q)).scalar_one())

    async def keys_version(self) -> tuple[int, float]:
        """Changes whenever a key is added or revoked (cheap; polled in the background)."""
        q = select(
            func.count(),
            func.coalesce(func.max(func.coalesce(api_keys.c.revoked_at, api_keys.c.created_at)), 0),
        ).select_from(api_keys)
        async with self.engine.connect() as conn:
            n, latest = (await conn.execute(q)).one()
        return int(n), float(latest)

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
        if not rows:
            return
        async with self.engine.begin() as conn:
            if self.engine.dialect.name == "sqlite":
                # The driver's own executemany: about half the CPU per row of Core's
                # parameter processing, which matters at thousands of requests/s.
                columns = list(rows[0])
                sql = _sqlite_insert(tuple(columns))
                pick = itemgetter(*columns)
                await conn.exec_driver_sql(sql, [pick(r) for r in rows])
            else:
                await conn.execute(insert(usage), list(rows))

    async def usage_summary(self, since: float | None = None) -> dict[str, list[dict[str, Any]]]:
        """Totals per key and per model (optionally since a Unix time)."""
        cols = [
            func.count().label("requests"),
            func.coalesce(func.sum(usage.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(usage.c.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(case((usage.c.status >= 400, 1), else_=0)), 0).label("errors"),
            func.avg(usage.c.latency_ms).label("avg_latency_ms"),
        ]
        out: dict[str, list[dict[str, Any]]] = {}
        async with self.engine.connect() as conn:
            for group, column in (("by_key", usage.c.key_id), ("by_model", usage.c.model)):
                q = select(column.label(group.removeprefix("by_")), *cols).group_by(column)
                if since is not None:
                    q = q.where(usage.c.ts >= since)
                rows = (await conn.execute(q.order_by(column))).mappings().all()
                out[group] = [dict(r) for r in rows]
        return out

    async def count_usage(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(usage))).scalar_one())
