"""SQL for `evals` and `eval_runs` (migration 0011); what they mean is `cumulo.evals`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update

from cumulo.store.db import Store
from cumulo.store.schema import eval_runs, evals


@dataclass(slots=True, frozen=True)
class EvalRow:
    id: str
    tenant_id: str | None
    key_id: str | None
    name: str
    created_at: float
    data_source_config: dict[str, Any]
    testing_criteria: list[dict[str, Any]]
    metadata: dict[str, str] | None


def _row(r: Any) -> EvalRow:
    return EvalRow(**{c.name: r._mapping[c.name] for c in evals.columns})


def _tenant(tenant_id: str | None) -> Any:
    return evals.c.tenant_id.is_(None) if tenant_id is None else evals.c.tenant_id == tenant_id


class EvalTable:
    def __init__(self, store: Store) -> None:
        self.engine = store.engine

    async def create(self, **values: Any) -> EvalRow:
        async with self.engine.begin() as conn:
            await conn.execute(insert(evals).values(**values))
        return EvalRow(**values)

    async def get(self, tenant_id: str | None, eval_id: str) -> EvalRow | None:
        q = select(evals).where(evals.c.id == eval_id, _tenant(tenant_id))
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return _row(row) if row is not None else None

    async def page(
        self, tenant_id: str | None, limit: int, after: EvalRow | None, ascending: bool
    ) -> list[EvalRow]:
        q = select(evals).where(_tenant(tenant_id))
        if after is not None:
            if ascending:
                q = q.where(
                    or_(
                        evals.c.created_at > after.created_at,
                        and_(evals.c.created_at == after.created_at, evals.c.id > after.id),
                    )
                )
            else:
                q = q.where(
                    or_(
                        evals.c.created_at < after.created_at,
                        and_(evals.c.created_at == after.created_at, evals.c.id < after.id),
                    )
                )
        if ascending:
            q = q.order_by(evals.c.created_at, evals.c.id)
        else:
            q = q.order_by(evals.c.created_at.desc(), evals.c.id.desc())
        async with self.engine.connect() as conn:
            return [_row(r) for r in await conn.execute(q.limit(limit))]

    async def update(self, eval_id: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(evals).where(evals.c.id == eval_id).values(**values))

    async def delete(self, eval_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(eval_runs).where(eval_runs.c.eval_id == eval_id))
            await conn.execute(delete(evals).where(evals.c.id == eval_id))

    async def add_run(self, eval_id: str, run_id: str, created_at: float) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(eval_runs).values(id=run_id, eval_id=eval_id, created_at=created_at)
            )

    async def run_ids(self, eval_id: str, limit: int = 1000) -> list[str]:
        """Newest first."""
        q = (
            select(eval_runs.c.id)
            .where(eval_runs.c.eval_id == eval_id)
            .order_by(eval_runs.c.created_at.desc(), eval_runs.c.id.desc())
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            return [r[0] for r in await conn.execute(q)]

    async def drop_run(self, run_id: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(eval_runs).where(eval_runs.c.id == run_id))
