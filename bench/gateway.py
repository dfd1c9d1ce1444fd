"""Gateway overhead: direct to a fast upstream vs a bare proxy vs cumulo, in one run.

Starts three servers on 127.0.0.1 and drives each with `wrk`:

  direct  bench/upstream.py: raw ASGI on uvicorn (httptools, uvloop), fixed completion
  bare    bench/bare_proxy.py: raw ASGI pass-through with one pooled aiohttp session
  cumulo  `cumulo serve --workers 1`, one openai-provider model pointing at the upstream,
          a caller key (auth and usage recording are always on)
  floor   (with --floor) bench/floor_proxy.py: the bare proxy with the least possible
          upstream client, a reference for what the machine itself adds to a proxy hop
  base    (with --baseline TREE) the same cumulo, run from another source tree (an older
          commit checked out elsewhere), to measure a change against what it changes

Each gets a short warm-up; then requests/s at N connections and p50/p99 latency at one
connection are measured in slices that interleave the three, so that a change in the
machine's other load affects all alike. Prints a table (with the CPU time per request of the
server under test) and the ratios cumulo/bare (req/s, CPU) and cumulo - direct (p50).

    python bench/gateway.py [--duration 10] [--connections 32] [--slices 5] [--pin split|none]
                            [--floor] [--baseline TREE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
PATH = "/v1/chat/completions"
ADMIN_KEY = "bench-admin-key-not-secret"

# A small, typical chat request; the upstream answers it with a fixed completion.
BODY = json.dumps(
    {
        "model": "bench-model",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello."},
        ],
        "max_tokens": 16,
        "temperature": 0.2,
    },
    separators=(",", ":"),
)

LUA = """\
wrk.method = "POST"
wrk.body = [==[%(body)s]==]
wrk.headers["Content-Type"] = "application/json"
%(auth)s
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH_RESULT %%d %%d %%d %%d %%d %%d %%d %%.1f %%.1f %%.1f\\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean))
end
"""

# CPU layout for --pin split on a 2-core machine: the server under test (the proxy, or the
# upstream in the direct case) gets one core; the load generator and the upstream share the
# other. The proxy is then alone on its core, so its own cost decides its throughput.
CORE_PROXY = "0"
CORE_LOAD = "1"


@dataclass
class Run:
    requests: int
    seconds: float
    errors: int
    non2xx: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    cpu_s: float | None = None  # CPU time the server under test used during the run

    @property
    def cpu_us_per_req(self) -> float | None:
        return None if self.cpu_s is None or not self.requests else self.cpu_s / self.requests * 1e6

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


@dataclass
class Target:
    name: str
    url: str
    token: str | None = None
    pid: int | None = None  # the server under test (the proxy; the upstream for direct)
    throughput: list[Run] = field(default_factory=list)
    latency: list[Run] = field(default_factory=list)


# -- processes -------------------------------------------------------------------------


class Procs:
    """Subprocesses started here, each in its own session; all killed on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], env: dict[str, str] | None = None, cpus: str | None = None
    ) -> subprocess.Popen[bytes]:
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=str(HERE.parent),
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            text = (self.logdir / f"{name}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def stop_all(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, proc in reversed(self.procs):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (all its threads), from /proc; None elsewhere."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http(
    method: str, url: str, body: bytes | None = None, token: str | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(procs: Procs, what: str, probe, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        procs.check_alive()
        with contextlib.suppress(OSError):
            if probe():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f} s")


def check_completion(name: str, url: str, token: str | None) -> None:
    status, raw = http("POST", url, BODY.encode(), token)
    if status != 200:
        raise RuntimeError(f"{name}: POST {url} answered {status}: {raw[:300]!r}")
    data = json.loads(raw)
    if data.get("object") != "chat.completion" or not data.get("choices"):
        raise RuntimeError(f"{name}: not a chat completion: {raw[:300]!r}")


# -- load generation -------------------------------------------------------------------


def wrk(
    target: Target, tmp: Path, *, connections: int, threads: int, seconds: float, cpus: str | None
) -> Run:
    auth = f'wrk.headers["Authorization"] = "Bearer {target.token}"' if target.token else ""
    script = tmp / f"{target.name}.lua"
    script.write_text(LUA % {"body": BODY, "auth": auth})
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        target.url,
    ]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    cpu0 = cpu_seconds(target.pid)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    cpu1 = cpu_seconds(target.pid)
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            f = line.split()[1:]
            reqs, dur_us, e_conn, e_read, e_write, e_status, e_timeout = (int(x) for x in f[:7])
            p50, p99, mean = (float(x) / 1000.0 for x in f[7:10])
            return Run(
                reqs,
                dur_us / 1e6,
                e_conn + e_read + e_write + e_timeout,
                e_status,
                p50,
                p99,
                mean,
                cpu,
            )
    raise RuntimeError(f"wrk gave no result for {target.name}:\n{out.stdout}\n{out.stderr}")


# -- main ------------------------------------------------------------------------------


def source_of(env: dict[str, str]) -> str:
    """The directory the `cumulo` package is imported from, with `env`."""
    out = subprocess.run(
        [sys.executable, "-c", "import cumulo; print(cumulo.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    return str(Path(out.stdout.strip()).parent)


def start_cumulo(
    procs: Procs, name: str, tmp: Path, upstream: str, pin: bool, tree: Path | None = None
) -> tuple[Target, str]:
    """`cumulo serve` on a free port (from `tree`'s sources if given) and a caller key; the
    target, unchecked, and where its package comes from."""
    py = sys.executable
    port = free_port()
    home = tmp / f"{name}-home"
    config = tmp / f"{name}.yaml"
    config.write_text(
        "models:\n"
        "  - name: bench-model\n"
        "    deployments:\n"
        "      - provider: openai\n"
        "        model: gpt-bench\n"
        f"        base_url: {upstream}/v1\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUMULO_")}
    env.update(CUMULO_HOME=str(home), CUMULO_ADMIN_KEY=ADMIN_KEY)
    if tree is not None:
        env["PYTHONPATH"] = str(tree / "src")
        argv = [py, "-c", "from cumulo.cli import main; main()"]
    else:
        cumulo = shutil.which("cumulo", path=str(Path(py).parent)) or shutil.which("cumulo")
        argv = [cumulo] if cumulo else [py, "-c", "from cumulo.cli import main; main()"]
    source = source_of(env)
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
    status, raw = http(
        "POST", url + "/admin/keys", json.dumps({"name": "bench"}).encode(), ADMIN_KEY
    )
    if status != 201:
        raise RuntimeError(f"{name}: creating a caller key answered {status}: {raw[:300]!r}")
    # taskset execs its command, so the pid is the server's own.
    return Target(name, url + PATH, json.loads(raw)["key"], pid=proc.pid), source


def start_servers(
    procs: Procs, tmp: Path, pin: bool, floor: bool, baseline: Path | None = None
) -> list[Target]:
    py = sys.executable
    up_port, bare_port, floor_port = free_port(), free_port(), free_port()
    upstream = f"http://{HOST}:{up_port}"
    # The upstream shares the load generator's core; in the direct case that is fair too,
    # because the upstream then replaces the proxy as the one server doing work.
    up = procs.start(
        "upstream",
        [py, str(HERE / "upstream.py"), "--port", str(up_port)],
        cpus=CORE_LOAD if pin else None,
    )
    bare = procs.start(
        "bare",
        [py, str(HERE / "bare_proxy.py"), "--port", str(bare_port), "--upstream", upstream],
        cpus=CORE_PROXY if pin else None,
    )
    floor_proc = (
        procs.start(
            "floor",
            [py, str(HERE / "floor_proxy.py"), "--port", str(floor_port), "--upstream", upstream],
            cpus=CORE_PROXY if pin else None,
        )
        if floor
        else None
    )

    wait_until(procs, "upstream", lambda: http("POST", upstream + PATH, b"{}")[0] == 200)
    wait_until(
        procs,
        "bare proxy",
        lambda: http("POST", f"http://{HOST}:{bare_port}{PATH}", b"{}")[0] == 200,
    )
    if floor_proc is not None:
        wait_until(
            procs,
            "floor proxy",
            lambda: http("POST", f"http://{HOST}:{floor_port}{PATH}", b"{}")[0] == 200,
        )
    # With a baseline, both trees are started the same way (sources on PYTHONPATH).
    here = HERE.parent if baseline is not None else None
    cumulo, source = start_cumulo(procs, "cumulo", tmp, upstream, pin, here)
    print(f"cumulo: {source}", flush=True)
    base = None
    if baseline is not None:
        base, base_source = start_cumulo(procs, "base", tmp, upstream, pin, baseline)
        print(f"base:   {base_source}", flush=True)
        if base_source == source:
            raise RuntimeError(f"--baseline {baseline} runs the same sources as cumulo")

    targets = [
        # taskset execs its command, so each pid is the server's own.
        Target("direct", upstream + PATH, pid=up.pid),
        Target("bare", f"http://{HOST}:{bare_port}{PATH}", pid=bare.pid),
        cumulo,
    ]
    if base is not None:
        targets.append(base)
    if floor_proc is not None:
        targets.insert(2, Target("floor", f"http://{HOST}:{floor_port}{PATH}", pid=floor_proc.pid))
    for t in targets:
        check_completion(t.name, t.url, t.token)
    return targets


def report(targets: list[Target], args: argparse.Namespace) -> None:
    @dataclass
    class Row:
        rps: float
        cpu_us: float | None
        p50: float
        p99: float
        failed: int

    rows: dict[str, Row] = {}
    for t in targets:
        if not t.throughput:
            continue
        requests = sum(r.requests for r in t.throughput)
        cpu_s = [r.cpu_s for r in t.throughput]
        rows[t.name] = Row(
            rps=requests / sum(r.seconds for r in t.throughput),
            cpu_us=None if None in cpu_s else sum(c or 0.0 for c in cpu_s) / requests * 1e6,
            p50=statistics.median(r.p50_ms for r in t.latency),
            p99=statistics.median(r.p99_ms for r in t.latency),
            failed=sum(r.errors + r.non2xx for r in t.throughput + t.latency),
        )
    slices = f"{args.slices} interleaved slices; p50/p99: median over slices"
    print()
    print(f"POST {PATH}, {len(BODY)}-byte body; pinning: {args.pin}; {slices}")
    print(
        f"{'':8} {f'req/s @{args.connections}c':>13} {'CPU us/req':>11} {'p50 @1c':>10}"
        f" {'p99 @1c':>10} {'failed':>7}"
    )
    for name, r in rows.items():
        cpu_col = f"{r.cpu_us:11.0f}" if r.cpu_us is not None else f"{'-':>11}"
        print(f"{name:8} {r.rps:13.0f} {cpu_col} {r.p50:8.3f}ms {r.p99:8.3f}ms {r.failed:7d}")
    print("(CPU us/req: CPU time of the server under test per request during the throughput run:")
    print(" the upstream for direct, the proxy alone for bare and cumulo.)")
    if {"direct", "bare", "cumulo"} <= rows.keys():
        d, b, c = rows["direct"], rows["bare"], rows["cumulo"]
        print()
        print(f"bare/direct   req/s   {b.rps / d.rps:.2f}")
        print(f"cumulo/bare   req/s   {c.rps / b.rps:.2f}   (target >= 0.60)")
        if b.cpu_us and c.cpu_us:
            print(
                f"bare/cumulo   CPU/req {b.cpu_us / c.cpu_us:.2f}   (the same ratio, by CPU cost)"
            )
        print(f"bare - direct   p50   {b.p50 - d.p50:+.3f} ms")
        print(f"cumulo - direct p50   {c.p50 - d.p50:+.3f} ms   (target <= 0.4 ms)")
        print(f"cumulo - bare   p50   {c.p50 - b.p50:+.3f} ms")
        if "floor" in rows:
            print(
                f"floor - direct  p50   {rows['floor'].p50 - d.p50:+.3f} ms   (no gateway work,"
                " least possible client)"
            )
    if {"cumulo", "base"} <= rows.keys():
        c, base = rows["cumulo"], rows["base"]
        [tc] = [t for t in targets if t.name == "cumulo"]
        [tb] = [t for t in targets if t.name == "base"]
        pairs = list(zip(tc.throughput, tb.throughput, strict=True))
        # Each slice's pair ran back to back: the median of their ratios shrugs off the slices
        # that other work on the machine slowed.
        rps = statistics.median(a.rps / b.rps for a, b in pairs)
        cpu = [
            b.cpu_us_per_req / a.cpu_us_per_req
            for a, b in pairs
            if a.cpu_us_per_req and b.cpu_us_per_req
        ]
        print()
        print(
            f"cumulo/base   req/s   {c.rps / base.rps:.3f}   (this tree against --baseline;"
            f" median of the slices' ratios {rps:.3f})"
        )
        if base.cpu_us and c.cpu_us:
            median = f" (median of the slices' ratios {statistics.median(cpu):.3f})" if cpu else ""
            print(f"base/cumulo   CPU/req {base.cpu_us / c.cpu_us:.3f}{median}")
        print(f"cumulo - base   p50   {c.p50 - base.p50:+.3f} ms")
    if any(r.failed for r in rows.values()):
        print("\nWARNING: some requests failed (socket errors or non-2xx); figures are suspect.")


def in_turn(targets: list[Target], i: int, baseline: Path | None) -> list[Target]:
    """The order of slice `i`: with --baseline, reversed every other slice, so that neither
    tree is always measured right after the other."""
    return targets[::-1] if baseline is not None and i % 2 else targets


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Gateway overhead: direct vs bare proxy vs cumulo."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput run")
    parser.add_argument("--connections", type=int, default=32, help="connections for throughput")
    parser.add_argument(
        "--latency-duration", type=float, default=5.0, help="seconds per 1-connection latency run"
    )
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per target")
    parser.add_argument(
        "--slices",
        type=int,
        default=5,
        help="split each duration into this many slices, interleaving the targets",
    )
    parser.add_argument(
        "--pin",
        choices=("split", "none"),
        default="split",
        help="split: server under test on CPU 0, wrk and upstream on CPU 1; "
        "none: let the OS schedule",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure bench/floor_proxy.py (the latency floor of a proxy hop)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="TREE",
        help="also measure cumulo from TREE/src (e.g. an older commit checked "
        "out with `git archive`), interleaved with this tree's",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("direct", "bare", "floor", "cumulo", "base"),
        help="measure only these (every server still starts)",
    )
    args = parser.parse_args()
    if args.slices < 1 or min(args.duration, args.latency_duration) / args.slices < 1:
        parser.error(
            "each slice must last at least 1 s (--duration and --latency-duration"
            " at least --slices seconds); wrk takes whole seconds"
        )

    if shutil.which("wrk") is None:
        print(
            "bench/gateway.py needs the load generator wrk; install it with:\n"
            "    apt-get install -y wrk",
            file=sys.stderr,
        )
        return 2
    pin = args.pin == "split"
    if pin and (shutil.which("taskset") is None or (os.cpu_count() or 1) < 2):
        print("note: taskset missing or fewer than 2 CPUs; running unpinned", file=sys.stderr)
        pin, args.pin = False, "none"
    load_cpus = CORE_LOAD if pin else None
    threads = 1 if pin else 2

    # Ctrl-C raises KeyboardInterrupt (even if started with SIGINT ignored, as background jobs
    # are); SIGTERM does the same, so `finally` always stops the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="cumulo-bench-") as tmpdir:
        tmp = Path(tmpdir)
        procs = Procs(tmp)
        try:
            print("starting upstream, bare proxy and cumulo ...", flush=True)
            targets = start_servers(procs, tmp, pin, args.floor, args.baseline)
            targets_run = [t for t in targets if t.name in args.only] if args.only else targets
            for t in targets_run:
                print(f"{t.name}: warm-up {args.warmup:g}s", flush=True)
                wrk(
                    t,
                    tmp,
                    connections=args.connections,
                    threads=threads,
                    seconds=args.warmup,
                    cpus=load_cpus,
                )
            # Interleaved slices: a change in the machine's other load hits every target alike.
            names = " ".join(t.name for t in targets_run)
            print(
                f"throughput: {args.connections} conns, {args.slices} x [{names}], "
                f"{round(args.duration / args.slices)}s each",
                flush=True,
            )
            for i in range(args.slices):
                for t in in_turn(targets_run, i, args.baseline):
                    t.throughput.append(
                        wrk(
                            t,
                            tmp,
                            connections=args.connections,
                            threads=threads,
                            seconds=args.duration / args.slices,
                            cpus=load_cpus,
                        )
                    )
            print(
                f"latency: 1 conn, {args.slices} x [{names}], "
                f"{round(args.latency_duration / args.slices)}s each",
                flush=True,
            )
            for i in range(args.slices):
                for t in in_turn(targets_run, i, args.baseline):
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
            print("\ninterrupted; stopping servers", file=sys.stderr)
            return 130
        except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
            print(f"bench/gateway.py: error: {exc}", file=sys.stderr)
            return 1
        finally:
            procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
