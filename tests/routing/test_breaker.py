"""The circuit breaker's state machine, driven with explicit clock values."""

from __future__ import annotations

from cumulo.routing.breaker import BreakerPolicy, CircuitBreaker


def breaker(**policy: float) -> CircuitBreaker:
    return CircuitBreaker(
        BreakerPolicy(
            **{
                "consecutive_failures": 3,
                "error_rate": 0.5,
                "window": 10,
                "cooldown_s": 5.0,
                **policy,
            }
        )
    )


def test_opens_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    b = breaker()
    for ok in (False, False, True, False, False):
        b.record(ok, now=0)
    assert b.state == "closed"
    b.record(False, now=1)
    assert b.state == "open" and b.opened_count == 1
    assert b.allow(now=2) is None and not b.available(now=2)


def test_opens_on_error_rate_over_a_full_window() -> None:
    b = breaker(consecutive_failures=100, window=10, error_rate=0.5)
    for i in range(9):
        b.record(i % 2 == 0, now=0)  # 4 failures out of 9: window not full yet
    assert b.state == "closed"
    b.record(False, now=0)  # 5 of 10
    assert b.state == "open"


def test_error_rate_below_threshold_stays_closed() -> None:
    b = breaker(consecutive_failures=100, window=10, error_rate=0.5)
    for i in range(40):
        b.record(i % 3 != 0, now=0)  # a third fail
    assert b.state == "closed"


def test_half_open_admits_one_probe_and_its_success_closes() -> None:
    b = breaker()
    for _ in range(3):
        b.record(False, now=0)
    assert b.allow(now=4.9) is None
    assert b.available(now=5.0)
    assert b.allow(now=5.0) == "probe"
    assert b.state == "half_open"
    assert b.allow(now=5.1) is None and not b.available(now=5.1)  # one probe at a time
    b.record(True, "probe", now=5.2)
    assert b.state == "closed"
    assert b.allow(now=5.3) == "call"


def test_failed_probe_reopens_with_a_new_cooldown() -> None:
    b = breaker()
    for _ in range(3):
        b.record(False, now=0)
    assert b.allow(now=5) == "probe"
    b.record(False, "probe", now=6)
    assert b.state == "open" and b.opened_count == 2
    assert b.allow(now=10.9) is None
    assert b.allow(now=11) == "probe"


def test_calls_admitted_before_opening_do_not_move_a_half_open_breaker() -> None:
    b = breaker()
    for _ in range(3):
        b.record(False, now=0)
    assert b.allow(now=5) == "probe"
    b.record(True, "call", now=5.1)  # a slow call from before the circuit opened
    assert b.state == "half_open"
    assert b.allow(now=5.2) is None  # and it did not free the probe's slot
    b.record(False, "call", now=5.3)
    assert b.state == "half_open"
    b.record(True, "probe", now=5.4)
    assert b.state == "closed"


def test_a_probe_without_verdict_frees_its_slot_but_a_call_does_not() -> None:
    b = breaker()
    for _ in range(3):
        b.record(False, now=0)
    assert b.allow(now=5) == "probe"
    b.release("call")
    assert b.allow(now=5) is None
    b.release("probe")
    assert b.state == "half_open"
    assert b.allow(now=5) == "probe"
