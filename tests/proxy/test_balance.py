"""Balancers over immutable host sets: pure, seeded randomness, simulated clocks."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from plait.config.traffic_policy import LbPolicy
from plait.proxy.balance import (
    LeastRequest,
    LoadStats,
    PeakEwma,
    Random,
    RingHash,
    RoundRobin,
    hash_key,
    make_balancer,
    panic_hosts,
)


@dataclass(eq=False)
class H:
    name: str
    active: int = 0

    @property
    def label(self) -> str:
        return self.name


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_round_robin_visits_each_in_turn() -> None:
    hosts = [H("a"), H("b"), H("c")]
    rr = RoundRobin(hosts, random.Random(1))
    picks = [rr.pick().name for _ in range(6)]
    assert sorted(picks[:3]) == ["a", "b", "c"] and picks[:3] == picks[3:]


def test_round_robin_avoids_tried_hosts() -> None:
    hosts = [H("a"), H("b")]
    rr = RoundRobin(hosts, random.Random(1))
    for _ in range(5):
        assert rr.pick(avoid=(hosts[0],)) is hosts[1]


def test_empty_sets_pick_nothing() -> None:
    assert RoundRobin([]).pick() is None
    assert LeastRequest([]).pick() is None
    assert Random([]).pick() is None
    assert PeakEwma([]).pick() is None
    assert RingHash([]).pick(key=b"k") is None
    assert RingHash([]).pick() is None


def test_least_request_prefers_idle_hosts() -> None:
    busy, idle = H("busy", active=50), H("idle")
    lr = LeastRequest([busy, idle, H("idle2")], random.Random(3))
    picks = [lr.pick().name for _ in range(1000)]
    # P2C over two distinct hosts: the busy host never beats an idle one.
    assert picks.count("busy") < 200


def test_least_request_avoids_tried_unless_nothing_else() -> None:
    a, b = H("a"), H("b")
    lr = LeastRequest([a, b], random.Random(5))
    assert all(lr.pick(avoid=(a,)) is b for _ in range(20))
    assert lr.pick(avoid=(a, b)) in (a, b)


def test_make_balancer_names() -> None:
    assert isinstance(make_balancer("ROUND_ROBIN", [H("a")]), RoundRobin)
    assert isinstance(make_balancer("RANDOM", [H("a")]), Random)
    assert isinstance(make_balancer("PEAK_EWMA", [H("a")]), PeakEwma)
    assert isinstance(make_balancer("RING_HASH", [H("a")]), RingHash)
    with pytest.raises(ValueError, match="unknown load balancer"):
        make_balancer("NOPE", [])


def test_single_host_is_always_picked() -> None:
    a = H("a")
    for kind in ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "PEAK_EWMA", "RING_HASH"):
        bal = make_balancer(kind, [a], random.Random(0))
        assert bal.pick() is a and bal.pick(avoid=(a,)) is a


def test_random_spreads_and_avoids() -> None:
    hosts = [H("a"), H("b"), H("c")]
    rnd = Random(hosts, random.Random(7))
    counts = Counter(rnd.pick().name for _ in range(3000))
    assert all(900 < c < 1100 for c in counts.values())
    assert all(rnd.pick(avoid=(hosts[0], hosts[1])) is hosts[2] for _ in range(20))


# --- simulations with a fake clock ---------------------------------------------------------


def _simulate(kind: str, service_time: dict[str, float], requests: int, rate: float, seed: int):
    """Poisson arrivals at `rate`/s; each host answers in its service time (+-20 %)."""
    clock = Clock()
    hosts = [H(name) for name in service_time]
    rng = random.Random(seed)
    bal = make_balancer(kind, hosts, random.Random(seed + 1), clock=clock)
    inflight: list[tuple[float, int, H, float]] = []
    counts: Counter[str] = Counter()
    for n in range(requests):
        clock.now += rng.expovariate(rate)
        while inflight and inflight[0][0] <= clock.now:
            done, _, host, started = heapq.heappop(inflight)
            host.active -= 1
            bal.on_finish(host, done - started, done)
        host = bal.pick()
        assert host is not None
        counts[host.name] += 1
        host.active += 1
        bal.on_start(host)
        latency = service_time[host.name] * rng.uniform(0.8, 1.2)
        heapq.heappush(inflight, (clock.now + latency, n, host, clock.now))
    return counts


def test_peak_ewma_sends_under_10_percent_to_a_10x_slower_host() -> None:
    times = {"fast1": 0.010, "fast2": 0.010, "slow": 0.100}
    counts = _simulate("PEAK_EWMA", times, requests=6000, rate=200, seed=11)
    assert counts["slow"] / 6000 < 0.10
    # LEAST_REQUEST only sees in-flight counts: it sends the slow host noticeably more.
    lr = _simulate("LEAST_REQUEST", times, requests=6000, rate=200, seed=11)
    assert lr["slow"] > counts["slow"]


def test_peak_ewma_returns_to_a_host_that_recovered() -> None:
    clock = Clock()
    a, b = H("a"), H("b")
    bal = PeakEwma([a, b], random.Random(2), clock)
    bal.on_start(b)
    bal.on_finish(b, 1.0, clock.now)  # one terrible response
    assert all(bal.pick() is a for _ in range(50))
    for _ in range(60):  # a keeps answering in 10 ms while b's peak decays (10 s constant)
        clock.now += 1
        bal.on_start(a)
        bal.on_finish(a, 0.010, clock.now)
    assert b in {bal.pick() for _ in range(50)}  # so b is worth trying again


def test_peak_ewma_counts_in_flight_requests() -> None:
    clock = Clock()
    a, b = H("a"), H("b")
    bal = PeakEwma([a, b], random.Random(2), clock)
    for _ in range(5):
        bal.on_start(a)
    assert all(bal.pick() is b for _ in range(20))
    for _ in range(5):
        bal.on_finish(a, None, clock.now)  # a failure teaches nothing about latency
    assert bal.stats[a].pending == 0 and bal.stats[a].rtt == pytest.approx(0.030)
    bal.on_finish(a, None, clock.now)  # more finishes than starts: clamped, no underflow
    bal.on_start(H("stranger"))  # a host of another balancer: ignored
    bal.on_finish(H("stranger"), 0.1, clock.now)
    assert bal.stats[a].pending == 0


def test_peak_ewma_keeps_estimates_across_rebuilds() -> None:
    clock = Clock()
    a, b, c = H("a"), H("b"), H("c")
    old = PeakEwma([a, b], random.Random(1), clock)
    old.on_start(a)
    old.on_finish(a, 0.5, clock.now)
    policy = LbPolicy(kind="PEAK_EWMA", ewma_default_rtt_ms=20, ewma_decay_ms=5000)
    new = make_balancer(
        "PEAK_EWMA", [a, b, c], random.Random(1), policy=policy, clock=clock, inherit=old
    )
    assert isinstance(new, PeakEwma)
    assert new.stats[a] is old.stats[a] and new.stats[a].rtt == 0.5
    assert new.stats[c].rtt == pytest.approx(0.020)


def test_peak_ewma_avoids_tried_hosts() -> None:
    a, b, c = H("a"), H("b"), H("c")
    bal = PeakEwma([a, b, c], random.Random(4), Clock())
    assert all(bal.pick(avoid=(a, b)) is c for _ in range(10))
    assert {bal.pick(avoid=(a,)) for _ in range(50)} == {b, c}
    assert bal.pick(avoid=(a, b, c)) in (a, b, c)


def test_load_stats_peak_then_ewma() -> None:
    s = LoadStats(0.030, 0.0)
    s.observe(0.100, 1.0, 10.0)
    assert s.rtt == 0.100  # a slower observation is taken at once
    s.observe(0.010, 11.0, 10.0)  # a faster one moves it by 1 - e^-1 of the way
    assert s.rtt == pytest.approx(0.100 * 0.3679 + 0.010 * 0.6321, rel=1e-3)
    assert s.cost(11.0, 10.0) == pytest.approx(s.rtt)


def test_least_request_avoids_a_host_holding_stuck_requests() -> None:
    # "stuck" never answers: its requests pile up, so P2C stops choosing it.
    times = {"ok1": 0.010, "ok2": 0.010, "stuck": 1e9}
    counts = _simulate("LEAST_REQUEST", times, requests=5000, rate=200, seed=3)
    assert counts["stuck"] < 0.02 * 5000


# --- ring hash ---------------------------------------------------------------------------


def test_ring_hash_keeps_a_key_on_one_host() -> None:
    hosts = [H(f"10.0.0.{i}:80") for i in range(5)]
    ring = RingHash(hosts, random.Random(0))
    for user in (b"jason", b"alice", b"bob"):
        assert len({ring.pick(key=user).name for _ in range(20)}) == 1
    # Two proxies build the same ring from the same labels.
    other = RingHash(list(reversed(hosts)), random.Random(9))
    assert all(ring.pick(key=k) is other.pick(key=k) for k in (b"x", b"y", b"z"))


def test_ring_hash_moves_about_one_nth_of_keys_when_a_host_leaves() -> None:
    hosts = [H(f"10.0.0.{i}:80") for i in range(5)]
    keys = [f"user-{i}".encode() for i in range(10_000)]
    ring = RingHash(hosts)
    before = {k: ring.pick(key=k) for k in keys}
    shares = Counter(h.name for h in before.values())
    assert all(1400 < n < 2600 for n in shares.values())  # fair within +-30 %
    gone = hosts[2]
    after_ring = RingHash([h for h in hosts if h is not gone])
    moved = [k for k in keys if after_ring.pick(key=k) is not before[k]]
    assert all(before[k] is gone for k in moved)  # only the leaver's keys move
    assert 0.15 < len(moved) / len(keys) < 0.25  # about 1/5


def test_ring_hash_retry_walks_past_tried_hosts() -> None:
    hosts = [H(f"h{i}") for i in range(4)]
    ring = RingHash(hosts)
    first = ring.pick(key=b"k")
    second = ring.pick(avoid=(first,), key=b"k")
    assert second is not first and ring.pick(avoid=(first,), key=b"k") is second
    assert ring.pick(avoid=tuple(hosts), key=b"k") is first


def test_ring_hash_without_a_key_is_random() -> None:
    hosts = [H(f"h{i}") for i in range(3)]
    ring = RingHash(hosts, random.Random(5))
    assert len({ring.pick().name for _ in range(100)}) == 3
    assert all(ring.pick(avoid=hosts[:2]) is hosts[2] for _ in range(10))


def test_ring_hash_small_clusters_reach_the_minimum_ring_size() -> None:
    ring = RingHash([H("a"), H("b")], minimum_ring_size=2048)
    assert len(ring._ring.points) == 2048
    assert len(RingHash([H(f"h{i}") for i in range(8)])._ring.points) == 8 * 256


def test_ring_hash_ejection_reuses_the_ring_and_keys_come_home() -> None:
    hosts = [H(f"10.0.0.{i}:80") for i in range(5)]
    keys = [f"user-{i}".encode() for i in range(2000)]
    full = make_balancer("RING_HASH", hosts)
    home = {k: full.pick(key=k) for k in keys}
    ejected = make_balancer("RING_HASH", hosts[1:], inherit=full)
    assert isinstance(ejected, RingHash) and ejected._ring is full._ring  # no rehashing
    moved = [k for k in keys if ejected.pick(key=k) is not home[k]]
    assert moved and all(home[k] is hosts[0] for k in moved)
    assert all(ejected.pick(key=k) is not hosts[0] for k in keys)
    assert ejected.pick(avoid=tuple(hosts), key=b"k") is not hosts[0]  # live hosts only
    back = make_balancer("RING_HASH", hosts, inherit=ejected)
    assert back._ring is full._ring and all(back.pick(key=k) is home[k] for k in keys)
    grown = make_balancer("RING_HASH", [*hosts, H("10.0.0.9:80")], inherit=back)
    assert grown._ring is not full._ring  # a new host: a new ring


@pytest.mark.parametrize(
    ("policy", "headers", "peer", "query", "expected"),
    [
        (LbPolicy("RING_HASH", "header", "x-user"), [(b"x-user", b"jason")], "", b"", b"jason"),
        (LbPolicy("RING_HASH", "header", "x-user"), [(b"other", b"1")], "", b"", None),
        (LbPolicy("RING_HASH", "cookie", "sid"), [(b"cookie", b"a=1; sid=42")], "", b"", b"42"),
        (LbPolicy("RING_HASH", "cookie", "sid"), [(b"cookie", b"a=1; sidx=42")], "", b"", None),
        (LbPolicy("RING_HASH", "cookie", "sid"), [], "", b"", None),
        (LbPolicy("RING_HASH", "source_ip"), [], "10.1.2.3", b"", b"10.1.2.3"),
        (LbPolicy("RING_HASH", "source_ip"), [], "", b"", None),
        (LbPolicy("RING_HASH", "query_parameter", "u"), [], "", b"a=1&u=7", b"7"),
        (LbPolicy("RING_HASH", "query_parameter", "u"), [], "", b"a=1", None),
        (LbPolicy(), [], "1.2.3.4", b"", None),
    ],
)
def test_hash_key_sources(policy, headers, peer, query, expected) -> None:
    assert hash_key(policy, headers, peer, query) == expected


# --- panic mode --------------------------------------------------------------------------


def test_panic_mode_below_half_healthy() -> None:
    hosts = [H(f"h{i}") for i in range(4)]
    assert panic_hosts(hosts, hosts[:2]) == (tuple(hosts[:2]), False)  # 50 %: not yet
    assert panic_hosts(hosts, hosts[:1]) == (tuple(hosts), True)
    assert panic_hosts(hosts, ()) == (tuple(hosts), True)
    assert panic_hosts(hosts, (), threshold_percent=0) == ((), False)  # panic disabled
    assert panic_hosts([], []) == ((), False)
