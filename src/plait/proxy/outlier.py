"""Passive health: eject endpoints that keep failing, or that are far slower than their peers.

Theory of operation (Envoy's outlier detection, as Istio configures it, plus plait's latency
back-off):

- `record()` runs for every finished try. A 5xx or a response-less failure (connect failure,
  reset, timeout: `status=None`) extends the host's run of errors; 502/503/504 and
  response-less failures also extend its run of gateway errors; anything else ends both runs.
  A run reaching its threshold ejects the host at once.
- An ejection lasts `base_ejection x number of ejections` (capped at Envoy's 300 s), so a host
  that keeps failing stays out longer; each interval a host spends in service forgives one.
- At most `max_ejection_percent` of the hosts are out at once, but one host always may be
  (Envoy's rule: with 3 hosts and 10 %, a failing host must still go).
- Latency back-off (plait): each interval, a host whose median latency is more than `factor`
  times the median of its peers' medians, with at least `min_requests` samples each, is
  ejected like an outlier: before it fails outright. When its ejection expires it gets
  traffic again and is judged afresh: a recovered host stays, a slow one goes out for longer.
- `sweep()` runs on the proxy's 1 s ticker and does the interval work.

Time is passed in (`now`, seconds on one monotonic clock) so tests need no sleeping.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from statistics import median
from typing import Any, TypeVar

from plait.config.traffic_policy import OutlierPolicy

__all__ = ["HEALTHY", "UNHEALTHY", "UNKNOWN", "HealthCheckState", "OutlierDetector"]

# Envoy's default max_ejection_time: a host that always fails is still retried every 5 minutes.
MAX_EJECTION = 300.0
GATEWAY_ERRORS = frozenset({502, 503, 504})
# Latency histogram: buckets 2^(1/4) apart (19 % resolution, far finer than a 3x factor) from
# 0.1 ms; 96 buckets reach about 1.7 hours, so every latency lands somewhere.
_LAT_BASE = 0.0001
_LAT_STEP = math.log(2) / 4
_LAT_BUCKETS = 96

H = TypeVar("H", bound=Hashable)


class _HostState:
    """What the detector knows about one host."""

    __slots__ = ("errors", "gateway_errors", "ejections", "ejected_until", "latency", "samples")

    def __init__(self) -> None:
        self.errors = 0  # consecutive 5xx (and response-less failures)
        self.gateway_errors = 0  # consecutive 502/503/504 (and response-less failures)
        self.ejections = 0  # the ejection-time multiplier
        self.ejected_until = 0.0
        self.latency: list[int] | None = None  # histogram of this interval, made on first use
        self.samples = 0


def _p50(hist: list[int], samples: int) -> float:
    """The median of a latency histogram: the geometric middle of the bucket holding it."""
    seen, half = 0, samples / 2
    for i, count in enumerate(hist):
        seen += count
        if seen >= half:
            return _LAT_BASE * math.exp((i + 0.5) * _LAT_STEP)
    return _LAT_BASE * math.exp(_LAT_BUCKETS * _LAT_STEP)  # not reached: counts sum to samples


class OutlierDetector:
    """One per cluster per proxy; outlives snapshots (call `set_hosts` on each swap)."""

    __slots__ = (
        "policy",
        "version",
        "_states",
        "_base",
        "_interval",
        "_next_interval",
        "_cache",
        "_cache_key",
        "_cache_until",
        "ejections_total",
        "ejections_5xx",
        "ejections_gateway",
        "ejections_latency",
        "ejections_overflow",
    )

    def __init__(self, policy: OutlierPolicy, hosts: Sequence[Hashable] = ()) -> None:
        self.policy = policy
        self.version = 0  # bumped on every ejection and host-set change (returns are by time)
        self._states: dict[Hashable, _HostState] = {}
        self._base = policy.base_ejection_ms / 1000
        self._interval = policy.interval_ms / 1000
        self._next_interval: float | None = None
        self._cache: tuple[Any, ...] = ()
        self._cache_key: tuple[int, int] = (-1, -1)
        self._cache_until = 0.0
        self.ejections_total = 0
        self.ejections_5xx = 0
        self.ejections_gateway = 0
        self.ejections_latency = 0
        self.ejections_overflow = 0  # ejections refused by max_ejection_percent
        self.set_hosts(hosts)

    def set_hosts(self, hosts: Sequence[Hashable]) -> None:
        """The cluster's current hosts: new ones start clean, gone ones are forgotten."""
        old = self._states
        self._states = {h: old.get(h) or _HostState() for h in hosts}
        self.version += 1

    # --- per request --------------------------------------------------------------------

    def record(
        self, host: Hashable, status: int | None, latency_s: float | None, now: float
    ) -> None:
        """One finished try. `status` None: no response (connect failure, reset, timeout);
        `latency_s` None: nothing to learn about speed (e.g. a connect failure)."""
        st = self._states.get(host)
        if st is None:
            return
        if status is None or status >= 500:
            st.errors += 1
            if status is None or status in GATEWAY_ERRORS:
                st.gateway_errors += 1
            else:
                st.gateway_errors = 0
            if st.ejected_until <= now:
                p = self.policy
                if (
                    p.consecutive_gateway_errors
                    and st.gateway_errors >= p.consecutive_gateway_errors
                ):
                    self._eject(st, now, "gateway")
                elif p.consecutive_5xx and st.errors >= p.consecutive_5xx:
                    self._eject(st, now, "5xx")
        else:
            st.errors = 0
            st.gateway_errors = 0
        if latency_s is not None and self.policy.latency is not None:
            hist = st.latency
            if hist is None:
                hist = st.latency = [0] * _LAT_BUCKETS
            i = int(math.log(latency_s / _LAT_BASE) / _LAT_STEP) if latency_s > _LAT_BASE else 0
            hist[i if i < _LAT_BUCKETS else _LAT_BUCKETS - 1] += 1
            st.samples += 1

    def is_ejected(self, host: Hashable, now: float) -> bool:
        st = self._states.get(host)
        return st is not None and st.ejected_until > now

    def healthy(self, hosts: Sequence[H], now: float) -> tuple[H, ...]:
        """The hosts not ejected now. The same tuple object is returned until something changes,
        so a caller can rebuild its balancer only when `healthy(...) is not last`."""
        key = (id(hosts), self.version)
        if key == self._cache_key and now < self._cache_until:
            return self._cache
        states = self._states
        out = []
        until = math.inf
        for h in hosts:
            st = states.get(h)
            if st is not None and st.ejected_until > now:
                until = min(until, st.ejected_until)
            else:
                out.append(h)
        result = tuple(out)
        if result != self._cache:
            self._cache = result
        self._cache_key, self._cache_until = key, until
        return self._cache

    # --- per tick -----------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """The interval work: forgive, return expired ejections, judge latency, new window."""
        if self._next_interval is None:
            self._next_interval = now + self._interval
        if now < self._next_interval:
            return
        self._next_interval = now + self._interval
        for st in self._states.values():
            if st.ejected_until <= now and st.ejections and not st.errors:
                st.ejections -= 1  # Envoy: each healthy interval shortens the next ejection
        if self.policy.latency is not None:
            self._judge_latency(now)
        for st in self._states.values():
            st.latency, st.samples = None, 0

    def _judge_latency(self, now: float) -> None:
        lat = self.policy.latency
        assert lat is not None
        p50s = {
            st: _p50(st.latency, st.samples)
            for st in self._states.values()
            if st.latency is not None and st.samples >= lat.min_requests and st.ejected_until <= now
        }
        if len(p50s) < 2:
            return  # nobody to compare with
        # Slowest first, so max_ejection_percent keeps out the worst.
        for st, p50 in sorted(p50s.items(), key=lambda kv: -kv[1]):
            peers = [v for s, v in p50s.items() if s is not st]
            if p50 > lat.factor * median(peers):
                self._eject(st, now, "latency")

    def _eject(self, st: _HostState, now: float, reason: str) -> bool:
        # Envoy resets the run either way, so a host refused by the cap is judged afresh.
        st.errors = st.gateway_errors = 0
        states = self._states
        active = sum(1 for s in states.values() if s.ejected_until > now)
        if active and (active + 1) * 100 > self.policy.max_ejection_percent * len(states):
            self.ejections_overflow += 1
            return False
        st.ejections += 1
        st.ejected_until = now + min(self._base * st.ejections, max(self._base, MAX_EJECTION))
        st.latency, st.samples = None, 0
        self.version += 1
        self.ejections_total += 1
        if reason == "5xx":
            self.ejections_5xx += 1
        elif reason == "gateway":
            self.ejections_gateway += 1
        else:
            self.ejections_latency += 1
        return True

    # --- reporting ----------------------------------------------------------------------

    def ejections_active(self, now: float) -> int:
        return sum(1 for s in self._states.values() if s.ejected_until > now)

    def host_stats(self, host: Hashable, now: float) -> dict[str, Any]:
        """For /stats and `plait explain`: why a host is (not) receiving traffic."""
        st = self._states.get(host)
        if st is None:
            return {}
        return {
            "ejected": st.ejected_until > now,
            "ejected_for_s": max(0.0, round(st.ejected_until - now, 3)),
            "ejections": st.ejections,
            "consecutive_errors": st.errors,
            "consecutive_gateway_errors": st.gateway_errors,
        }

    def stats(self, now: float) -> dict[str, int]:
        return {
            "ejections_active": self.ejections_active(now),
            "ejections_total": self.ejections_total,
            "ejections_consecutive_5xx": self.ejections_5xx,
            "ejections_consecutive_gateway": self.ejections_gateway,
            "ejections_latency": self.ejections_latency,
            "ejections_overflow": self.ejections_overflow,
        }


HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
UNKNOWN = "unknown"


class HealthCheckState:
    """One host's active health-check verdict: thresholds of consecutive results (Envoy's).

    A host starts UNKNOWN and is routed to (the control plane listed it as ready); one success
    makes it HEALTHY (Envoy's start-up rule), `unhealthy_threshold` failures in a row make it
    UNHEALTHY, and `healthy_threshold` successes in a row bring it back. The checking loop
    (sockets, timers) belongs to the caller.
    """

    __slots__ = ("unhealthy_threshold", "healthy_threshold", "status", "_ok_run", "_fail_run")

    def __init__(self, unhealthy_threshold: int = 3, healthy_threshold: int = 1) -> None:
        self.unhealthy_threshold = unhealthy_threshold
        self.healthy_threshold = healthy_threshold
        self.status = UNKNOWN
        self._ok_run = 0
        self._fail_run = 0

    @property
    def healthy(self) -> bool:
        return self.status != UNHEALTHY

    def observe(self, ok: bool) -> str | None:
        """Record one check; the new status if it changed, else None."""
        before = self.status
        if ok:
            self._ok_run += 1
            self._fail_run = 0
            if before == UNKNOWN or (
                before == UNHEALTHY and self._ok_run >= self.healthy_threshold
            ):
                self.status = HEALTHY
        else:
            self._fail_run += 1
            self._ok_run = 0
            if before != UNHEALTHY and self._fail_run >= self.unhealthy_threshold:
                self.status = UNHEALTHY
        return self.status if self.status != before else None
