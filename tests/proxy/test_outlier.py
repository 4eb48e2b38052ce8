"""Outlier ejection, latency back-off and active health-check state: pure, explicit time."""

from __future__ import annotations

import random

from plait.config.traffic_policy import LatencyBackoff, OutlierPolicy
from plait.proxy.balance import panic_hosts
from plait.proxy.outlier import HEALTHY, UNHEALTHY, UNKNOWN, HealthCheckState, OutlierDetector

HOSTS = ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j")


def detector(hosts=HOSTS, **kw) -> OutlierDetector:
    kw.setdefault("max_ejection_percent", 100)
    return OutlierDetector(OutlierPolicy(**kw), hosts)


def fail(d: OutlierDetector, host: str, n: int, now: float, status: int | None = 500) -> None:
    for _ in range(n):
        d.record(host, status, 0.01, now)


def test_ejected_after_n_consecutive_5xx_and_back_after_the_ejection_time() -> None:
    d = detector(consecutive_5xx=5, base_ejection_ms=30_000)
    fail(d, "a", 4, now=0)
    d.record("a", 200, 0.01, 0)  # a success ends the run
    fail(d, "a", 4, now=1)
    assert not d.is_ejected("a", 1)
    fail(d, "a", 1, now=1)
    assert d.is_ejected("a", 1) and "a" not in d.healthy(HOSTS, 1)
    assert d.is_ejected("a", 30.9) and not d.is_ejected("a", 31.0)
    assert "a" in d.healthy(HOSTS, 31.0)
    assert d.stats(2) == {
        "ejections_active": 1,
        "ejections_total": 1,
        "ejections_consecutive_5xx": 1,
        "ejections_consecutive_gateway": 0,
        "ejections_latency": 0,
        "ejections_overflow": 0,
    }


def test_ejection_time_grows_with_each_ejection_and_shrinks_when_healthy() -> None:
    d = detector(consecutive_5xx=1, base_ejection_ms=10_000, interval_ms=10_000)
    d.record("a", 503, None, 0)
    assert not d.is_ejected("a", 10)
    d.record("a", 503, None, 10)  # second ejection: 2 x base
    assert d.is_ejected("a", 29.9) and not d.is_ejected("a", 30)
    assert d.host_stats("a", 30)["ejections"] == 2
    d.sweep(30)  # starts the interval clock
    d.sweep(40)  # a healthy interval forgives one ejection (Envoy)
    assert d.host_stats("a", 40)["ejections"] == 1
    d.record("a", 503, None, 41)
    assert d.is_ejected("a", 60.9) and not d.is_ejected("a", 61)


def test_ejection_time_is_capped() -> None:
    d = detector(consecutive_5xx=1, base_ejection_ms=100_000)
    now = 0.0
    for _ in range(5):
        d.record("a", 500, None, now)
        now = d.host_stats("a", now)["ejected_for_s"] + now
    d.record("a", 500, None, now)
    assert d.host_stats("a", now)["ejected_for_s"] == 300  # Envoy's max_ejection_time


def test_gateway_errors_and_connect_failures() -> None:
    d = detector(consecutive_5xx=0, consecutive_gateway_errors=3)
    fail(d, "a", 2, 0, status=502)
    d.record("a", 500, 0.01, 0)  # a 500 is no gateway error: the run restarts
    fail(d, "a", 2, 0, status=504)
    assert not d.is_ejected("a", 0)
    d.record("a", None, None, 0)  # a connect failure counts as a gateway error
    assert d.is_ejected("a", 0) and d.ejections_gateway == 1
    fail(d, "b", 10, 0, status=500)  # consecutive_5xx 0: disabled
    assert not d.is_ejected("b", 0)


def test_max_ejection_percent() -> None:
    d = detector(consecutive_5xx=1, max_ejection_percent=20)
    for host in ("a", "b", "c"):
        d.record(host, 500, None, 0)
    assert [d.is_ejected(h, 0) for h in ("a", "b", "c")] == [True, True, False]
    assert d.ejections_overflow == 1 and d.ejections_active(0) == 2


def test_one_host_may_always_be_ejected() -> None:
    d = detector(("a", "b", "c"), consecutive_5xx=1, max_ejection_percent=10)
    d.record("a", 500, None, 0)
    d.record("b", 500, None, 0)
    assert d.is_ejected("a", 0) and not d.is_ejected("b", 0)


def test_healthy_returns_the_same_tuple_until_something_changes() -> None:
    d = detector(("a", "b"), consecutive_5xx=1, base_ejection_ms=1000)
    hosts = ("a", "b")
    first = d.healthy(hosts, 0)
    assert first == hosts and d.healthy(hosts, 5) is first
    d.record("a", 500, None, 10)
    ejected = d.healthy(hosts, 10)
    assert ejected == ("b",) and d.healthy(hosts, 10.5) is ejected
    back = d.healthy(hosts, 11)
    assert back == hosts and d.healthy(hosts, 12) is back


def test_panic_mode_balances_over_all_when_most_are_ejected() -> None:
    hosts = ("a", "b", "c", "d")
    d = detector(hosts, consecutive_5xx=1)
    for h in ("a", "b", "c"):
        d.record(h, 500, None, 0)
    chosen, panic = panic_hosts(hosts, d.healthy(hosts, 0))
    assert panic and chosen == hosts


def test_set_hosts_forgets_gone_hosts_and_keeps_the_rest() -> None:
    d = detector(("a", "b"), consecutive_5xx=1)
    d.record("a", 500, None, 0)
    d.set_hosts(("a", "c"))
    assert d.is_ejected("a", 1) and not d.is_ejected("b", 1) and d.host_stats("b", 1) == {}
    d.record("b", 500, None, 1)  # unknown host: ignored
    assert d.ejections_total == 1


# --- latency back-off --------------------------------------------------------------------


def run_interval(d, latencies: dict[str, float], start: float, requests: int, rng) -> float:
    """`requests` responses per host over one 10 s interval, then the sweep."""
    for i in range(requests):
        now = start + 10 * i / requests
        for host, latency in latencies.items():
            if not d.is_ejected(host, now):
                d.record(host, 200, latency * rng.uniform(0.7, 1.3), now)
    d.sweep(start + 10)
    return start + 10


def test_latency_backoff_ejects_a_slow_host_before_it_fails_and_it_returns_when_recovered() -> None:
    rng = random.Random(1)
    hosts = ("a", "b", "c", "d")
    d = detector(
        hosts,
        consecutive_5xx=0,
        base_ejection_ms=30_000,
        max_ejection_percent=25,
        latency=LatencyBackoff(factor=3, min_requests=20),
    )
    d.sweep(0)
    fast = {"a": 0.010, "b": 0.012, "c": 0.011}
    t = run_interval(d, {**fast, "d": 0.050}, 0, 50, rng)  # 5x slower, every response a 200
    assert d.is_ejected("d", t) and d.ejections_latency == 1
    assert d.healthy(hosts, t) == ("a", "b", "c")
    while d.is_ejected("d", t):
        t = run_interval(d, {**fast, "d": 0.050}, t, 50, rng)
    t = run_interval(d, {**fast, "d": 0.011}, t, 50, rng)  # recovered: it stays
    t = run_interval(d, {**fast, "d": 0.011}, t, 50, rng)
    assert not d.is_ejected("d", t) and d.ejections_latency == 1


def test_latency_backoff_ignores_mild_differences_and_thin_samples() -> None:
    rng = random.Random(2)
    d = detector(("a", "b", "c"), consecutive_5xx=0, latency=LatencyBackoff(3, 20))
    d.sweep(0)
    t = run_interval(d, {"a": 0.010, "b": 0.010, "c": 0.025}, 0, 50, rng)  # 2.5x: tolerated
    t = run_interval(d, {"a": 0.010, "b": 0.010, "c": 0.500}, t, 10, rng)  # 10 samples < 20
    assert d.ejections_latency == 0
    lone = detector(("a",), consecutive_5xx=0, latency=LatencyBackoff(3, 1))
    lone.sweep(0)
    run_interval(lone, {"a": 5.0}, 0, 50, rng)  # nobody to compare with
    assert lone.ejections_latency == 0


def test_latency_backoff_is_off_without_its_policy() -> None:
    d = detector(("a", "b", "c"))
    d.sweep(0)
    run_interval(d, {"a": 0.01, "b": 0.01, "c": 1.0}, 0, 50, random.Random(3))
    assert d.ejections_total == 0


def test_extreme_latencies_land_in_the_histogram() -> None:
    d = detector(("a", "b"), consecutive_5xx=0, latency=LatencyBackoff(3, 1))
    d.record("a", 200, 0.0, 0)
    d.record("a", 200, 1e9, 0)
    d.record("b", 200, 1e-9, 0)
    d.sweep(0)
    d.sweep(10)  # both clamp into the end buckets; a's median is its fast half
    assert d.ejections_total == 0


# --- active health checks ----------------------------------------------------------------


def test_health_check_thresholds() -> None:
    s = HealthCheckState(unhealthy_threshold=3, healthy_threshold=2)
    assert s.status == UNKNOWN and s.healthy  # listed by the control plane: routed to
    assert s.observe(True) == HEALTHY  # one success at start-up suffices (Envoy)
    assert s.observe(False) is None and s.observe(False) is None
    assert s.observe(False) == UNHEALTHY and not s.healthy
    assert s.observe(True) is None
    assert s.observe(False) is None  # the success run restarts
    assert s.observe(True) is None and s.observe(True) == HEALTHY


def test_health_check_unknown_host_fails_after_the_threshold() -> None:
    s = HealthCheckState(unhealthy_threshold=2, healthy_threshold=1)
    assert s.observe(False) is None and s.healthy
    assert s.observe(False) == UNHEALTHY
    assert s.observe(True) == HEALTHY
