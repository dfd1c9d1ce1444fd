"""The platform's shutdown: every writer flushes, even when another fails because the
database is down, and each failure is logged. PostgreSQL behind a proxy the test takes
down; budget spend goes to the local Redis under a prefix of this test's own."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy.engine import make_url

from cumulo.config import parse_config
from cumulo.errors import BudgetExceeded
from cumulo.governance.quotas.budgets import BudgetScope, BudgetSpec, period_bounds
from cumulo.governance.telemetry.usage import UsageRecord
from cumulo.platform import Platform
from support.proxy import TcpProxy
from support.redis import REDIS_URL


def test_one_failing_flush_at_shutdown_does_not_skip_the_others(
    postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"cumulo-test-{secrets.token_hex(6)}"
    database = make_url(postgres_url)
    scope = BudgetScope("tenant", "t1", BudgetSpec(10.0, "day"))
    counter = f"{prefix}:budget:tenant:t1:{period_bounds('day', time.time())[2]}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        with TcpProxy(database.port or 5432) as proxy:
            url = database.set(port=proxy.port).render_as_string(hide_password=False)
            config = parse_config(
                {"database_url": url, "redis_url": REDIS_URL, "redis_prefix": prefix, "models": []},
                "<test>",
            )

            async def scenario() -> None:
                platform = Platform(config, tmp_path)
                await platform.store.migrate()
                await platform.start()
                platform.usage.record(
                    UsageRecord(
                        key_id="k1",
                        endpoint="chat.completions",
                        model="m",
                        deployment="d",
                        stream=False,
                        prompt_tokens=1,
                        completion_tokens=1,
                        latency_ms=1.0,
                        ttft_ms=None,
                        status=200,
                        error_type=None,
                        tenant_id="t1",
                        cost_usd=1.5,
                    )
                )
                platform.budgets.add([scope], 1.5)
                proxy.stop()  # the database goes away before the shutdown
                await platform.close()

            with caplog.at_level(logging.ERROR):
                asyncio.run(scenario())
        assert float(client.get(counter) or 0) == 1.5  # the budget spend still reached Redis
        assert "usage records" in caplog.text  # the failed flush, said
    finally:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_spend_a_shutdown_left_in_the_journal_counts_against_budgets_at_the_next_start(
    postgres_url: str, tmp_path: Path
) -> None:
    database = make_url(postgres_url)
    with TcpProxy(database.port or 5432) as proxy:
        url = database.set(port=proxy.port).render_as_string(hide_password=False)
        config = parse_config({"database_url": url, "models": []}, "<test>")
        budget = {"usd": 1.0, "period": "day"}
        scope = BudgetScope("tenant", "t1", BudgetSpec(1.0, "day"), "acme")

        async def scenario() -> None:
            first = Platform(config, tmp_path)
            await first.store.migrate()
            await first.store.add_tenant("t1", "acme", budget=budget)
            await first.start()
            for _ in range(3):  # $1.50 of a $1.00 daily budget, still queued
                first.usage.record(
                    UsageRecord(
                        key_id="k1",
                        endpoint="chat.completions",
                        model="m",
                        deployment="d",
                        stream=False,
                        prompt_tokens=1,
                        completion_tokens=1,
                        latency_ms=1.0,
                        ttft_ms=None,
                        status=200,
                        error_type=None,
                        tenant_id="t1",
                        cost_usd=0.5,
                    )
                )
            proxy.stop()
            await first.close()  # the database is down: the records stay in the journal
            proxy.start()

            second = Platform(config, tmp_path)
            await second.start()
            try:
                assert await second.store.count_usage() == 3
                with pytest.raises(BudgetExceeded):
                    second.budgets.check([scope])
            finally:
                await second.close()

        asyncio.run(scenario())
