"""Migration 0013 on SQLite and PostgreSQL: the items of eval runs finished before it get
their outcome from their output items (other kinds' items stay without one), and a run's
counts are then read with `JobTable.outcomes`; items finished after it carry theirs."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import text

from cumulo.store.db import Store
from cumulo.store.jobs import COMPLETED, FAILED, ItemResult, JobTable

BEFORE = "0012"


def test_finished_eval_items_get_their_outcomes(db_url: str) -> None:
    async def scenario() -> None:
        store = Store(db_url)
        try:
            await store.migrate(BEFORE)
            async with store.engine.begin() as conn:
                for job_id, kind in (("evalrun_1", "eval"), ("batch_1", "batch")):
                    await conn.execute(
                        text(
                            "INSERT INTO jobs (id, kind, status, created_at, params)"
                            " VALUES (:id, :kind, 'completed', 1.0, '{}')"
                        ),
                        {"id": job_id, "kind": kind},
                    )
                items = [
                    ("evalrun_1", i, s, json.dumps({"status": o}))
                    for i, (s, o) in enumerate(
                        [
                            (COMPLETED, "pass"),
                            (COMPLETED, "pass"),
                            (COMPLETED, "fail"),
                            (FAILED, "error"),
                        ]
                    )
                ]
                items += [
                    ("evalrun_1", 4, "pending", None),
                    ("batch_1", 0, COMPLETED, json.dumps({"status": "pass"})),
                ]
                await conn.execute(
                    text(
                        "INSERT INTO job_items (job_id, idx, line_offset, line_length, status,"
                        " result) VALUES (:j, :i, 0, 1, :s, :r)"
                    ),
                    [{"j": j, "i": i, "s": s, "r": r} for j, i, s, r in items],
                )
            await store.migrate()
            jobs = JobTable(store)
            assert await jobs.outcomes(["evalrun_1", "batch_1"]) == {
                "evalrun_1": {"pass": 2, "fail": 1, "error": 1}
            }
            # An item finished now carries the outcome its kind gives it.
            await jobs.finish_items(
                "evalrun_1", [ItemResult(4, COMPLETED, '{"status": "fail"}', "fail")]
            )
            assert (await jobs.outcomes(["evalrun_1"]))["evalrun_1"]["fail"] == 2
            # Down and up again: the outcomes are filled in again from the results.
            await store.downgrade(BEFORE)
            await store.migrate()
            assert (await jobs.outcomes(["evalrun_1"]))["evalrun_1"] == {
                "pass": 2,
                "fail": 2,
                "error": 1,
            }
        finally:
            await store.close()

    asyncio.run(scenario())
