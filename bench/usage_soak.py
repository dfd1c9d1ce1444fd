"""Usage-writing soak: the RSS of a process that writes 1M usage records, SQLite and PostgreSQL.

Drives the server's usage write path directly, without HTTP: `UsageRecorder.record()`
(the journal write and the in-memory queue, as the gateway calls it once per request),
then `flush()` of whatever is queued, as the background writer does every tick, through
`Store.insert_usage_values` (on SQLite the row writer's own connection and thread, on
PostgreSQL SQLAlchemy and asyncpg). Each tick queues a random number of records (1 to
`--max-batch`), so the writer sees thousands of distinct batch sizes, as a busy server
does. Everything else a server does per request is left out, so the RSS measured is the
write path's own.

Each database runs in a fresh process. With `--baseline TREE` the same soak also runs on
TREE/src (e.g. an older commit checked out with `git archive`), in the same run, one after
the other. Prints RSS after the warm-up (the first 20,000 records), every 10% of the
records, and at the end, and the growth from warm-up to end (target: within +30 MiB).

    python bench/usage_soak.py [--records 1000000] [--db sqlite postgresql] [--baseline TREE]
                               [--postgres postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import random
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WARMUP = 20_000
HERE = Path(__file__).resolve().parent


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(db: str, records: int, max_batch: int, postgres: str, work: Path) -> dict[str, Any]:
    """One database's soak in this process: its figures."""
    import asyncpg
    from sqlalchemy.engine import make_url

    import cumulo
    from cumulo.config import UsageConfig
    from cumulo.governance.telemetry.usage import USAGE_COLUMNS, UsageRecord, UsageRecorder
    from cumulo.store.db import Store

    journal = None
    if "journal" in inspect.signature(UsageRecorder).parameters:  # trees that have one
        from cumulo.governance.telemetry.journal import UsageJournal

        journal = UsageJournal(work / "journal", USAGE_COLUMNS)
        journal.open()
    name = None
    if db == "sqlite":
        url = f"sqlite+aiosqlite:///{work / 'soak.db'}"
    else:
        name = f"cumulo_soak_{secrets.token_hex(4)}"
        admin = await asyncpg.connect(postgres)
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        url = make_url(postgres).set(drivername="postgresql+asyncpg", database=name)
    store = Store(url)
    rng = random.Random(7)
    keys = [f"k{i:015d}" for i in range(200)]
    models = ["gpt-4o-mini", "claude-3-5-haiku", "llama-3.1-8b", "minilm-embed"]
    samples: list[tuple[int, float]] = []
    end = 0.0
    try:
        await store.migrate()
        args = (journal,) if journal is not None else ()
        recorder = UsageRecorder(store, UsageConfig(), *args)  # the server's defaults
        written = 0
        start = warm = 0.0
        while written < records:
            n = min(rng.randint(1, max_batch), records - written)
            for _ in range(n):
                recorder.record(
                    UsageRecord(
                        key_id=rng.choice(keys),
                        endpoint="chat.completions",
                        model=rng.choice(models),
                        deployment="openai:gpt-4o-mini",
                        stream=rng.random() < 0.3,
                        prompt_tokens=rng.randint(5, 2000),
                        completion_tokens=rng.randint(1, 800),
                        latency_ms=rng.uniform(50, 3000),
                        ttft_ms=None,
                        status=200,
                        error_type=None,
                        served_model="gpt-4o-mini",
                        attempts=1,
                        tenant_id="t1",
                        cost_usd=0.0001,
                    )
                )
            await recorder.flush(recorder.queued)  # what the background writer's tick does
            await recorder.housekeeping()
            before, written = written, written + n
            if before < WARMUP <= written:
                warm, start = rss_mib(), time.perf_counter()
                samples.append((written, warm))
            step = max(1, records // 10)
            if written // step != before // step:
                samples.append((written, rss_mib()))
        elapsed = time.perf_counter() - start
        end = rss_mib()  # before closing, which frees the connection's statements
        stored = await store.count_usage()
        await recorder.close()
    finally:
        await store.close()
        if name is not None:
            admin = await asyncpg.connect(postgres)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()
    return {
        "db": db,
        "source": str(Path(cumulo.__file__).parent),
        "journal": journal is not None,
        "records": written,
        "stored": stored,
        "warm_mib": warm,
        "end_mib": end,
        "samples": samples,
        "records_per_s": (written - WARMUP) / elapsed if elapsed else 0.0,
    }


def run_worker(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="cumulo-soak-") as tmp:
        result = asyncio.run(
            soak(args.worker, args.records, args.max_batch, args.postgres, Path(tmp))
        )
    print("SOAK_RESULT " + json.dumps(result), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="RSS of the usage write path over many records.")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--max-batch",
        type=int,
        default=5000,
        help="records per tick are drawn from 1 to this (the default batch_size)",
    )
    parser.add_argument(
        "--db", nargs="+", choices=("sqlite", "postgresql"), default=["sqlite", "postgresql"]
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "CUMULO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="maintenance database URL; a throwaway database is made beside it",
    )
    parser.add_argument(
        "--baseline", type=Path, metavar="TREE", help="also soak TREE/src, in the same run"
    )
    parser.add_argument("--worker", choices=("sqlite", "postgresql"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.records <= WARMUP:
        parser.error(f"--records must be more than the {WARMUP:,} warm-up records")
    if args.worker:
        return run_worker(args)

    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.baseline is not None:
        trees.append(("baseline", args.baseline))
    results = []
    for db in args.db:
        for label, tree in trees:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
            if tree is not None:
                env["PYTHONPATH"] = str(tree / "src")
            print(f"{db}, {label}: {args.records:,} records ...", flush=True)
            out = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    db,
                    "--records",
                    str(args.records),
                    "--max-batch",
                    str(args.max_batch),
                    "--postgres",
                    args.postgres,
                ],
                env=env,
                capture_output=True,
                text=True,
                check=False,
                cwd="/",
            )
            line = next((x for x in out.stdout.splitlines() if x.startswith("SOAK_RESULT ")), None)
            if out.returncode != 0 or line is None:
                print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
                return 1
            result = json.loads(line.removeprefix("SOAK_RESULT "))
            result["label"] = label
            results.append(result)
            curve = "  ".join(f"{n // 1000}k:{mib:.0f}" for n, mib in result["samples"])
            print(f"  RSS MiB by records written: {curve}", flush=True)

    print()
    print(
        f"{'database':11} {'tree':10} {'journal':8} {'records':>9} {'stored':>9} "
        f"{'RSS warm':>9} {'RSS end':>8} {'growth':>8} {'rec/s':>8}"
    )
    for r in results:
        growth = r["end_mib"] - r["warm_mib"]
        print(
            f"{r['db']:11} {r['label']:10} {'yes' if r['journal'] else 'no':8} "
            f"{r['records']:9,} {r['stored']:9,} {r['warm_mib']:8.0f}M {r['end_mib']:7.0f}M "
            f"{growth:+7.0f}M {r['records_per_s']:8.0f}"
        )
    print(f"(RSS growth from after {WARMUP:,} records to the end; target: within +30 MiB)")
    bad = [r for r in results if r["stored"] != r["records"]]
    if bad:
        print("WARNING: some records were not stored:", [(r["db"], r["label"]) for r in bad])
    return 0


if __name__ == "__main__":
    sys.exit(main())
