"""Load balancers: pure objects that pick one host from an immutable set.

A balancer never touches a socket. It reads each host's `active` count (requests in
flight, kept by the upstream layer) and may be told which hosts to avoid (already tried by
this request). Randomness is injected so tests are exact.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Protocol

__all__ = ["Balanced", "LeastRequest", "RoundRobin", "make_balancer"]


class Balanced(Protocol):
    """What a balancer needs from a host."""

    active: int


class RoundRobin:
    """Each host in turn."""

    __slots__ = ("hosts", "_next")

    def __init__(self, hosts: Sequence[Balanced], rng: random.Random | None = None) -> None:
        self.hosts = tuple(hosts)
        # Start at a random offset so that many proxies do not all hit host 0 first.
        self._next = (rng or random).randrange(len(self.hosts)) if self.hosts else 0

    def pick(self, avoid: Collection[object] = ()) -> Balanced | None:
        hosts = self.hosts
        n = len(hosts)
        for _ in range(n):
            host = hosts[self._next % n]
            self._next += 1
            if host not in avoid:
                return host
        return hosts[self._next % n] if n else None


class LeastRequest:
    """Power of two choices on requests in flight (Istio's default LEAST_REQUEST).

    Two random hosts, keep the one with fewer outstanding requests: nearly as good as a
    full scan at O(1) cost, and it does not herd onto one host the way "least of all" does.
    """

    __slots__ = ("hosts", "_rng")

    def __init__(self, hosts: Sequence[Balanced], rng: random.Random | None = None) -> None:
        self.hosts = tuple(hosts)
        self._rng = rng or random.Random()

    def pick(self, avoid: Collection[object] = ()) -> Balanced | None:
        hosts = self.hosts
        if avoid:
            fresh = tuple(h for h in hosts if h not in avoid)
            hosts = fresh or hosts
        n = len(hosts)
        if n < 2:
            return hosts[0] if n else None
        rand = self._rng.random
        a = hosts[int(rand() * n)]
        b = hosts[int(rand() * n)]
        return b if b.active < a.active else a


_KINDS = {"ROUND_ROBIN": RoundRobin, "LEAST_REQUEST": LeastRequest}


def make_balancer(
    kind: str, hosts: Sequence[Balanced], rng: random.Random | None = None
) -> RoundRobin | LeastRequest:
    try:
        return _KINDS[kind](hosts, rng)
    except KeyError:
        raise ValueError(f"unknown load balancer {kind!r}; known: {', '.join(_KINDS)}") from None
