"""The compiler: user resources + running instances -> one proxy's snapshot. Pure, no I/O.

Like Istio pilot's generators it takes only its inputs, so the same inputs always give the same
snapshot. Services become clusters whose endpoints are the instances (and static Workloads) their
selector picks; each HTTPRoute becomes one snapshot route per parentRef, its filters resolved
(ExtensionRefs to HTTPFaults included). Output is sorted by namespace/name, which is also how the
proxy breaks precedence ties between routes: the Gateway API asks for the oldest route first, but
the store records no creation time, so namespace/name order is all there is.
What the snapshot cannot express is a CompileError naming route and field, never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from plait.config import resources as r
from plait.config.fault_resources import FAULT_GROUP, GRPC_CODES, HTTPFault
from plait.config.snapshot import (
    NO_FILTERS,
    BackendRef,
    Cluster,
    Endpoint,
    Fault,
    Filters,
    HeaderMatch,
    HeaderModifier,
    Mirror,
    Node,
    PathMatch,
    PathModifier,
    QueryParamMatch,
    Redirect,
    Rewrite,
    Route,
    RouteMatch,
    RouteRule,
    Snapshot,
)
from plait.config.traffic_policy import (
    GRPC_RETRY_STATUS,
    ClusterPolicy,
    RetryPolicyConfig,
    parse_retry_on,
)
from plait.control.traffic_compiler import TrafficCompileError, compile_traffic_policies
from plait.control.vips import DEFAULT_SERVICE_CIDR, VipRangeError, allocate_vips

__all__ = ["CompileError", "Instance", "compile_snapshot"]

T = TypeVar("T")
Known = set[tuple[str, str]]
Faults = Mapping[tuple[str, str], HTTPFault]


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
    protocol_hint: str = ""  # "h2": its proxy downgrades HTTP/1.1 carried over HTTP/2


def compile_snapshot(
    resources: Sequence[r.Resource | HTTPFault],
    instances: Sequence[Instance],
    node: Node,
    version: str,
    service_cidr: str = DEFAULT_SERVICE_CIDR,
) -> Snapshot:
    """The snapshot for the proxy `node`; raises CompileError for what it cannot express.
    Each cluster carries its Service's VIP from `service_cidr` (see `vips`)."""
    services = sorted(
        (x for x in resources if isinstance(x, r.Service)),
        key=lambda s: (s.metadata.namespace, s.metadata.name),
    )
    workloads = [x for x in resources if isinstance(x, r.Workload)]
    endpoints = _EndpointIndex(instances, workloads)
    try:
        policies = compile_traffic_policies(resources, node.namespace, node.labels)
    except TrafficCompileError as exc:
        raise CompileError(str(exc)) from None
    try:
        keys = [(s.metadata.namespace, s.metadata.name) for s in services]
        vips = allocate_vips(keys, service_cidr)
    except VipRangeError as exc:
        raise CompileError(str(exc)) from None
    clusters = tuple(_cluster(s, endpoints, policies, vips) for s in services)
    known: Known = set()
    for c in clusters:
        if (c.namespace, c.name) in known:
            raise CompileError(f"Service {c.namespace}/{c.name}: defined twice")
        known.add((c.namespace, c.name))
    faults: dict[tuple[str, str], HTTPFault] = {}
    for f in (x for x in resources if isinstance(x, HTTPFault)):
        key = (f.metadata.namespace, f.metadata.name)
        if key in faults:
            raise CompileError(f"HTTPFault {key[0]}/{key[1]}: defined twice")
        faults[key] = f
    routes = sorted(
        (x for x in resources if isinstance(x, r.HTTPRoute | r.GRPCRoute)),
        key=lambda x: (x.metadata.namespace, x.metadata.name),
    )
    compiled = tuple(
        _route(route, parent, known, faults)
        for route in routes
        for parent in route.spec.parent_refs
    )
    return Snapshot(version=version, node=node, clusters=clusters, routes=compiled)


class _EndpointIndex:
    """Every endpoint candidate, indexed by (namespace, label, value).

    A selector then costs the length of its rarest label's list, not a scan of every
    instance: 1,000 Services over 10,000 endpoints is 10,000 checks instead of 10 million.
    Candidates keep their input order (instances first, then static Workloads), so a
    cluster's endpoints are exactly the ones, in the order, a scan would find.
    """

    def __init__(self, instances: Sequence[Instance], workloads: Sequence[r.Workload]) -> None:
        self._labels: list[Mapping[str, str]] = []
        self._endpoints: list[Endpoint] = []
        self._by_label: dict[tuple[str, str, str], list[int]] = {}
        for i in instances:
            self._add(
                i.namespace,
                i.labels,
                Endpoint(
                    i.address,
                    i.port,
                    dict(i.labels),
                    workload=i.name,
                    identity=i.identity,
                    protocol_hint=i.protocol_hint,
                ),
            )
        for w in workloads:
            spec = w.spec
            endpoint = Endpoint(
                spec.address, spec.port, dict(spec.labels), workload=w.metadata.name
            )
            self._add(w.metadata.namespace, spec.labels, endpoint)

    def _add(self, namespace: str, labels: Mapping[str, str], endpoint: Endpoint) -> None:
        position = len(self._endpoints)
        self._labels.append(labels)
        self._endpoints.append(endpoint)
        for item in labels.items():
            self._by_label.setdefault((namespace, *item), []).append(position)

    def select(self, namespace: str, selector: Mapping[str, str]) -> tuple[Endpoint, ...]:
        """The endpoints in `namespace` whose labels `selector` selects (r.selects)."""
        if not selector:
            return ()  # an empty selector selects nothing, as in Kubernetes
        postings = [self._by_label.get((namespace, *item), []) for item in selector.items()]
        rarest = min(postings, key=len)
        return tuple(self._endpoints[p] for p in rarest if r.selects(selector, self._labels[p]))


def _cluster(
    service: r.Service,
    endpoints: _EndpointIndex,
    policies: Mapping[tuple[str, str], ClusterPolicy],
    vips: Mapping[tuple[str, str], str],
) -> Cluster:
    namespace = service.metadata.namespace
    return Cluster(
        name=service.metadata.name,
        namespace=namespace,
        ports=tuple(p.port for p in service.spec.ports),
        protocols=tuple(p.protocol for p in service.spec.ports),
        endpoints=endpoints.select(namespace, service.spec.selector),
        policy=policies.get((namespace, service.metadata.name), _DEFAULT_POLICY),
        vip=vips.get((namespace, service.metadata.name), ""),
    )


_DEFAULT_POLICY = ClusterPolicy()


def _route(
    route: r.HTTPRoute | r.GRPCRoute, parent: r.ParentReference, known: Known, faults: Faults
) -> Route:
    namespace = route.metadata.namespace
    where = f"{route.kind} {namespace}/{route.metadata.name}"
    if parent.namespace not in (None, namespace):
        # The snapshot keys a route by its own namespace; a cross-namespace parent would be lost.
        raise CompileError(
            f"{where}: spec.parentRefs: a parent in another namespace is unsupported"
        )
    context = _Context(namespace, known, faults)
    given: Sequence[r.HTTPRouteRule | r.GRPCRouteRule] = route.spec.rules
    rules = tuple(context.rule(rule, f"{where}: spec.rules[{i}]") for i, rule in enumerate(given))
    return Route(
        name=route.metadata.name,
        parent_kind=parent.kind,
        parent_name=parent.name,
        namespace=namespace,
        hostnames=tuple(h.lower() for h in route.spec.hostnames),
        rules=rules,
    )


@dataclass(frozen=True)
class _Context:
    """What the rules of one route resolve against: its namespace, Services and HTTPFaults."""

    namespace: str
    known: Known
    faults: Faults

    def rule(self, rule: r.HTTPRouteRule | r.GRPCRouteRule, where: str) -> RouteRule:
        filters = self.filters(rule.filters, f"{where}.filters")
        backends = []
        refs: Sequence[r.HTTPBackendRef | r.GRPCBackendRef] = rule.backend_refs
        for j, ref in enumerate(refs):
            at = f"{where}.backendRefs[{j}]"
            namespace = ref.namespace or self.namespace
            if (namespace, ref.name) not in self.known:
                raise CompileError(f"{at}: no Service {namespace}/{ref.name}")
            own = self.filters(ref.filters, f"{at}.filters")
            if own.redirect is not None:
                raise CompileError(f"{at}.filters: a RequestRedirect belongs on the rule")
            backends.append(BackendRef(ref.name, namespace, ref.port, ref.weight, own))
        timeouts = r.HTTPRouteTimeouts()  # gRPC callers send grpc-timeout instead
        try:
            if isinstance(rule, r.GRPCRouteRule):
                matches = _grpc_matches(rule.matches, f"{where}.matches")
            else:
                matches = tuple(
                    _match(m, f"{where}.matches[{k}]") for k, m in enumerate(rule.matches)
                )
                timeouts = rule.timeouts or timeouts
            return RouteRule(
                matches=matches,
                backends=tuple(backends),
                timeout_ms=timeouts.request or 0,
                backend_timeout_ms=timeouts.backend_request or 0,
                filters=filters,
                retries=_retries(rule.retry),
            )
        except CompileError:
            raise
        except ValueError as exc:
            raise CompileError(f"{where}: {exc}") from None

    def filters(
        self, filters: Sequence[r.HTTPRouteFilter | r.GRPCRouteFilter], where: str
    ) -> Filters:
        out, seen = NO_FILTERS, set[str]()
        for i, f in enumerate(filters):
            if f.type in seen and f.type != "RequestMirror":
                raise CompileError(f"{where}[{i}]: a second {f.type} (only RequestMirror repeats)")
            seen.add(f.type)
            try:
                out = self.add(out, f)
            except ValueError as exc:
                raise CompileError(f"{where}[{i}]: {exc}") from None
        return out

    def add(self, out: Filters, f: r.HTTPRouteFilter | r.GRPCRouteFilter) -> Filters:
        """`out` with the filter `f` in its slot."""
        if f.request_header_modifier is not None:
            return replace(out, request_headers=_header_modifier(f.request_header_modifier))
        if f.response_header_modifier is not None:
            return replace(out, response_headers=_header_modifier(f.response_header_modifier))
        if f.request_redirect is not None:
            x = f.request_redirect
            redirect = Redirect(x.scheme, _lower(x.hostname), x.port, _path(x.path), x.status_code)
            return replace(out, redirect=redirect)
        if f.url_rewrite is not None:
            rw = f.url_rewrite
            return replace(out, rewrite=Rewrite(_lower(rw.hostname), _path(rw.path)))
        if f.request_mirror is not None:
            return replace(out, mirrors=(*out.mirrors, self.mirror(f.request_mirror)))
        assert f.extension_ref is not None  # the resource model guarantees one config per type
        return replace(out, fault=self.fault(f.extension_ref))

    def mirror(self, m: r.HTTPRequestMirrorFilter) -> Mirror:
        ref = m.backend_ref
        namespace = ref.namespace or self.namespace
        if (namespace, ref.name) not in self.known:
            raise ValueError(f"requestMirror.backendRef: no Service {namespace}/{ref.name}")
        if m.percent is not None and m.fraction is not None:
            raise ValueError("requestMirror: set percent or fraction, not both")
        share = (m.percent, 100) if m.percent is not None else (100, 100)
        if m.fraction is not None:
            share = (m.fraction.numerator, m.fraction.denominator)
        return Mirror(ref.name, namespace, ref.port, *share)

    def fault(self, ref: r.LocalObjectReference) -> Fault:
        if (ref.group, ref.kind) != (FAULT_GROUP, "HTTPFault"):
            raise ValueError(
                f"extensionRef: unsupported {ref.group}/{ref.kind}; "
                f"plait resolves {FAULT_GROUP}/HTTPFault"
            )
        found = self.faults.get((self.namespace, ref.name))
        if found is None:
            raise ValueError(f"extensionRef: no HTTPFault {self.namespace}/{ref.name}")
        delay, abort = found.spec.delay, found.spec.abort
        grpc = abort.grpc_status if abort else None
        return Fault(
            delay_ms=delay.fixed_delay if delay else 0,
            delay_percent=delay.percentage.value if delay else 0.0,
            abort_http_status=abort.http_status if abort else None,
            abort_grpc_status=GRPC_CODES[grpc] if grpc else None,
            abort_percent=abort.percentage.value if abort else 0.0,
        )


def _lower(hostname: str | None) -> str | None:
    return hostname.lower() if hostname is not None else None


def _header_modifier(f: r.HTTPHeaderFilter) -> HeaderModifier:
    # Header names are case-insensitive (RFC 9110 section 5.1); the proxy compares lowercase.
    return HeaderModifier(
        set=tuple((h.name.lower(), h.value) for h in f.set),
        add=tuple((h.name.lower(), h.value) for h in f.add),
        remove=tuple(name.lower() for name in f.remove),
    )


def _path(m: r.HTTPPathModifier | None) -> PathModifier | None:
    if m is None:
        return None
    value = m.replace_full_path if m.type == "ReplaceFullPath" else m.replace_prefix_match
    assert value is not None  # the resource model checks the type's field is set
    return PathModifier(m.type, value)


def _match(match: r.HTTPRouteMatch, where: str) -> RouteMatch:
    # The spec: of several header (or query) matches on one name, only the first counts.
    headers: dict[str, HeaderMatch] = {}
    for i, h in enumerate(match.headers):
        name = h.name.lower()  # the proxy compares lowercase names
        if name not in headers:
            headers[name] = _checked(HeaderMatch, f"{where}.headers[{i}]", name, h.value, h.type)
    params: dict[str, QueryParamMatch] = {}
    for i, q in enumerate(match.query_params):
        if q.name not in params:
            at = f"{where}.queryParams[{i}]"
            params[q.name] = _checked(QueryParamMatch, at, q.name, q.value, q.type)
    return RouteMatch(
        path=_checked(PathMatch, f"{where}.path", match.path.type, match.path.value),
        method=match.method,
        headers=tuple(headers.values()),
        query_params=tuple(params.values()),
    )


def _grpc_matches(matches: Sequence[r.GRPCRouteMatch], where: str) -> tuple[RouteMatch, ...]:
    """GRPCRoute matches as HTTP matches on the request path `/package.Service/Method`, POST.

    Exact service and method: an Exact path; a service alone: the PathPrefix `/service/`; a
    method alone, or RegularExpression names: a path regex. No matches: every gRPC call.
    """
    if not matches:
        return (RouteMatch(path=PathMatch("PathPrefix", "/"), method="POST"),)
    return tuple(_grpc_match(m, f"{where}[{k}]") for k, m in enumerate(matches))


def _grpc_match(match: r.GRPCRouteMatch, where: str) -> RouteMatch:
    headers: dict[str, HeaderMatch] = {}
    for i, h in enumerate(match.headers):
        name = h.name.lower()
        if name not in headers:  # as for HTTPRoute: of several on one name, the first counts
            headers[name] = _checked(HeaderMatch, f"{where}.headers[{i}]", name, h.value, h.type)
    return RouteMatch(
        path=_checked(PathMatch, f"{where}.method", *_grpc_path(match.method)),
        method="POST",
        headers=tuple(headers.values()),
    )


def _grpc_path(m: r.GRPCMethodMatch | None) -> tuple[str, str]:
    """(path match type, value) for a GRPCMethodMatch."""
    if m is None:
        return ("PathPrefix", "/")
    if m.type == "Exact":
        if m.service is not None and m.method is not None:
            return ("Exact", f"/{m.service}/{m.method}")
        if m.method is None:
            return ("PathPrefix", f"/{m.service}/")
        return ("RegularExpression", f"/[^/]+/{re.escape(m.method)}")
    service = f"(?:{m.service})" if m.service is not None else "[^/]+"
    method = f"(?:{m.method})" if m.method is not None else "[^/]+"
    return ("RegularExpression", f"/{service}/{method}")


def _checked(cls: type[T], where: str, *args: object) -> T:
    """`cls(*args)`, a ValueError (a regex refused, say) turned into a CompileError at `where`."""
    try:
        return cls(*args)
    except ValueError as exc:
        raise CompileError(f"{where}: {exc}") from None


def _retries(retry: r.HTTPRouteRetry | None) -> RetryPolicyConfig | None:
    """A rule's `retry` in the proxy's terms. Gateway API `codes` are retriable status codes;
    `retryOn` (plait's extension, Istio's syntax) adds conditions such as connect-failure."""
    if retry is None:
        return None
    conditions, codes = parse_retry_on(retry.retry_on) if retry.retry_on else ((), ())
    codes = tuple(dict.fromkeys((*codes, *retry.codes)))
    # gRPC conditions become the statuses they name; the HTTP ones stay conditions (with the
    # provably safe connection failures by default, also when only gRPC statuses are given).
    grpc = frozenset(GRPC_RETRY_STATUS[c] for c in conditions if c in GRPC_RETRY_STATUS)
    http = tuple(c for c in conditions if c not in GRPC_RETRY_STATUS)
    retry_on = tuple(
        dict.fromkeys(
            (
                *(http or ("connect-failure", "refused-stream")),
                *(("retriable-status-codes",) if codes else ()),
            )
        )
    )
    base = RetryPolicyConfig()
    return RetryPolicyConfig(
        attempts=retry.attempts if retry.attempts is not None else base.attempts,
        per_try_timeout_ms=retry.per_try_timeout or 0,
        retry_on=retry_on,
        retriable_status_codes=codes,
        backoff_base_ms=retry.backoff or base.backoff_base_ms,
        backoff_max_ms=max(base.backoff_max_ms, 10 * (retry.backoff or base.backoff_base_ms)),
        grpc_statuses=grpc,
    )
