"""Governance cost: what limits, budgets and the ledger add per request, and guardrails.

Starts the minimal upstream (bench/upstream.py) and two cumulo servers in front of it,
one keeping limits and budgets in memory, one in Redis (`--redis-url`). On each, two
caller keys call the same priced model:

  auth        a key of no tenant: authentication, usage and metrics only (the baseline)
  governed    a key of a tenant, both with requests/tokens/concurrency limits and a
              budget (set high enough never to refuse), so every request is admitted
              against four token buckets and two budgets, charged after, fed to the
              anomaly baseline; the audit ledger runs as always. Guardrails off.

and on the in-memory server a third key, `guarded`, whose tenant has the `pii-anonymize`
guardrail and a prompt-attack guardrail on input and output.

Throughput at N connections (wrk, interleaved slices, cumulo pinned to CPU 0) and p50
latency at one connection. Prints governed/auth req/s for each store (target: at least
0.85, i.e. at most 15% fewer requests/s) and guarded - auth p50 (the guardrails' cost).

    python bench/governance.py [--duration 10] [--connections 32] [--slices 5]
                               [--redis-url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

from gateway import (
    ADMIN_KEY,
    CORE_LOAD,
    CORE_PROXY,
    HERE,
    HOST,
    PATH,
    Procs,
    Target,
    check_completion,
    free_port,
    http,
    wait_until,
    wrk,
)

HIGH = 1_000_000_000  # limits and budgets that never refuse: the cost, not the refusal


def start_cumulo(
    procs: Procs, tmp: Path, name: str, upstream: str, redis_url: str | None, prefix: str, pin: bool
) -> tuple[str, int]:
    home = tmp / f"{name}-home"
    config = tmp / f"{name}.yaml"
    lines = [
        "guardrails:",
        "  - id: attacks",
        "    prompt_attack: {strength: high}",
        "models:",
        "  - name: bench-model",
        "    deployments:",
        "      - provider: openai",
        "        model: gpt-bench",
        f"        base_url: {upstream}/v1",
        "        price: {input_per_mtok: 0.15, output_per_mtok: 0.6}",
    ]
    if redis_url:
        lines += [f"redis_url: {redis_url}", f"redis_prefix: {prefix}"]
    config.write_text("\n".join(lines) + "\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env.update(CUMULO_HOME=str(home), CUMULO_ADMIN_KEY=ADMIN_KEY)
    py = sys.executable
    cumulo = shutil.which("cumulo", path=str(Path(py).parent)) or shutil.which("cumulo")
    argv = [cumulo] if cumulo else [py, "-c", "from cumulo.cli import main; main()"]
    proc = procs.start(
        name,
        [
            *argv,
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
            "--workers",
            "1",
            "--log-level",
            "warning",
        ],
        env=env,
        cpus=CORE_PROXY if pin else None,
    )
    url = f"http://{HOST}:{port}"
    wait_until(procs, name, lambda: http("GET", url + "/health/ready")[0] == 200)
    return url, proc.pid


def admin(url: str, path: str, body: dict[str, object]) -> dict[str, object]:
    status, raw = http("POST", url + path, json.dumps(body).encode(), ADMIN_KEY)
    if status != 201:
        raise RuntimeError(f"POST {path} answered {status}: {raw[:300]!r}")
    result: dict[str, object] = json.loads(raw)
    return result


def make_key(url: str, label: str, **tenant: object) -> str:
    if not tenant:
        return str(admin(url, "/admin/keys", {"name": label})["key"])
    limits = {"rpm": HIGH, "tpm": HIGH, "concurrency": HIGH}
    t = admin(url, "/admin/tenants", {"name": label, **tenant})
    body = {"name": label, "tenant_id": t["id"]}
    if "limits" in tenant:
        body["limits"] = limits
        body["budget"] = {"usd": HIGH, "period": "day"}
    return str(admin(url, "/admin/keys", body)["key"])


def main() -> int:
    parser = argparse.ArgumentParser(description="Governance cost per request.")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--latency-duration", type=float, default=5.0)
    parser.add_argument("--slices", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="Redis for the shared-limits server ('' to skip it)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench/governance.py needs wrk: apt-get install -y wrk", file=sys.stderr)
        return 2
    pin = shutil.which("taskset") is not None and (os.cpu_count() or 1) >= 2
    load_cpus = CORE_LOAD if pin else None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    prefix = f"cumulo-bench-{secrets.token_hex(4)}"
    limits = {"rpm": HIGH, "tpm": HIGH, "concurrency": HIGH}
    budget = {"usd": HIGH, "period": "month"}
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-") as tmpdir:
        tmp = Path(tmpdir)
        procs = Procs(tmp)
        try:
            up_port = free_port()
            upstream = f"http://{HOST}:{up_port}"
            procs.start(
                "upstream",
                [sys.executable, str(HERE / "upstream.py"), "--port", str(up_port)],
                cpus=load_cpus,
            )
            wait_until(procs, "upstream", lambda: http("POST", upstream + PATH, b"{}")[0] == 200)
            servers = [("mem", None)] + ([("redis", args.redis_url)] if args.redis_url else [])
            targets: list[Target] = []
            for name, redis_url in servers:
                url, pid = start_cumulo(
                    procs, tmp, f"cumulo-{name}", upstream, redis_url, prefix, pin
                )
                targets.append(Target(f"auth-{name}", url + PATH, make_key(url, "plain"), pid))
                targets.append(
                    Target(
                        f"governed-{name}",
                        url + PATH,
                        make_key(url, "governed", limits=limits, budget=budget),
                        pid,
                    )
                )
                if redis_url is None:
                    targets.append(
                        Target(
                            "guarded-mem",
                            url + PATH,
                            make_key(url, "guarded", guardrails=["pii-anonymize", "attacks"]),
                            pid,
                        )
                    )
            for t in targets:
                check_completion(t.name, t.url, t.token)
                wrk(
                    t,
                    tmp,
                    connections=args.connections,
                    threads=1,
                    seconds=args.warmup,
                    cpus=load_cpus,
                )
            names = " ".join(t.name for t in targets)
            print(f"throughput: {args.connections} conns, {args.slices} x [{names}]", flush=True)
            for _ in range(args.slices):
                for t in targets:
                    t.throughput.append(
                        wrk(
                            t,
                            tmp,
                            connections=args.connections,
                            threads=1,
                            seconds=args.duration / args.slices,
                            cpus=load_cpus,
                        )
                    )
            print(f"latency: 1 conn, {args.slices} x [{names}]", flush=True)
            for _ in range(args.slices):
                for t in targets:
                    t.latency.append(
                        wrk(
                            t,
                            tmp,
                            connections=1,
                            threads=1,
                            seconds=args.latency_duration / args.slices,
                            cpus=load_cpus,
                        )
                    )
            procs.check_alive()
            report(targets, args)
        except KeyboardInterrupt:
            return 130
        except (RuntimeError, OSError) as exc:
            print(f"bench/governance.py: error: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()
            if args.redis_url:
                _clean_redis(args.redis_url, prefix)
    return 0


def _clean_redis(url: str, prefix: str) -> None:
    import redis

    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(match=f"{prefix}*"))
    if keys:
        r.delete(*keys)
    r.close()


def report(targets: list[Target], args: argparse.Namespace) -> None:
    rows = {}
    print(
        f"\n{'':14} {f'req/s @{args.connections}c':>13} {'CPU us/req':>11} {'p50 @1c':>10}"
        f" {'p99 @1c':>10} {'failed':>7}"
    )
    for t in targets:
        n = sum(r.requests for r in t.throughput)
        rps = n / sum(r.seconds for r in t.throughput)
        cpu = [r.cpu_s for r in t.throughput]
        cpu_us = None if None in cpu else sum(c or 0.0 for c in cpu) / n * 1e6
        p50 = statistics.median(r.p50_ms for r in t.latency)
        p99 = statistics.median(r.p99_ms for r in t.latency)
        failed = sum(r.errors + r.non2xx for r in t.throughput + t.latency)
        rows[t.name] = (rps, cpu_us, p50)
        cpu_col = f"{cpu_us:11.0f}" if cpu_us is not None else f"{'-':>11}"
        print(f"{t.name:14} {rps:13.0f} {cpu_col} {p50:8.3f}ms {p99:8.3f}ms {failed:7d}")
    print()
    for store in ("mem", "redis"):
        if f"governed-{store}" in rows:
            g, a = rows[f"governed-{store}"], rows[f"auth-{store}"]
            print(
                f"governed/auth req/s ({store:5}) {g[0] / a[0]:.2f}   (target >= 0.85)"
                f"   p50 {g[2] - a[2]:+.3f} ms"
            )
    if "guarded-mem" in rows:
        g, a = rows["guarded-mem"], rows["auth-mem"]
        print(f"guardrails: p50 {g[2] - a[2]:+.3f} ms per request, req/s x{g[0] / a[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
