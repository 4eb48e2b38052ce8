"""The compiler: user resources + running instances -> one proxy's snapshot. Pure, no I/O.

Like Istio pilot's generators it takes only its inputs, so the same inputs always give the same
snapshot. Services become clusters whose endpoints are the instances (and static Workloads) their
selector picks; each HTTPRoute becomes one snapshot route per parentRef. Output is sorted by
namespace/name (the Gateway API's tie-break between routes) so it never depends on input order.
What the snapshot cannot express yet is a CompileError, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from plait.config import resources as r
from plait.config.snapshot import (
    BackendRef,
    Cluster,
    Endpoint,
    HeaderMatch,
    Node,
    PathMatch,
    Route,
    RouteMatch,
    RouteRule,
    Snapshot,
)

__all__ = ["CompileError", "Instance", "compile_snapshot"]


class CompileError(ValueError):
    """Resources the snapshot format cannot (yet) express; the message names route and field."""


@dataclass(frozen=True)
class Instance:
    """One running workload, reachable through its proxy's inbound listener."""

    name: str  # e.g. "reviews-v2-0"
    service: str
    namespace: str
    labels: Mapping[str, str]
    address: str  # its proxy's inbound address
    port: int  # its proxy's inbound port
    identity: str = ""  # the SPIFFE ID its proxy proved; empty: no proxy, plaintext (auto mTLS)


def compile_snapshot(
    resources: Sequence[r.Resource], instances: Sequence[Instance], node: Node, version: str
) -> Snapshot:
    """The snapshot for the proxy `node`; raises CompileError for what it cannot express."""
    services = sorted(
        (x for x in resources if isinstance(x, r.Service)),
        key=lambda s: (s.metadata.namespace, s.metadata.name),
    )
    workloads = [x for x in resources if isinstance(x, r.Workload)]
    clusters = tuple(_cluster(s, instances, workloads) for s in services)
    known: set[tuple[str, str]] = set()
    for c in clusters:
        if (c.namespace, c.name) in known:
            raise CompileError(f"Service {c.namespace}/{c.name}: defined twice")
        known.add((c.namespace, c.name))
    routes = sorted(
        (x for x in resources if isinstance(x, r.HTTPRoute)),
        key=lambda x: (x.metadata.namespace, x.metadata.name),
    )
    compiled = tuple(
        _route(route, parent, known) for route in routes for parent in route.spec.parent_refs
    )
    return Snapshot(version=version, node=node, clusters=clusters, routes=compiled)


def _cluster(
    service: r.Service, instances: Sequence[Instance], workloads: Sequence[r.Workload]
) -> Cluster:
    namespace, selector = service.metadata.namespace, service.spec.selector
    endpoints = [
        Endpoint(i.address, i.port, dict(i.labels), workload=i.name, identity=i.identity)
        for i in instances
        if i.namespace == namespace and r.selects(selector, i.labels)
    ]
    endpoints += [
        Endpoint(w.spec.address, w.spec.port, dict(w.spec.labels), workload=w.metadata.name)
        for w in workloads
        if w.metadata.namespace == namespace and r.selects(selector, w.spec.labels)
    ]
    return Cluster(
        name=service.metadata.name,
        namespace=namespace,
        ports=tuple(p.port for p in service.spec.ports),
        endpoints=tuple(endpoints),
    )


def _route(route: r.HTTPRoute, parent: r.ParentReference, known: set[tuple[str, str]]) -> Route:
    namespace = route.metadata.namespace
    where = f"HTTPRoute {namespace}/{route.metadata.name}"
    if parent.namespace not in (None, namespace):
        # The snapshot keys a route by its own namespace; a cross-namespace parent would be lost.
        raise CompileError(
            f"{where}: spec.parentRefs: a parent in another namespace is unsupported"
        )
    rules = tuple(
        _rule(rule, f"{where}: spec.rules[{i}]", namespace, known)
        for i, rule in enumerate(route.spec.rules)
    )
    return Route(
        name=route.metadata.name,
        parent_kind=parent.kind,
        parent_name=parent.name,
        namespace=namespace,
        hostnames=tuple(h.lower() for h in route.spec.hostnames),
        rules=rules,
    )


def _rule(
    rule: r.HTTPRouteRule, where: str, namespace: str, known: set[tuple[str, str]]
) -> RouteRule:
    if rule.filters or any(b.filters for b in rule.backend_refs):
        raise CompileError(f"{where}: filters are not supported by the proxy yet")
    backends = []
    for j, ref in enumerate(rule.backend_refs):
        backend = BackendRef(ref.name, ref.namespace or namespace, ref.port, ref.weight)
        if (backend.namespace, backend.service) not in known:
            raise CompileError(
                f"{where}.backendRefs[{j}]: no Service {backend.namespace}/{backend.service}"
            )
        backends.append(backend)
    return RouteRule(
        matches=tuple(_match(m, f"{where}.matches[{k}]") for k, m in enumerate(rule.matches)),
        backends=tuple(backends),
        timeout_ms=_timeout_ms(rule.timeouts),
    )


def _match(match: r.HTTPRouteMatch, where: str) -> RouteMatch:
    if match.path.type not in ("Exact", "PathPrefix"):
        raise CompileError(f"{where}.path: {match.path.type} paths are not supported yet")
    if match.query_params:
        raise CompileError(f"{where}.queryParams: query parameter matches are not supported yet")
    for i, header in enumerate(match.headers):
        if header.type != "Exact":
            raise CompileError(f"{where}.headers[{i}]: {header.type} headers are not supported yet")
    return RouteMatch(
        path=PathMatch(match.path.type, match.path.value),
        method=match.method,
        # Header names are case-insensitive (RFC 9110 section 5.1); the proxy compares lowercase.
        headers=tuple(HeaderMatch(h.name.lower(), h.value) for h in match.headers),
    )


def _timeout_ms(timeouts: r.HTTPRouteTimeouts | None) -> int:
    """The tighter of `request` and `backendRequest`: without retries there is one attempt."""
    if timeouts is None:
        return 0
    limits = [t for t in (timeouts.request, timeouts.backend_request) if t]
    return min(limits, default=0)
