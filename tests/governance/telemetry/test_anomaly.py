"""The anomaly detector, driven by synthetic traffic on an explicit clock."""

from __future__ import annotations

import random

from cumulo.governance.telemetry import anomaly
from cumulo.governance.telemetry.alerts import Alert
from cumulo.governance.telemetry.anomaly import AnomalyDetector, AnomalyPolicy, network_of

T0 = 1_700_000_040.0  # the start of a minute


class Traffic:
    """Requests of one key, minute by minute, spread evenly across each minute."""

    def __init__(self, detector: AnomalyDetector, key: str = "k1", tenant: str = "t1") -> None:
        self.detector = detector
        self.key = key
        self.tenant = tenant
        self.minute = 0
        self.alerts: list[Alert] = []
        self.rng = random.Random(7)

    def run(
        self,
        n: int,
        *,
        model: str = "gpt-4o-mini",
        ips: tuple[str, ...] = ("10.0.0.5", "10.0.0.77"),
        tokens: int = 150,
        errors: int = 0,
        guardrail_hits: int = 0,
    ) -> list[Alert]:
        """One minute of `n` requests; the alerts raised during it."""
        raised: list[Alert] = []
        start = T0 + 60 * self.minute
        for i in range(n):
            raised += self.detector.observe(
                self.key,
                self.tenant,
                start + 60 * (i + 0.5) / n,
                model,
                ips[i % len(ips)],
                tokens * 2 // 3,
                tokens // 3,
                500 if i < errors else 200,
                1 if i < guardrail_hits else 0,
            )
        self.minute += 1
        self.alerts += raised
        return raised

    def steady(self, minutes: int, mean: int = 20, error_every: int = 0) -> list[Alert]:
        """Ordinary traffic: about `mean` requests a minute, an error now and then."""
        raised: list[Alert] = []
        for m in range(minutes):
            n = self.rng.randint(mean - mean // 4, mean + mean // 4)
            errors = 1 if error_every and m % error_every == 0 else 0
            raised += self.run(n, tokens=self.rng.randint(120, 180), errors=errors)
        return raised

    def idle(self, minutes: int) -> None:
        self.minute += minutes


def kinds(alerts: list[Alert]) -> list[str]:
    return [a.kind for a in alerts]


def test_steady_traffic_raises_nothing() -> None:
    traffic = Traffic(AnomalyDetector())
    assert traffic.steady(120, error_every=3) == []
    assert traffic.steady(60, mean=28) == []  # a mild, gradual rise is not an anomaly


def test_a_request_spike_raises_one_alert_naming_the_baseline() -> None:
    traffic = Traffic(AnomalyDetector())
    traffic.steady(30)
    raised = traffic.run(412)
    assert kinds(raised) == [anomaly.REQUEST_SPIKE]  # once, not on each of the 412 requests
    alert = raised[0]
    assert (alert.key_id, alert.tenant_id) == ("k1", "t1")
    assert alert.message.startswith("Key k1: ")
    # Raised as the count crosses the threshold, a quarter into the minute, at a pace of 412.
    assert "requests in the first 1" in alert.message
    assert "(a pace of 41" in alert.message
    assert "vs a baseline of 2" in alert.message
    assert alert.details["threshold"] < alert.details["count"] < 412
    assert alert.severity == "critical"  # the pace is over twice the threshold
    # The surge goes on for two more minutes: still the same incident, no new alert.
    assert traffic.run(400) == []
    assert traffic.run(400) == []


def test_a_spike_fires_again_only_after_the_cooldown() -> None:
    traffic = Traffic(AnomalyDetector(AnomalyPolicy(cooldown_s=600)))
    traffic.steady(30)
    assert kinds(traffic.run(300)) == [anomaly.REQUEST_SPIKE]
    traffic.steady(12)  # back to normal, past the cool-down
    assert kinds(traffic.run(300)) == [anomaly.REQUEST_SPIKE]


def test_a_token_spike_from_few_requests() -> None:
    traffic = Traffic(AnomalyDetector())
    traffic.steady(30)
    raised = traffic.run(20, tokens=5000)  # the usual number of requests, huge completions
    assert kinds(raised) == [anomaly.TOKEN_SPIKE]
    assert raised[0].details["requests"] <= 20
    assert "tokens in the first" in raised[0].message


def test_a_brand_new_key_is_not_judged_before_its_baseline() -> None:
    traffic = Traffic(AnomalyDetector(AnomalyPolicy(warmup_minutes=15)))
    assert traffic.run(500, model="a", ips=("10.0.0.1",)) == []
    assert traffic.run(3, model="b", ips=("172.16.4.1",)) == []
    assert traffic.run(400, model="c", ips=("192.168.9.9",), errors=300) == []
    assert traffic.alerts == []


def test_sparse_keys_never_trip_the_quiet_floor() -> None:
    traffic = Traffic(AnomalyDetector())
    for _ in range(40):
        traffic.run(3)
        traffic.idle(4)
    assert traffic.run(25) == []  # 8x its usual minute, but 25 requests is not a surge
    assert kinds(traffic.run(200)) == [anomaly.REQUEST_SPIKE]


def test_a_new_ipv4_network_raises_one_alert() -> None:
    traffic = Traffic(AnomalyDetector())
    traffic.steady(20)
    assert traffic.run(20, ips=("10.0.0.200",)) == []  # same /24
    raised = traffic.run(20, ips=("203.0.113.9", "203.0.113.10"))
    assert kinds(raised) == [anomaly.NEW_NETWORK]
    assert raised[0].details["network"] == "203.0.113.0/24"
    assert raised[0].details["known_networks"] == ["10.0.0.0/24"]
    assert "203.0.113.9" in raised[0].message
    assert traffic.run(20, ips=("203.0.113.50",)) == []  # now a known network


def test_ipv6_networks_are_48_bit_prefixes() -> None:
    ips = ("2001:db8:1::1", "2001:db8:1:ffff::2")
    traffic = Traffic(AnomalyDetector())
    for _ in range(20):
        traffic.run(20, ips=ips)
    assert traffic.alerts == []
    raised = traffic.run(20, ips=("2001:db8:2::1",))
    assert [a.details["network"] for a in raised] == ["2001:db8:2::/48"]
    assert network_of("::ffff:10.0.0.9") == "10.0.0.0/24"
    assert network_of("testclient") is None


def test_a_new_model_raises_one_alert_once_established() -> None:
    traffic = Traffic(AnomalyDetector())
    traffic.run(20, model="gpt-4o-mini")
    traffic.run(20, model="llama-3.1-8b")  # learnt during warm-up: no alert
    traffic.steady(20)
    traffic.run(20, model="llama-3.1-8b")
    assert traffic.alerts == []
    raised = traffic.run(20, model="claude-opus")
    assert kinds(raised) == [anomaly.NEW_MODEL]
    assert raised[0].details["known_models"] == ["gpt-4o-mini", "llama-3.1-8b"]
    assert "claude-opus" in raised[0].message
    assert raised[0].severity == "warning"


def test_a_burst_of_guardrail_hits_raises_one_alert() -> None:
    traffic = Traffic(AnomalyDetector())
    for m in range(30):
        traffic.run(20, guardrail_hits=1 if m % 5 == 0 else 0)  # one now and then
    assert traffic.alerts == []
    raised = traffic.run(40, guardrail_hits=25)
    assert kinds(raised) == [anomaly.GUARDRAIL_BURST]
    assert " guardrail interventions in the first " in raised[0].message


def test_a_fresh_key_tripping_the_guardrails_is_reported_at_once() -> None:
    traffic = Traffic(AnomalyDetector(AnomalyPolicy(quiet_guardrail_hits=5)))
    assert traffic.run(5, guardrail_hits=5) == []
    assert kinds(traffic.run(10, guardrail_hits=10)) == [anomaly.GUARDRAIL_BURST]


def test_an_error_rate_jump_raises_one_alert() -> None:
    traffic = Traffic(AnomalyDetector())
    traffic.steady(40, mean=40, error_every=2)
    assert traffic.alerts == []
    raised = traffic.run(40, errors=30)
    assert kinds(raised) == [anomaly.ERROR_RATE]
    assert raised[0].details["errors"] >= 10
    assert "requests failed this minute" in raised[0].message


def test_keys_are_judged_against_their_own_baseline() -> None:
    detector = AnomalyDetector()
    busy, quiet = Traffic(detector, "busy"), Traffic(detector, "quiet")
    for _ in range(30):
        busy.run(400)
        quiet.run(10)
    assert busy.alerts == quiet.alerts == []
    assert busy.run(400) == []
    assert [(a.kind, a.key_id) for a in quiet.run(400)] == [(anomaly.REQUEST_SPIKE, "quiet")]


def test_memory_per_key_is_bounded() -> None:
    policy = AnomalyPolicy(max_models=4, max_networks=8, cooldown_s=0)
    detector = AnomalyDetector(policy)
    traffic = Traffic(detector)
    traffic.steady(20)
    for i in range(50):
        traffic.run(1, model=f"m{i}", ips=(f"10.{i}.0.1",))
    state = detector._keys["k1"]
    assert len(state.models) == 4
    assert len(state.networks) == 8
    assert "m49" in state.models  # the most recent are kept


def test_idle_keys_are_forgotten_and_revoked_ones_dropped() -> None:
    detector = AnomalyDetector(AnomalyPolicy(forget_after_s=86400))
    Traffic(detector, "old").run(5)
    Traffic(detector, "gone").run(5)
    detector.forget("gone")
    assert len(detector) == 1
    later = Traffic(detector, "new")
    later.idle(2 * 24 * 60)
    later.run(1)
    assert len(detector) == 1  # "old" was idle for two days


def test_observe_without_a_time_reads_the_injected_clock() -> None:
    now = [T0]
    detector = AnomalyDetector(AnomalyPolicy(quiet_guardrail_hits=0), clock=lambda: now[0])
    raised = detector.observe("k", None, None, "m", None, 1, 1, 200, guardrail_hits=1)
    assert [a.ts for a in raised] == [T0]
