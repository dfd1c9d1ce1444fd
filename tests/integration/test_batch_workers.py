"""Two `cumulo worker` processes share one batch on PostgreSQL; one is killed mid-batch."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import httpx
from sqlalchemy import text as sql
from sqlalchemy.ext.asyncio import create_async_engine

from fakes import FakeOpenAIUpstream
from support import CUMULO_BIN, UPSTREAM_KEY, start_cumulo, write_config
from support.batches import (
    batch_config,
    chat_line,
    custom_ids,
    jsonl,
    new_key,
    result_lines,
    submit,
    wait_batch,
)


def test_two_workers_share_a_batch_and_one_dies(
    upstream: FakeOpenAIUpstream, postgres_url: str, tmp_path: Path, marker: str
) -> None:
    config = batch_config(upstream, lease_s=2, run_in_server=False, batch_concurrency=8)
    config["database_url"] = postgres_url
    server = start_cumulo(config, tmp_path, FAKE_UPSTREAM_KEY=UPSTREAM_KEY)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        cfg = write_config(tmp_path / "worker.yaml", config)
        for i in range(2):  # the server's home: they read the files it stored
            with (tmp_path / f"worker{i}.log").open("wb") as log:
                workers.append(
                    subprocess.Popen(
                        [str(CUMULO_BIN), "worker", "--config", str(cfg), "--log-level", "warning"],
                        env=server.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
        _, token = new_key(server, "workers")
        lines = [chat_line(f"{marker}-{i}", "chat-slow", f"{marker}-{i} hi") for i in range(200)]
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as c:
            b = submit(c, jsonl(lines))
            wait_batch(c, b["id"], done_at_least=50)
            joined = _events(postgres_url, b["id"], "joins")
            assert len(joined) == 2, joined  # both workers run lines of the batch
            workers[0].send_signal(signal.SIGKILL)
            workers[0].wait(10)
            b = wait_batch(c, b["id"])
            out = result_lines(c, b["output_file_id"])
        assert b["status"] == "completed"
        assert b["request_counts"] == {"total": 200, "completed": 200, "failed": 0}
        assert custom_ids(out) == {f"{marker}-{i}": 1 for i in range(200)}  # none twice, none lost
        # Only what the killed worker held was sent again (at most two claims of 8 lines).
        again = len(upstream.received(marker)) - 200
        assert again <= 16
        assert _events(postgres_url, b["id"], "runs again")
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(30)
        server.stop()
    assert workers[1].returncode == 0  # the survivor stopped gracefully


def _events(url: str, job_id: str, text: str) -> list[str]:
    """The job's event messages that mention `text`."""

    async def read() -> list[str]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    sql("SELECT message FROM job_events WHERE job_id = :j ORDER BY seq"),
                    {"j": job_id},
                )
                return [m for (m,) in rows if text in m]
        finally:
            await engine.dispose()

    return asyncio.run(read())
