"""The console's overview and usage pages over a large usage table, against the same pages
over a small one, in the same run (SQLite, and PostgreSQL with --postgres).

For each database it fills `usage` with --rows rows (default 1,000,000: 30 days, 20 tenants,
200 keys, 10 models, 3 % errors) and a copy with 1,000 rows of the same shape, starts
`cumulo serve` on each (no models), signs in to the console as an admin, and times each
page --rounds times (after one warm-up), interleaving the two servers:

  overview 24h   /console/overview?range=24h   (series, top models and keys, alerts, budgets)
  overview 30d   /console/overview?range=30d   (the whole table)
  usage          /console/usage?range=30d      (first page, newest first)
  usage sorted   /console/usage?range=30d&sort=cost_usd&order=desc
  usage tenant   /console/usage?range=30d&tenant_id=t7&model=m3

It prints the median ms per page for the large and the small table and their ratio (what
1,000x the rows costs a page); and first, what the console's covering index costs the
usage writer (100,000 rows in batches of 1,000, with and without it).

    python bench/console.py [--rows 1000000] [--rounds 5] [--postgres postgresql://127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ADMIN_KEY = "admin-bench-console"
DAY = 86400.0
PAGES = {
    "overview 24h": "/console/overview?range=24h",
    "overview 30d": "/console/overview?range=30d",
    "usage": "/console/usage?range=30d",
    "usage sorted": "/console/usage?range=30d&sort=cost_usd&order=desc",
    "usage tenant": "/console/usage?range=30d&tenant_id=t7&model=m3",
}
COLUMNS = ("ts", "key_id", "endpoint", "model", "deployment", "stream", "prompt_tokens",
           "completion_tokens", "latency_ms", "ttft_ms", "status", "error_type", "served_model",
           "attempts", "queue_ms", "tenant_id", "cost_usd", "guardrail_interventions")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows(n: int, now: float) -> Iterator[tuple[object, ...]]:
    rnd = random.Random(n)
    for _ in range(n):
        tenant = rnd.randrange(20)
        key = tenant * 10 + rnd.randrange(10)
        model = rnd.randrange(10)
        status = 500 if rnd.random() < 0.03 else 200
        p, c = rnd.randrange(10, 2000), rnd.randrange(1, 500)
        yield (now - rnd.random() * 30 * DAY, f"k{key}", "chat.completions", f"m{model}",
               f"openai:m{model}", False, p, c, rnd.random() * 900, None, status,
               None if status == 200 else "upstream_error", f"m{model}", 1, None, f"t{tenant}",
               (p + 2 * c) / 1e6, 0)  # fmt: skip


def cumulo_bin() -> list[str]:
    here = Path(sys.executable).parent / "cumulo"
    return [str(here)] if here.exists() else [sys.executable, "-m", "cumulo.cli"]


@contextlib.contextmanager
def server(workdir: Path, database_url: str) -> Iterator[str]:
    config = workdir / "cumulo.yaml"
    config.write_text(f"database_url: {database_url}\nmodels: []\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env |= {"CUMULO_HOME": str(workdir / "home"), "CUMULO_ADMIN_KEY": ADMIN_KEY}
    log = (workdir / "cumulo.log").open("wb")
    proc = subprocess.Popen(
        [*cumulo_bin(), "serve", "--config", str(config), "--port", str(port),
         "--log-level", "warning"],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"cumulo did not start:\n{(workdir / 'cumulo.log').read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def migrate(database_url: str, home: Path) -> None:
    """The schema, made by cumulo's own migrations."""
    code = (
        "import asyncio, sys; from cumulo.store.db import Store\n"
        "async def main():\n    s = Store(sys.argv[1]); await s.migrate(); await s.close()\n"
        "asyncio.run(main())"
    )
    subprocess.run([sys.executable, "-c", code, database_url], check=True,
                   env={**os.environ, "CUMULO_HOME": str(home)})  # fmt: skip


def fill_sqlite(path: Path, n: int, now: float) -> None:
    migrate(f"sqlite:///{path}", path.parent)
    db = sqlite3.connect(path)
    marks = ", ".join("?" * len(COLUMNS))
    indexes = db.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage' "
        "AND sql IS NOT NULL"
    ).fetchall()
    with db:  # the indexes are built after the rows: 3x faster to fill
        for name, _ in indexes:
            db.execute(f"DROP INDEX {name}")
        db.executemany(f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({marks})", rows(n, now))
        for _, sql in indexes:
            db.execute(sql)
    db.execute("ANALYZE")
    db.close()


def fill_postgres(base: str, name: str, n: int, now: float, home: Path) -> str:
    import asyncio

    import asyncpg

    async def main() -> None:
        admin = await asyncpg.connect(base)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()

    asyncio.run(main())
    url = re.sub(r"/[^/]*$", f"/{name}", base)
    migrate(url.replace("postgresql://", "postgresql+asyncpg://"), home)

    async def copy() -> None:
        conn = await asyncpg.connect(url)
        await conn.copy_records_to_table("usage", records=list(rows(n, now)), columns=COLUMNS)
        await conn.execute("VACUUM ANALYZE usage")  # as autovacuum leaves a table at rest
        await conn.close()

    asyncio.run(copy())
    return url.replace("postgresql://", "postgresql+asyncpg://")


def write_cost(root: Path, n: int = 100_000, batch: int = 1000) -> None:
    """What the console's covering index costs the usage writer: `n` rows inserted in
    batches of `batch` (as the usage recorder does), with and without the index, same run."""
    times: dict[str, list[float]] = {"with ix_usage_ts_cover": [], "without": []}
    marks = ", ".join("?" * len(COLUMNS))
    for _round in range(3):
        for name in times:
            path = root / f"write-{name.split()[0]}.db"
            path.unlink(missing_ok=True)
            if not (root / "schema.db").exists():
                migrate(f"sqlite:///{root / 'schema.db'}", root)
            path.write_bytes((root / "schema.db").read_bytes())
            db = sqlite3.connect(path)
            if name == "without":
                db.execute("DROP INDEX ix_usage_ts_cover")
            # In time order, as the usage recorder writes them (rows arrive as requests end).
            data = sorted(rows(n, time.time()), key=lambda r: float(str(r[0])))
            started = time.perf_counter()
            for i in range(0, n, batch):
                with db:
                    db.executemany(
                        f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({marks})",
                        data[i : i + batch],
                    )
            times[name].append(time.perf_counter() - started)
            db.close()
    with_index, without = (statistics.median(v) for v in times.values())
    print(f"\nusage writes, {n:,} rows in batches of {batch} (SQLite, median of 3):")
    print(f"  with ix_usage_ts_cover {n / with_index:>10,.0f} rows/s")
    print(f"  without                {n / without:>10,.0f} rows/s")
    print(f"  time with / without    {with_index / without:>10.2f}x")


def sign_in(url: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=120)
    token = re.search(r'name="csrf" value="([^"]+)"', http.get("/console/signin").text)
    assert token is not None
    resp = http.post("/console/signin", data={"csrf": token.group(1), "key": ADMIN_KEY})
    assert resp.status_code == 303, resp.text
    return http


def measure(urls: dict[str, str], rounds: int) -> dict[tuple[str, str], float]:
    clients = {size: sign_in(url) for size, url in urls.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for size, http in clients.items():  # the first long range folds the daily sums
        started = time.perf_counter()
        assert http.get(PAGES["overview 30d"]).status_code == 200
        print(
            f"first 30-day overview ({size}, folds the daily sums): "
            f"{(time.perf_counter() - started) * 1000:.0f} ms"
        )
    for page, path in PAGES.items():
        for http in clients.values():
            assert http.get(path).status_code == 200  # warm-up
        for _ in range(rounds):
            for size, http in clients.items():  # interleaved: the machine's load hits both
                started = time.perf_counter()
                resp = http.get(path)
                times.setdefault((page, size), []).append(time.perf_counter() - started)
                assert resp.status_code == 200, resp.text[:500]
    for http in clients.values():
        http.close()
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def report(title: str, n: int, result: dict[tuple[str, str], float]) -> None:
    print(f"\n{title}: median ms per page, {n:,} rows vs 1,000 rows")
    print(f"{'page':<16}{'large':>10}{'small':>10}{'ratio':>8}")
    for page in PAGES:
        large, small = result[(page, "large")], result[(page, "small")]
        print(f"{page:<16}{large:>10.1f}{small:>10.1f}{large / small:>8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (a database is made there)")
    args = parser.parse_args()
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cost(root)
        for size, n in (("large", args.rows), ("small", 1000)):
            (root / size).mkdir()
            started = time.perf_counter()
            fill_sqlite(root / size / "cumulo.db", n, now)
            print(f"sqlite {size}: {n:,} rows in {time.perf_counter() - started:.1f} s")
        with server(root / "large", f"sqlite:///{root / 'large' / 'cumulo.db'}") as large, \
                server(root / "small", f"sqlite:///{root / 'small' / 'cumulo.db'}") as small:  # fmt: skip
            report("SQLite", args.rows, measure({"large": large, "small": small}, args.rounds))
        if args.postgres:
            urls = {}
            for size, n in (("large", args.rows), ("small", 1000)):
                (root / f"pg-{size}").mkdir()
                started = time.perf_counter()
                urls[size] = fill_postgres(args.postgres, f"cumulo_bench_console_{size}", n, now,
                                           root / f"pg-{size}")  # fmt: skip
                print(f"postgresql {size}: {n:,} rows in {time.perf_counter() - started:.1f} s")
            with server(root / "pg-large", urls["large"]) as large, \
                    server(root / "pg-small", urls["small"]) as small:  # fmt: skip
                report(
                    "PostgreSQL", args.rows, measure({"large": large, "small": small}, args.rounds)
                )


if __name__ == "__main__":
    main()
