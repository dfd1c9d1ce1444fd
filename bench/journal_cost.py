"""What the usage journal adds to a request: microseconds per `UsageRecorder.record()` with
the journal (its JSON line and `write(2)`) and without, in-process, in interleaved slices.

The gateway calls `record()` once per request; compare the difference with a request's
whole CPU time, `CPU us/req` of cumulo in `bench/gateway.py`. Records are flushed to a
SQLite store between slices (not timed), as the background writer would.

    python bench/journal_cost.py [--records 20000] [--slices 20]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cumulo.config import UsageConfig
from cumulo.governance.telemetry.journal import UsageJournal
from cumulo.governance.telemetry.usage import USAGE_COLUMNS, UsageRecord, UsageRecorder
from cumulo.store.db import Store


def records(n: int) -> list[UsageRecord]:
    return [
        UsageRecord(
            key_id="k0123456789abcdef",
            endpoint="chat.completions",
            model="gpt-4o-mini",
            deployment="openai:gpt-4o-mini",
            stream=False,
            prompt_tokens=24,
            completion_tokens=9,
            latency_ms=1.234,
            ttft_ms=None,
            status=200,
            error_type=None,
            served_model="gpt-4o-mini",
            attempts=1,
            tenant_id="t0123456789",
            cost_usd=0.0000123,
        )
        for _ in range(n)
    ]


async def main(n: int, slices: int) -> None:
    with tempfile.TemporaryDirectory(prefix="cumulo-journal-cost-") as tmp:
        store = Store(f"sqlite+aiosqlite:///{Path(tmp) / 'cumulo.db'}")
        await store.migrate()
        journal = UsageJournal(Path(tmp) / "journal", USAGE_COLUMNS)
        journal.open()
        recorders = {
            "journal": UsageRecorder(store, UsageConfig(), journal),
            "memory": UsageRecorder(store, UsageConfig()),
        }
        timings: dict[str, list[float]] = {name: [] for name in recorders}
        gc.disable()
        try:
            for i in range(slices + 1):  # the first slice warms up, not counted
                order = list(recorders.items())
                for name, rec in order[::-1] if i % 2 else order:
                    batch = records(n)
                    start = time.perf_counter()
                    for r in batch:
                        rec.record(r)
                    elapsed = time.perf_counter() - start
                    if i:
                        timings[name].append(elapsed / n * 1e6)
                    await rec.flush()
        finally:
            gc.enable()
            for rec in recorders.values():
                await rec.close()
            await store.close()
    with_j, without = statistics.median(timings["journal"]), statistics.median(timings["memory"])
    print(
        f"record(): {with_j:.2f} us with the journal, {without:.2f} us without "
        f"(median of {slices} slices of {n:,} records)"
    )
    print(f"the journal adds {with_j - without:.2f} us per request")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--slices", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.records, args.slices))
    sys.exit(0)
