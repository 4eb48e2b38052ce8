"""Load balancers: pure objects that pick one host from an immutable set.

A balancer never touches a socket. It reads each host's `active` count (requests in flight,
kept by the upstream layer) or its own per-host `LoadStats`, and may be told which hosts to
avoid (already tried by this request). Randomness and the clock are injected so tests are
exact. Every balancer has the same interface, so the data path never asks which kind it holds:

    host = balancer.pick(avoid, key)       # key: bytes from `hash_key`, only RING_HASH reads it
    balancer.on_start(host)                # the request is sent (PEAK_EWMA counts it)
    balancer.on_finish(host, latency_s, now)  # response head arrived (or the try failed: None)

Health is not a balancer's concern: the cluster builds a new balancer over `panic_hosts(...)`
whenever the healthy set changes, passing the old one as `inherit` so PEAK_EWMA keeps its
estimates and RING_HASH its ring (ejections are rare; rebuilding is then O(hosts)).
"""

from __future__ import annotations

import functools
import math
import random
from bisect import bisect
from collections.abc import Callable, Collection, Sequence
from hashlib import blake2b
from time import monotonic
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

if TYPE_CHECKING:
    from plait.config.traffic_policy import LbPolicy

__all__ = [
    "Balanced",
    "Balancer",
    "LeastRequest",
    "LoadStats",
    "PeakEwma",
    "Random",
    "RingHash",
    "RoundRobin",
    "hash_key",
    "make_balancer",
    "panic_hosts",
]

# Linkerd's defaults (linkerd2-proxy `balance`): a new endpoint is assumed to answer in 30 ms,
# and a peak is forgotten with a 10 s time constant, so a slow endpoint is retried now and then.
DEFAULT_RTT: Final = 0.030
DEFAULT_DECAY: Final = 10.0
# Points per host on the ring. Fixed per host (not shared out of a total), so the points of
# the other hosts stay put when one leaves: only the leaver's keys move (about 1/N of them).
# 256 keeps each host's share within about +-10 % of fair.
POINTS_PER_HOST: Final = 256
# Envoy's default minimum ring size: small clusters get more points per host to reach it.
MIN_RING_SIZE: Final = 1024
# Envoy's default panic threshold: below 50 % healthy, trust no health verdict.
PANIC_THRESHOLD: Final = 50


class Balanced(Protocol):
    """What a balancer needs from a host: requests in flight and a stable name for hashing."""

    active: int
    label: str  # "address:port": the same on every proxy, so every proxy builds the same ring


H = TypeVar("H")


class Balancer:
    """The interface the data path calls; all balancers below derive from it. A base class
    rather than a Protocol: compiled, the cluster then calls these methods natively."""

    hosts: tuple[Balanced, ...]

    def pick(self, avoid: Collection[object] = (), key: bytes | None = None) -> Balanced | None:
        raise NotImplementedError

    # Load hooks: nothing by default (balancers that keep no per-request state).
    def on_start(self, host: Balanced) -> None:
        pass

    def on_finish(self, host: Balanced, latency_s: float | None, now: float) -> None:
        pass


def _fresh(hosts: tuple[Balanced, ...], avoid: Collection[object]) -> tuple[Balanced, ...]:
    """Hosts not yet tried; all of them when every one was (a retry still needs a host)."""
    if not avoid:
        return hosts
    return tuple(h for h in hosts if h not in avoid) or hosts


class RoundRobin(Balancer):
    """Each host in turn."""

    def __init__(self, hosts: Sequence[Balanced], rng: random.Random | None = None) -> None:
        self.hosts = tuple(hosts)
        # Start at a random offset so that many proxies do not all hit host 0 first.
        self._next = (rng or random).randrange(len(self.hosts)) if self.hosts else 0

    def pick(self, avoid: Collection[object] = (), key: bytes | None = None) -> Balanced | None:
        hosts = self.hosts
        n = len(hosts)
        for _ in range(n):
            host = hosts[self._next % n]
            self._next += 1
            if host not in avoid:
                return host
        return hosts[self._next % n] if n else None


class Random(Balancer):
    """A uniformly random host: no state, no coordination, fine for many small clients."""

    def __init__(self, hosts: Sequence[Balanced], rng: random.Random | None = None) -> None:
        self.hosts = tuple(hosts)
        self._rng = rng or random.Random()

    def pick(self, avoid: Collection[object] = (), key: bytes | None = None) -> Balanced | None:
        hosts = _fresh(self.hosts, avoid)
        return hosts[int(self._rng.random() * len(hosts))] if hosts else None


class LeastRequest(Balancer):
    """Power of two choices on requests in flight (Istio's default LEAST_REQUEST).

    Two random hosts, keep the one with fewer outstanding requests: nearly as good as a
    full scan at O(1) cost, and it does not herd onto one host the way "least of all" does.
    The two are distinct hosts (tower's p2c), so a host holding stuck requests is never
    chosen merely because it was drawn twice.
    """

    def __init__(self, hosts: Sequence[Balanced], rng: random.Random | None = None) -> None:
        self.hosts = tuple(hosts)
        self._rng = rng or random.Random()

    def pick(self, avoid: Collection[object] = (), key: bytes | None = None) -> Balanced | None:
        hosts = _fresh(self.hosts, avoid)
        n = len(hosts)
        if n < 2:
            return hosts[0] if n else None
        rand = self._rng.random
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        a, b = hosts[i], hosts[j + (j >= i)]
        return b if b.active < a.active else a


class LoadStats:
    """One host's load as PEAK_EWMA sees it: requests in flight and a peak-EWMA latency.

    The estimate jumps up to any slower observation at once (the peak) and otherwise moves
    toward new observations, and toward zero while unused, with weight exp(-elapsed / decay):
    the algorithm of linkerd2-proxy and tower's `PeakEwma`.
    """

    def __init__(self, rtt: float, now: float) -> None:
        self.pending = 0
        self.rtt = rtt
        self.stamp = now

    def cost(self, now: float, decay: float) -> float:
        elapsed = now - self.stamp
        if elapsed > 0:
            self.rtt *= math.exp(-elapsed / decay)
            self.stamp = now
        return self.rtt * (self.pending + 1)

    def observe(self, latency: float, now: float, decay: float) -> None:
        if latency > self.rtt:
            self.rtt = latency
        else:
            weight = math.exp(-max(now - self.stamp, 0.0) / decay)
            self.rtt = self.rtt * weight + latency * (1.0 - weight)
        self.stamp = now


class PeakEwma(Balancer):
    """Linkerd's balancer: P2C on cost = peak-EWMA latency x (requests in flight + 1).

    Latency-aware where LEAST_REQUEST is not: a host 10x slower loses every comparison with a
    healthy peer until its peak decays, so it sees a trickle that keeps its estimate fresh.
    As in LeastRequest the two candidates are distinct hosts.
    """

    def __init__(
        self,
        hosts: Sequence[Balanced],
        rng: random.Random | None = None,
        clock: Callable[[], float] = monotonic,
        default_rtt: float = DEFAULT_RTT,
        decay: float = DEFAULT_DECAY,
        inherit: object = None,
    ) -> None:
        self.hosts = tuple(hosts)
        self._rng = rng or random.Random()
        self._clock = clock
        self._decay = decay
        # Keep the estimates (and in-flight counts) of hosts the previous balancer had, so a
        # config push or an ejection does not make every host look new.
        old = inherit.stats if isinstance(inherit, PeakEwma) else {}
        now = clock()
        self.stats: dict[Balanced, LoadStats] = {
            h: old.get(h) or LoadStats(default_rtt, now) for h in self.hosts
        }
        self._loads = tuple(self.stats[h] for h in self.hosts)

    def pick(self, avoid: Collection[object] = (), key: bytes | None = None) -> Balanced | None:
        hosts, loads = self.hosts, self._loads
        if avoid:
            keep = [i for i, h in enumerate(hosts) if h not in avoid]
            if keep and len(keep) < len(hosts):
                hosts = tuple(hosts[i] for i in keep)
                loads = tuple(loads[i] for i in keep)
        n = len(hosts)
        if n < 2:
            return hosts[0] if n else None
        rand = self._rng.random
        i = int(rand() * n)
        j = int(rand() * (n - 1))
        j += j >= i  # a second, distinct index
        now, decay = self._clock(), self._decay
        return hosts[j] if loads[j].cost(now, decay) < loads[i].cost(now, decay) else hosts[i]

    def on_start(self, host: Balanced) -> None:
        stats = self.stats.get(host)
        if stats is not None:
            stats.pending += 1

    def on_finish(self, host: Balanced, latency_s: float | None, now: float) -> None:
        stats = self.stats.get(host)
        if stats is None:
            return
        if stats.pending > 0:
            stats.pending -= 1
        if latency_s is not None:
            stats.observe(latency_s, now, self._decay)


def _hash64(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


@functools.lru_cache(maxsize=4096)
def _ring_points(label: str, count: int) -> tuple[int, ...]:
    """A host's ring positions; cached, so rebuilding a ring after an ejection is cheap."""
    return tuple(_hash64(f"{label}#{i}".encode()) for i in range(count))


class _Ring:
    """The sorted ring points of a host set and the host owning each point; immutable."""

    def __init__(self, hosts: tuple[Balanced, ...], minimum_ring_size: int) -> None:
        self.hosts = frozenset(hosts)
        self.minimum = minimum_ring_size
        n = len(hosts)
        count = max(POINTS_PER_HOST, -(-minimum_ring_size // n)) if n else 0
        owner: dict[int, Balanced] = {}
        for h in hosts:
            for point in _ring_points(h.label, count):
                owner.setdefault(point, h)  # a 64-bit collision: the first host keeps it
        self.points = sorted(owner)
        self.owners = tuple(owner[p] for p in self.points)


class RingHash(Balancer):
    """Consistent hashing (Istio's consistentHash, Envoy's ring hash): a key sticks to a host.

    Each host owns a fixed number of positions on a 64-bit ring (blake2b of "label#i"); a key
    goes to the first point clockwise from its hash. Removing a host moves only the keys it
    owned. A request without a key (header missing, ...) gets a random host. On a retry the
    walk continues clockwise past the hosts already tried.

    Rebuilt with `inherit=` the previous ring over a subset of its hosts (an ejection), it
    reuses that ring and skips the missing hosts: O(hosts) instead of hashing and sorting
    256 points per host, and the ejected host's keys come home when it returns.
    """

    def __init__(
        self,
        hosts: Sequence[Balanced],
        rng: random.Random | None = None,
        minimum_ring_size: int = MIN_RING_SIZE,
        inherit: object = None,
    ) -> None:
        self.hosts = tuple(hosts)
        self._rng = rng or random.Random()
        old: _Ring | None = inherit._ring if isinstance(inherit, RingHash) else None
        self._ring: _Ring
        if old is not None and old.minimum == minimum_ring_size and old.hosts >= set(self.hosts):
            self._ring = old
        else:
            self._ring = _Ring(self.hosts, minimum_ring_size)
        self._skip = self._ring.hosts.difference(self.hosts)

    def pick(self, avoid: Collection[object] = (), key: bytes | None = None) -> Balanced | None:
        if key is None or not self.hosts:
            hosts = _fresh(self.hosts, avoid)
            return hosts[int(self._rng.random() * len(hosts))] if hosts else None
        owners = self._ring.owners
        size = len(owners)
        start = bisect(self._ring.points, _hash64(key))
        skip = self._skip
        if not avoid and not skip:
            return owners[start % size]
        home = None  # the key's host among the live ones, if every live host was tried
        for step in range(size):
            host = owners[(start + step) % size]
            if host in skip:
                continue
            if host not in avoid:
                return host
            if home is None:
                home = host
        return home


def hash_key(
    policy: LbPolicy, headers: Sequence[tuple[bytes, bytes]], peer_ip: str, query: bytes
) -> bytes | None:
    """The bytes RING_HASH hashes for this request, or None (then a random host is used).

    `headers` are the request's (lower-case name, value) pairs, `query` the raw query string
    without '?'. Values are hashed as sent (not URL-decoded): only equality matters.
    """
    source = policy.hash_on
    if source == "source_ip":
        return peer_ip.encode() if peer_ip else None
    name = policy.hash_name.encode()
    if source == "header":
        for k, v in headers:
            if k == name:
                return v
        return None
    if source == "cookie":
        for k, v in headers:
            if k == b"cookie":
                for part in v.split(b";"):
                    cname, eq, value = part.strip().partition(b"=")
                    if eq and cname == name:
                        return value
        return None
    if source == "query_parameter":
        for part in query.split(b"&"):
            pname, _, value = part.partition(b"=")
            if pname == name:
                return value
    return None


def panic_hosts(
    hosts: Sequence[H], healthy: Sequence[H], threshold_percent: int = PANIC_THRESHOLD
) -> tuple[tuple[H, ...], bool]:
    """The hosts to balance over, and whether that is panic mode (Envoy's panic threshold).

    When fewer than `threshold_percent` of the hosts are healthy, the health verdicts are
    more likely wrong (or the service is down anyway) than most hosts being bad at once:
    spreading load over all hosts beats crushing the few healthy ones.
    """
    if hosts and len(healthy) * 100 < threshold_percent * len(hosts):
        return tuple(hosts), True
    return tuple(healthy), False


_KINDS: Final[dict[str, Callable[..., Balancer]]] = {
    "ROUND_ROBIN": RoundRobin,
    "RANDOM": Random,
    "LEAST_REQUEST": LeastRequest,
    "PEAK_EWMA": PeakEwma,
    "RING_HASH": RingHash,
}


def make_balancer(
    kind: str,
    hosts: Sequence[Balanced],
    rng: random.Random | None = None,
    *,
    policy: LbPolicy | None = None,
    clock: Callable[[], float] = monotonic,
    inherit: object = None,
) -> Balancer:
    """A balancer of `kind` over `hosts`; `policy` tunes PEAK_EWMA and RING_HASH.

    `inherit`: the balancer this one replaces: PEAK_EWMA keeps its hosts' load estimates,
    RING_HASH its ring when the new hosts are a subset of the old (an ejection).
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown load balancer {kind!r}; known: {', '.join(_KINDS)}")
    if kind == "PEAK_EWMA":
        if policy is None:
            return PeakEwma(hosts, rng, clock, inherit=inherit)
        return PeakEwma(
            hosts,
            rng,
            clock,
            policy.ewma_default_rtt_ms / 1000,
            policy.ewma_decay_ms / 1000,
            inherit,
        )
    if kind == "RING_HASH":
        size = policy.minimum_ring_size if policy is not None else MIN_RING_SIZE
        return RingHash(hosts, rng, size, inherit)
    return _KINDS[kind](hosts, rng)
