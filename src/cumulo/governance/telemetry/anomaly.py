"""Per-key anomaly detection: a baseline of each key's traffic, alerts on strong deviations.

`AnomalyDetector.observe()` is called once per finished request, on the request
path: it is pure (no I/O, no tasks, no locks) and costs a few dictionary
lookups and comparisons. It returns the alerts that request raised, usually
none; the caller hands them to the `AlertSink`.

Baseline. Per key, traffic is counted in one-minute buckets. When a minute
closes, its counts update an exponentially weighted mean and variance (weight
`alpha` per minute; idle minutes count as zeros) of requests, tokens (prompt +
completion) and guardrail interventions, and of the error fraction (status >=
400) over the minutes that had traffic. The thresholds for the next minute are
computed then, once; each request only adds to its counters and compares.

A baseline is *established* once the key has `warmup_minutes` of history and
`warmup_requests` requests. Before that, only guardrail bursts are judged,
against the floor `quiet_guardrail_hits` alone (a fresh key that trips the
guardrails again and again is exactly what they are for); everything else is
learnt silently. A minute beyond its threshold enters the baseline at the
threshold, so that one surge does not hide the next.

Alerts (a count "beyond the baseline" means more than
`mean + max(sigmas * sd, ratio * mean)` and more than the kind's quiet floor):

    anomaly.request_spike    requests this minute beyond the baseline (floor `quiet_requests`)
    anomaly.token_spike      tokens this minute beyond the baseline (floor `quiet_tokens`)
    anomaly.error_rate       at least `min_errors` errors this minute and an error fraction
                             beyond the baseline's (and above `min_error_rate`)
    anomaly.guardrail_burst  guardrail interventions this minute beyond the baseline
                             (floor `quiet_guardrail_hits`)
    anomaly.new_model        a model the key has not used before
    anomaly.new_network      a client address outside the key's known networks
                             (IPv4 /24, IPv6 /48; IPv4-mapped IPv6 counts as IPv4)

Count alerts fire as the count crosses the threshold, mid-minute; they are
`critical` when the pace so far is over twice the threshold, else `warning`.
The others are `warning`. Each (key, kind) fires at most once per `cooldown_s`;
request and token spikes share one cool-down, so one surge raises one alert.

Memory per key is bounded: a fixed set of counters, at most `max_models`
models and `max_networks` networks (past the cap the least recently seen one
is forgotten, so it would count as new again), and one cool-down time per
alert kind. Keys idle for `forget_after_s` are dropped (checked once per
hour), as are those `forget()` is called for (a revoked key).
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cumulo.governance.telemetry.alerts import Alert, Severity

REQUEST_SPIKE = "anomaly.request_spike"
TOKEN_SPIKE = "anomaly.token_spike"
ERROR_RATE = "anomaly.error_rate"
GUARDRAIL_BURST = "anomaly.guardrail_burst"
NEW_MODEL = "anomaly.new_model"
NEW_NETWORK = "anomaly.new_network"
KINDS = (REQUEST_SPIKE, TOKEN_SPIKE, ERROR_RATE, GUARDRAIL_BURST, NEW_MODEL, NEW_NETWORK)

# Kinds that share one cool-down: a surge of requests is a surge of tokens too, one alert.
_COOLDOWN_GROUP = {TOKEN_SPIKE: REQUEST_SPIKE}
_MAX_GAP = 200  # idle minutes folded into a baseline one by one; older ones weigh < 1e-4


@dataclass(slots=True, frozen=True)
class AnomalyPolicy:
    """What counts as a strong deviation. Defaults suit keys used by services."""

    alpha: float = 0.05  # weight of the newest minute in the baseline (~20 minutes' memory)
    sigmas: float = 6.0
    ratio: float = 3.0
    warmup_minutes: int = 15
    warmup_requests: int = 50
    quiet_requests: int = 30  # per minute; never a spike at or below
    quiet_tokens: int = 20_000
    quiet_guardrail_hits: int = 5
    min_errors: int = 10
    min_error_rate: float = 0.25
    cooldown_s: float = 900.0
    max_models: int = 32
    max_networks: int = 64
    forget_after_s: float = 7 * 86400.0


@lru_cache(maxsize=4096)
def network_of(address: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) an address belongs to; None if it is not an address."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network((ip, prefix), strict=False))


@dataclass(slots=True)
class _Ewma:
    mean: float = 0.0
    var: float = 0.0
    n: int = 0

    def add(self, x: float, alpha: float) -> None:
        if self.n == 0:
            self.mean = x
        else:
            diff = x - self.mean
            incr = alpha * diff
            self.mean += incr
            self.var = (1.0 - alpha) * (self.var + diff * incr)
        self.n += 1

    @property
    def sd(self) -> float:
        return math.sqrt(self.var)

    def limit(self, policy: AnomalyPolicy, floor: float) -> float:
        return max(self.mean + max(policy.sigmas * self.sd, policy.ratio * self.mean), floor)


@dataclass(slots=True)
class _KeyState:
    tenant_id: str | None
    minute: int
    first_minute: int
    last_ts: float
    requests: int = 0
    tokens: int = 0
    errors: int = 0
    guardrail_hits: int = 0
    total_requests: int = 0
    established: bool = False
    req_base: _Ewma = field(default_factory=_Ewma)
    tok_base: _Ewma = field(default_factory=_Ewma)
    err_base: _Ewma = field(default_factory=_Ewma)
    guard_base: _Ewma = field(default_factory=_Ewma)
    req_limit: float = math.inf
    tok_limit: float = math.inf
    err_limit: float = math.inf
    guard_limit: float = math.inf
    models: dict[str, int] = field(default_factory=dict)  # model → last minute seen
    networks: dict[str, int] = field(default_factory=dict)
    fired: dict[str, float] = field(default_factory=dict)  # kind → when it last fired


class AnomalyDetector:
    """Keeps a baseline per key and reports strong deviations from it (see the module doc)."""

    def __init__(
        self, policy: AnomalyPolicy | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.policy = policy or AnomalyPolicy()
        self.clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        """The number of keys with a baseline in memory."""
        return len(self._keys)

    def forget(self, key_id: str) -> None:
        """Drop a key's baseline (e.g. the key was revoked)."""
        self._keys.pop(key_id, None)

    def observe(
        self,
        key_id: str,
        tenant_id: str | None,
        ts: float | None,
        model: str,
        client_ip: str | None,
        prompt_tokens: int,
        completion_tokens: int,
        status: int,
        guardrail_hits: int = 0,
    ) -> list[Alert]:
        """Count one finished request; the alerts it raised (usually none).

        `ts` is the request's Unix time (None: now, from the injected clock).
        """
        if ts is None:
            ts = self.clock()
        if ts >= self._next_sweep:
            self._sweep(ts)
        p = self.policy
        minute = int(ts // 60)
        st = self._keys.get(key_id)
        if st is None:
            st = self._keys[key_id] = _KeyState(tenant_id, minute, minute, ts)
            st.guard_limit = p.quiet_guardrail_hits
        elif minute > st.minute:
            self._roll(st, minute)
        st.tenant_id = tenant_id
        st.last_ts = ts
        st.total_requests += 1
        out: list[Alert] = []

        st.requests += 1
        if st.requests > st.req_limit:
            self._spike(out, st, key_id, ts, REQUEST_SPIKE)
        tokens = prompt_tokens + completion_tokens
        st.tokens += tokens
        if tokens and st.tokens > st.tok_limit:
            self._spike(out, st, key_id, ts, TOKEN_SPIKE)
        if status >= 400:
            st.errors += 1
            if st.errors >= p.min_errors and st.errors / st.requests > st.err_limit:
                self._error_rate(out, st, key_id, ts)
        if guardrail_hits:
            st.guardrail_hits += guardrail_hits
            if st.guardrail_hits > st.guard_limit:
                self._spike(out, st, key_id, ts, GUARDRAIL_BURST)

        if model not in st.models and st.established:
            self._new_model(out, st, key_id, ts, model)
        if st.models.get(model) != minute:  # usually noted already
            _remember(st.models, model, minute, p.max_models)
        net = network_of(client_ip) if client_ip else None
        if net is not None:
            if net not in st.networks and st.established:
                self._new_network(out, st, key_id, ts, client_ip or "", net)
            if st.networks.get(net) != minute:
                _remember(st.networks, net, minute, p.max_networks)
        return out

    # -- baseline -----------------------------------------------------------

    def _roll(self, st: _KeyState, minute: int) -> None:
        """Close the current minute (and the idle ones since) into the baseline.

        A minute beyond the threshold enters the baseline at the threshold: one
        surge does not blind the detector to the next, while a lasting rise
        still becomes the new normal within some tens of minutes.
        """
        p = self.policy
        a = p.alpha
        st.req_base.add(min(st.requests, st.req_limit), a)
        st.tok_base.add(min(st.tokens, st.tok_limit), a)
        st.guard_base.add(min(st.guardrail_hits, st.guard_limit), a)
        if st.requests:
            st.err_base.add(min(st.errors / st.requests, st.err_limit), a)
        for _ in range(min(minute - st.minute - 1, _MAX_GAP)):
            st.req_base.add(0, a)
            st.tok_base.add(0, a)
            st.guard_base.add(0, a)
        st.minute = minute
        st.requests = st.tokens = st.errors = st.guardrail_hits = 0
        st.established = (
            minute - st.first_minute >= p.warmup_minutes and st.total_requests >= p.warmup_requests
        )
        if st.established:
            st.req_limit = st.req_base.limit(p, p.quiet_requests)
            st.tok_limit = st.tok_base.limit(p, p.quiet_tokens)
            st.err_limit = st.err_base.limit(p, p.min_error_rate)
            st.guard_limit = st.guard_base.limit(p, p.quiet_guardrail_hits)
        else:
            st.req_limit = st.tok_limit = st.err_limit = math.inf
            st.guard_limit = p.quiet_guardrail_hits

    def _sweep(self, now: float) -> None:
        """Forget keys idle for longer than `forget_after_s` (at most once an hour)."""
        self._next_sweep = now + 3600.0
        idle = now - self.policy.forget_after_s
        for key_id in [k for k, st in self._keys.items() if st.last_ts < idle]:
            del self._keys[key_id]

    # -- alerts -------------------------------------------------------------

    def _fire(
        self,
        out: list[Alert],
        st: _KeyState,
        key_id: str,
        ts: float,
        kind: str,
        severity: Severity,
        message: str,
        details: dict[str, Any],
    ) -> None:
        group = _COOLDOWN_GROUP.get(kind, kind)
        last = st.fired.get(group)
        if last is not None and ts - last < self.policy.cooldown_s:
            return
        st.fired[group] = ts
        out.append(Alert(kind, key_id, st.tenant_id, ts, severity, message, details))

    def _spike(self, out: list[Alert], st: _KeyState, key_id: str, ts: float, kind: str) -> None:
        last = st.fired.get(_COOLDOWN_GROUP.get(kind, kind))
        if last is not None and ts - last < self.policy.cooldown_s:
            return  # before building the message: this runs for every request past the limit
        if kind == REQUEST_SPIKE:
            what, count, base, limit = "requests", st.requests, st.req_base, st.req_limit
        elif kind == TOKEN_SPIKE:
            what, count, base, limit = "tokens", st.tokens, st.tok_base, st.tok_limit
        else:
            what, count = "guardrail interventions", st.guardrail_hits
            base, limit = st.guard_base, st.guard_limit
        # It fires as the count crosses the threshold, so it is judged by its pace.
        elapsed = ts - st.minute * 60.0
        pace = count * 60.0 / max(elapsed, 1.0)
        when = "this minute" if elapsed >= 55 else f"in the first {elapsed:.0f} s of this minute"
        if pace > count * 1.1:
            when += f" (a pace of {_num(pace)}/min)"
        if st.established:
            vs = f"a baseline of {_num(base.mean)}±{_num(base.sd)} per minute"
        else:
            vs = f"a limit of {_num(limit)} per minute for a key without a baseline yet"
        details: dict[str, Any] = {
            "count": count,
            "elapsed_s": elapsed,
            "pace_per_minute": pace,
            "baseline_mean": base.mean,
            "baseline_sd": base.sd,
            "threshold": limit,
            "established": st.established,
        }
        if kind != GUARDRAIL_BURST:
            details["requests"] = st.requests
            details["tokens"] = st.tokens
        severity: Severity = "critical" if pace > 2 * limit else "warning"
        message = f"Key {key_id}: {count} {what} {when} vs {vs}"
        self._fire(out, st, key_id, ts, kind, severity, message, details)

    def _error_rate(self, out: list[Alert], st: _KeyState, key_id: str, ts: float) -> None:
        rate = st.errors / st.requests
        base = st.err_base
        message = (
            f"Key {key_id}: {st.errors} of {st.requests} requests failed this minute "
            f"({rate:.0%}) vs a baseline error rate of {base.mean:.0%}"
        )
        details = {
            "errors": st.errors,
            "requests": st.requests,
            "error_rate": rate,
            "baseline_rate": base.mean,
            "baseline_sd": base.sd,
            "threshold": st.err_limit,
            "window_s": 60,
        }
        self._fire(out, st, key_id, ts, ERROR_RATE, "warning", message, details)

    def _new_model(
        self, out: list[Alert], st: _KeyState, key_id: str, ts: float, model: str
    ) -> None:
        known = sorted(st.models)
        message = f"Key {key_id}: first use of model '{model}' (it has used {_listing(known)})"
        details = {"model": model, "known_models": known}
        self._fire(out, st, key_id, ts, NEW_MODEL, "warning", message, details)

    def _new_network(
        self, out: list[Alert], st: _KeyState, key_id: str, ts: float, address: str, net: str
    ) -> None:
        known = sorted(st.networks)
        message = (
            f"Key {key_id}: request from {address}, outside its known networks ({_listing(known)})"
        )
        details = {"address": address, "network": net, "known_networks": known}
        self._fire(out, st, key_id, ts, NEW_NETWORK, "warning", message, details)


def _remember(seen: dict[str, int], item: str, minute: int, cap: int) -> None:
    """Note `item`, not yet seen this minute, as seen; past `cap`, forget the least
    recently seen."""
    seen[item] = minute
    if len(seen) > cap:
        del seen[min(seen, key=seen.__getitem__)]


def _num(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 10 or x == int(x) else f"{x:.1f}"


def _listing(items: list[str], most: int = 5) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:most])
    return shown if len(items) <= most else f"{shown} and {len(items) - most} more"
