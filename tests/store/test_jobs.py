"""The job tables on SQLite and PostgreSQL: claims are disjoint and bounded, a lapsed lease
is claimed again, and an item's result is written once."""

from __future__ import annotations

import asyncio
import time

from cumulo.store.db import Store
from cumulo.store.jobs import COMPLETED, FAILED, ItemResult, JobTable


async def _table(db_url: str) -> tuple[Store, JobTable]:
    store = Store(db_url)
    await store.migrate()
    table = JobTable(store)
    await table.create(
        id="batch_1",
        kind="batch",
        status="in_progress",
        created_at=time.time(),
        params={"endpoint": "/v1/chat/completions"},
        total=100,
    )
    await table.add_items("batch_1", [(i, i * 10, 9) for i in range(100)])
    return store, table


def test_claims_are_disjoint_bounded_and_lapsed_leases_return(db_url: str) -> None:
    async def run() -> None:
        store, table = await _table(db_url)
        try:
            claims = await asyncio.gather(
                *(table.claim_items("batch_1", f"w{i}", 8, lease_s=30) for i in range(6))
            )
            got = [it.idx for c in claims for it in c]
            assert all(len(c) <= 8 for c in claims)
            assert len(got) == len(set(got)) == 48  # nobody got an item another holds
            assert claims[0][0].offset == claims[0][0].idx * 10 and claims[0][0].length == 9
            # A worker that stops renewing: its items are claimed again once the lease lapses.
            held = await table.claim_items("batch_1", "dying", 100, lease_s=0.2)
            assert len(held) == 52
            assert await table.claim_items("batch_1", "other", 10, lease_s=30) == []
            await asyncio.sleep(0.3)
            again = await table.claim_items("batch_1", "other", 10, lease_s=30)
            assert [it.idx for it in again] == [it.idx for it in held[:10]]
            assert {it.attempt for it in again} == {2}
            assert await table.pending("batch_1") == (42, 58)
        finally:
            await store.close()

    asyncio.run(run())


def test_a_result_is_written_once_and_counted_once(db_url: str) -> None:
    async def run() -> None:
        store, table = await _table(db_url)
        try:
            await table.claim_items("batch_1", "w", 3, lease_s=30)
            first = [ItemResult(0, COMPLETED, '{"a": 1}'), ItemResult(1, FAILED, '{"b": 1}')]
            assert await table.finish_items("batch_1", first) == (1, 1)
            # The same items finished again (a slow worker taken for dead): nothing changes.
            late = [ItemResult(0, FAILED, '{"late": 1}'), ItemResult(2, COMPLETED, '{"c": 1}')]
            assert await table.finish_items("batch_1", late) == (1, 0)
            job = await table.get("batch_1")
            assert job is not None and (job.completed, job.failed) == (2, 1)
            done = [(i, r) async for i, r in table.results("batch_1", COMPLETED)]
            assert done == [(0, '{"a": 1}'), (2, '{"c": 1}')]
            assert [it.idx async for it in table.unfinished("batch_1")][:2] == [3, 4]
        finally:
            await store.close()

    asyncio.run(run())
