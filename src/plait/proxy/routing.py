"""Route tables compiled from a snapshot: authority + request -> a backend service (pure).

Outbound (mesh) routing is GAMMA style: the request's authority names a Service
(`reviews`, `reviews:9080`, `reviews.default.svc.cluster.local`); HTTPRoutes whose parent is
that Service pick among backends, else the Service itself is the backend. Gateway routing
matches the routes attached to the gateway's Gateway resource, by hostname then rule.

Rule precedence follows the Gateway API (HTTPRouteRule docs): an Exact path beats any
prefix, a longer prefix beats a shorter one, then a method match, then more header
matches; remaining ties keep the order of the rules as written.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from plait.config.snapshot import BackendRef, Cluster, Route, RouteMatch, RouteRule, Snapshot
from plait.proto.events import Headers

__all__ = ["Decision", "RouteTable", "split_authority"]


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request goes: the service to balance over, and the policy on the way."""

    service: tuple[str, str]  # (namespace, name)
    route: str
    timeout_ms: int = 0


class _CompiledRule:
    __slots__ = ("match", "backends", "weights", "total", "route", "timeout_ms")

    def __init__(self, match: RouteMatch, rule: RouteRule, route: Route) -> None:
        self.match = match
        live = [b for b in rule.backends if b.weight > 0]
        self.backends: tuple[BackendRef, ...] = tuple(live)
        self.weights = tuple(b.weight for b in live)
        self.total = sum(self.weights)
        self.route = route.name
        self.timeout_ms = rule.timeout_ms

    def matches(self, method: bytes, path: bytes, headers: Headers) -> bool:
        m = self.match
        if m.path is not None:
            want = m.path.value.encode()
            if m.path.type == "Exact":
                if path != want:
                    return False
            elif not _prefix_match(want, path):
                return False
        if m.method is not None and method != m.method.encode():
            return False
        for h in m.headers:
            name = h.name.encode()
            if not any(n == name and v == h.value.encode() for n, v in headers):
                return False
        return True

    def pick(self, rng: random.Random) -> BackendRef | None:
        if not self.backends:
            return None
        if len(self.backends) == 1:
            return self.backends[0]
        x = rng.random() * self.total
        for backend, weight in zip(self.backends, self.weights, strict=True):
            x -= weight
            if x < 0:
                return backend
        return self.backends[-1]


def _prefix_match(prefix: bytes, path: bytes) -> bool:
    """Gateway API PathPrefix: element-wise, so `/foo` matches `/foo/bar`, not `/foobar`."""
    if prefix == b"/":
        return True
    prefix = prefix.rstrip(b"/")
    return path == prefix or path.startswith(prefix + b"/")


def _precedence(item: tuple[int, _CompiledRule]) -> tuple[int, int, int, int, int]:
    order, rule = item
    m = rule.match
    exact = 1 if m.path is not None and m.path.type == "Exact" else 0
    prefix_len = len(m.path.value) if m.path is not None else 0
    return (-exact, -prefix_len, -(m.method is not None), -len(m.headers), order)


def _compile(routes: Sequence[Route]) -> tuple[_CompiledRule, ...]:
    flat: list[tuple[int, _CompiledRule]] = []
    for route in routes:
        for rule in route.rules:
            for match in rule.matches or (RouteMatch(),):
                flat.append((len(flat), _CompiledRule(match, rule, route)))
    flat.sort(key=_precedence)
    return tuple(rule for _, rule in flat)


def split_authority(authority: bytes) -> tuple[str, int | None]:
    """`reviews:9080` -> ("reviews", 9080); bracketed IPv6 kept whole; names lower-cased."""
    text = authority.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if port_text.isdigit():
        return host, int(port_text)
    return host, None


class RouteTable:
    """Immutable routing for one snapshot; `NO_ROUTE` results become a 404 `NR`."""

    __slots__ = ("_by_host", "_service_rules", "_gateway_rules", "_rng")

    def __init__(self, snapshot: Snapshot, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._by_host: dict[str, Cluster] = {}
        for cluster in snapshot.clusters:
            for name in cluster.hostnames:
                self._by_host.setdefault(name, cluster)
        by_parent: dict[tuple[str, str], list[Route]] = {}
        gateway_routes: list[Route] = []
        for route in snapshot.routes:
            if route.parent_kind == "Service":
                by_parent.setdefault((route.namespace, route.parent_name), []).append(route)
            elif route.parent_name == snapshot.node.gateway:
                gateway_routes.append(route)
        self._service_rules = {key: _compile(rs) for key, rs in by_parent.items()}
        self._gateway_rules = tuple(
            (frozenset(r.hostnames), _compile([r])) for r in gateway_routes
        )

    def outbound(
        self, authority: bytes, method: bytes, path: bytes, headers: Headers
    ) -> Decision | None:
        host, port = split_authority(authority)
        cluster = self._by_host.get(host)
        if cluster is None or (port is not None and cluster.ports and port not in cluster.ports):
            return None
        key = (cluster.namespace, cluster.name)
        rules = self._service_rules.get(key)
        if rules is None:
            return Decision(key, f"{cluster.name}.default-route")
        return self._first(rules, method, path, headers)

    def gateway(
        self, authority: bytes, method: bytes, path: bytes, headers: Headers
    ) -> Decision | None:
        host, _ = split_authority(authority)
        for hostnames, rules in self._gateway_rules:
            if hostnames and not _host_allowed(hostnames, host):
                continue
            decision = self._first(rules, method, path, headers)
            if decision is not None:
                return decision
        return None

    def _first(
        self, rules: tuple[_CompiledRule, ...], method: bytes, path: bytes, headers: Headers
    ) -> Decision | None:
        for rule in rules:
            if rule.matches(method, path, headers):
                backend = rule.pick(self._rng)
                if backend is None:
                    return None
                return Decision((backend.namespace, backend.service), rule.route, rule.timeout_ms)
        return None


def _host_allowed(hostnames: frozenset[str], host: str) -> bool:
    if host in hostnames:
        return True
    # Gateway API wildcard: `*.example.com` matches one or more leading labels.
    return any(h.startswith("*.") and host.endswith(h[1:]) for h in hostnames)
