"""DestinationRules + plait TrafficPolicies -> one `ClusterPolicy` per Service. Pure, no I/O.

Which DestinationRule applies to a Service, for a proxy in `client_namespace` (Istio's rules,
simplified where noted):

- Hosts: `reviews` (the rule's namespace), `reviews.prod`, `reviews.prod.svc`,
  `reviews.prod.svc.cluster.local`, or a wildcard (`*`, `*.prod.svc.cluster.local`, `*.local`)
  matched against the FQDN. Other hosts name no Service and do nothing here (`plait analyze`
  reports them).
- Visibility: `exportTo` empty or `*` is everyone; `.` is the rule's own namespace; names list
  namespaces; `~` is nobody. A `workloadSelector` limits a rule to matching client workloads
  in its namespace (every namespace for a rule in the root namespace).
- Precedence, first wins (Istio would merge same-host rules; plait picks one, predictably):
  an exact host over a wildcard, a longer wildcard over a shorter, a rule with a selector over
  one without, the client's namespace, then the Service's, then the root namespace, then by
  namespace/name.

Subsets, GAMMA style: traffic for `reviews`' subset `v2` (labels `version: v2`) travels to the
Service whose selector equals `reviews`' selector plus those labels (`reviews-v2`), if there is
one in the same namespace. That Service gets the rule's top-level policy with the subset's
`trafficPolicy` sections (loadBalancer, connectionPool, outlierDetection, tls) replacing the
top-level ones whole, as Istio merges them; a DestinationRule naming that Service directly
takes precedence. Subsets matching no Service do nothing (`plait analyze` warns).

plait's `TrafficPolicy` (one per Service; the first by name wins) then adds PEAK_EWMA, the
retry budget, active health checks, latency back-off and the fallback. Fields the proxy cannot
honour are a `TrafficCompileError` naming the resource and field, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from plait.config import resources as r
from plait.config.traffic_policy import (
    BudgetPolicy,
    ClusterPolicy,
    HealthCheckPolicy,
    LatencyBackoff,
    LbPolicy,
    OutlierPolicy,
    PoolLimits,
    ServiceRef,
    TrafficPolicyError,
)
from plait.config.traffic_resources import PlaitTrafficPolicy

__all__ = ["DEFAULT_ROOT_NAMESPACE", "TrafficCompileError", "compile_traffic_policies"]

DEFAULT_ROOT_NAMESPACE = "istio-system"  # Istio's MeshConfig.rootNamespace default
CLUSTER_DOMAIN = "svc.cluster.local"
_SIMPLE = {
    "UNSPECIFIED": "LEAST_REQUEST",  # Istio's default
    "LEAST_REQUEST": "LEAST_REQUEST",
    "LEAST_CONN": "LEAST_REQUEST",  # Istio: deprecated alias of LEAST_REQUEST
    "ROUND_ROBIN": "ROUND_ROBIN",
    "RANDOM": "RANDOM",
}
_SECTIONS = ("load_balancer", "connection_pool", "outlier_detection", "tls")

Key = tuple[str, str]


class TrafficCompileError(ValueError):
    """A policy the proxy cannot honour; the message names the resource and the field."""


def compile_traffic_policies(
    resources: Iterable[object],
    client_namespace: str = "default",
    client_labels: Mapping[str, str] | None = None,
    root_namespace: str = DEFAULT_ROOT_NAMESPACE,
) -> dict[Key, ClusterPolicy]:
    """The policy of every Service some rule or TrafficPolicy applies to, by (namespace, name);
    a Service missing from the result uses `ClusterPolicy()`."""
    items = list(resources)
    services = sorted(
        (x for x in items if isinstance(x, r.Service)),
        key=lambda s: (s.metadata.namespace, s.metadata.name),
    )
    rules = [
        x
        for x in items
        if isinstance(x, r.DestinationRule)
        and _visible(x, client_namespace, client_labels or {}, root_namespace)
    ]
    chosen = {_key(s): _best_rule(s, rules, client_namespace, root_namespace) for s in services}
    out: dict[Key, ClusterPolicy] = {}
    for key, rule in chosen.items():
        if rule is not None:
            out[key] = _compile(_where(rule), rule.spec.traffic_policy)
    for service in services:  # subsets, after every direct rule is known (direct ones win)
        rule = chosen[_key(service)]
        if rule is None:
            continue
        for i, subset in enumerate(rule.spec.subsets):
            selector = {**service.spec.selector, **subset.labels}
            for target in services:
                key = _key(target)
                if (
                    target is service
                    or target.metadata.namespace != service.metadata.namespace
                    or dict(target.spec.selector) != selector
                    or key in out
                ):
                    continue
                out[key] = _compile(
                    _where(rule),
                    rule.spec.traffic_policy,
                    subset.traffic_policy,
                    f"{_where(rule)}: spec.subsets[{i}].trafficPolicy",
                )
    known = {_key(s) for s in services}
    taken: set[Key] = set()
    for tp in sorted(
        (x for x in items if isinstance(x, PlaitTrafficPolicy)),
        key=lambda x: (x.metadata.namespace, x.metadata.name),
    ):
        key = (tp.metadata.namespace, tp.spec.target_ref.name)
        if key not in known or key in taken:
            continue  # no such Service, or an earlier policy won
        taken.add(key)
        out[key] = _extend(out.get(key, ClusterPolicy()), tp, known)
    for key, policy in out.items():
        try:
            ClusterPolicy.from_dict(policy.to_dict(), "")
        except TrafficPolicyError as e:
            raise TrafficCompileError(f"policy for Service {key[0]}/{key[1]}: {e}") from None
    return out


# --- which rule ------------------------------------------------------------------------------


def _key(service: r.Service) -> Key:
    return (service.metadata.namespace, service.metadata.name)


def _where(rule: r.DestinationRule) -> str:
    return f"DestinationRule {rule.metadata.namespace}/{rule.metadata.name}"


def _visible(
    rule: r.DestinationRule, client_ns: str, client_labels: Mapping[str, str], root_ns: str
) -> bool:
    ns, spec = rule.metadata.namespace, rule.spec
    export = spec.export_to
    exported = not export or "*" in export or client_ns in export
    if not exported and not ("." in export and client_ns == ns):
        return False
    if spec.workload_selector is not None:
        if ns not in (client_ns, root_ns):
            return False
        wanted = spec.workload_selector.match_labels
        return all(client_labels.get(k) == v for k, v in wanted.items())
    return True


def _host_rank(host: str, rule_ns: str, service: r.Service) -> int | None:
    """How specifically `host` names `service`: higher is more specific, None: not at all."""
    name, ns = service.metadata.name, service.metadata.namespace
    host = host.lower()
    fqdn = f"{name}.{ns}.{CLUSTER_DOMAIN}"
    if host in (f"{name}.{ns}", f"{name}.{ns}.svc", fqdn) or (host == name and ns == rule_ns):
        return 1_000
    if host == "*":
        return 0
    if host.startswith("*.") and fqdn.endswith(host[1:]):
        return len(host)
    return None


def _best_rule(
    service: r.Service, rules: list[r.DestinationRule], client_ns: str, root_ns: str
) -> r.DestinationRule | None:
    ns_rank = {client_ns: 0, service.metadata.namespace: 1, root_ns: 2}
    best: tuple[Any, ...] | None = None
    chosen = None
    for rule in rules:
        rank = _host_rank(rule.spec.host, rule.metadata.namespace, service)
        if rank is None:
            continue
        order = (
            -rank,
            rule.spec.workload_selector is None,
            ns_rank.get(rule.metadata.namespace, 3),
            rule.metadata.namespace,
            rule.metadata.name,
        )
        if best is None or order < best:
            best, chosen = order, rule
    return chosen


# --- DestinationRule sections -----------------------------------------------------------------


def _compile(
    rule_where: str,
    top: r.TrafficPolicy | None,
    subset: r.TrafficPolicy | None = None,
    subset_where: str = "",
) -> ClusterPolicy:
    """Istio's MergeTrafficPolicy: each section the subset sets replaces the top-level one."""
    sections: dict[str, tuple[Any, str]] = {}
    for given, where in ((top, f"{rule_where}: spec.trafficPolicy"), (subset, subset_where)):
        if given is None:
            continue
        for name in _SECTIONS:
            value = getattr(given, name)
            if value is not None:
                sections[name] = (value, where)
    policy = ClusterPolicy()
    if "load_balancer" in sections:
        lb, where = sections["load_balancer"]
        policy = replace(policy, load_balancer=_load_balancer(lb, f"{where}.loadBalancer"))
    if "connection_pool" in sections:
        pool, where = sections["connection_pool"]
        policy = replace(policy, connection_pool=_pool(pool, f"{where}.connectionPool"))
    if "outlier_detection" in sections:
        od, _ = sections["outlier_detection"]
        policy = _outlier(policy, od)
    if "tls" in sections:
        tls, where = sections["tls"]
        policy = _tls(policy, tls, f"{where}.tls")
    return policy


def _unsupported(where: str, what: str) -> TrafficCompileError:
    return TrafficCompileError(f"{where}: {what} is not supported by the proxy")


def _load_balancer(lb: r.LoadBalancerSettings, where: str) -> LbPolicy:
    if lb.simple is not None and lb.consistent_hash is not None:
        raise TrafficCompileError(f"{where}: set simple or consistentHash, not both")
    ch = lb.consistent_hash
    if ch is None:
        simple = lb.simple or "UNSPECIFIED"
        if simple not in _SIMPLE:
            raise _unsupported(f"{where}.simple", simple)
        return LbPolicy(kind=_SIMPLE[simple])
    where = f"{where}.consistentHash"
    if ch.maglev is not None:
        raise _unsupported(f"{where}.maglev", "maglev (use ringHash)")
    sources = [
        ("header", (ch.http_header_name or "").lower(), ch.http_header_name is not None),
        ("cookie", ch.http_cookie.name if ch.http_cookie else "", ch.http_cookie is not None),
        ("source_ip", "", bool(ch.use_source_ip)),
        (
            "query_parameter",
            ch.http_query_parameter_name or "",
            ch.http_query_parameter_name is not None,
        ),
    ]
    chosen = [(src, name) for src, name, present in sources if present]
    if len(chosen) != 1:
        raise TrafficCompileError(
            f"{where}: set exactly one of httpHeaderName, httpCookie, useSourceIp, "
            "httpQueryParameterName"
        )
    cookie = ch.http_cookie
    if cookie is not None and (cookie.ttl is not None or cookie.path is not None):
        # Envoy would set the cookie on responses; plait only reads it, so say so.
        raise _unsupported(f"{where}.httpCookie", "generating the cookie (ttl, path)")
    ring = ch.ring_hash.minimum_ring_size if ch.ring_hash else None
    (source, name) = chosen[0]
    return LbPolicy(
        kind="RING_HASH",
        hash_on=source,
        hash_name=name,
        minimum_ring_size=ring or LbPolicy().minimum_ring_size,
    )


def _pool(pool: r.ConnectionPoolSettings, where: str) -> PoolLimits:
    tcp, http = pool.tcp, pool.http
    limits = PoolLimits()
    if tcp is not None:
        if tcp.max_connection_duration is not None:
            raise _unsupported(f"{where}.tcp.maxConnectionDuration", "maxConnectionDuration")
        limits = replace(
            limits,
            max_connections=_or(tcp.max_connections, limits.max_connections),
            connect_timeout_ms=_or(tcp.connect_timeout, 0),
            idle_timeout_ms=_or(tcp.idle_timeout, 0),
        )
    if http is not None:
        if http.use_client_protocol:
            raise _unsupported(f"{where}.http.useClientProtocol", "useClientProtocol")
        if http.max_concurrent_streams is not None:
            raise _unsupported(f"{where}.http.maxConcurrentStreams", "maxConcurrentStreams")
        limits = replace(
            limits,
            max_pending_requests=_or(http.http1_max_pending_requests, limits.max_pending_requests),
            max_requests=_or(http.http2_max_requests, limits.max_requests),
            max_requests_per_connection=_or(http.max_requests_per_connection, 0),
            h2_upgrade_policy=http.h2_upgrade_policy or "DEFAULT",
            max_retries=_or(http.max_retries, limits.max_retries),
            # http.idleTimeout is the one for HTTP pools; tcp.idleTimeout covers it otherwise.
            idle_timeout_ms=_or(http.idle_timeout, limits.idle_timeout_ms),
        )
    return limits


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def _outlier(policy: ClusterPolicy, od: r.OutlierDetection) -> ClusterPolicy:
    d = OutlierPolicy()
    outlier = OutlierPolicy(
        consecutive_5xx=_or(od.consecutive_5xx_errors, d.consecutive_5xx),
        consecutive_gateway_errors=_or(od.consecutive_gateway_errors, d.consecutive_gateway_errors),
        interval_ms=_or(od.interval, d.interval_ms),
        base_ejection_ms=_or(od.base_ejection_time, d.base_ejection_ms),
        max_ejection_percent=_or(od.max_ejection_percent, d.max_ejection_percent),
    )
    # Istio maps minHealthPercent onto Envoy's panic threshold; unset keeps Envoy's 50 %.
    panic = _or(od.min_health_percent, policy.panic_threshold_percent)
    return replace(policy, outlier=outlier, panic_threshold_percent=panic)


def _tls(policy: ClusterPolicy, tls: r.ClientTLSSettings, where: str) -> ClusterPolicy:
    if tls.mode == "MUTUAL":
        raise _unsupported(f"{where}.mode", "MUTUAL (use ISTIO_MUTUAL or SIMPLE)")
    for name, value in (
        ("clientCertificate", tls.client_certificate),
        ("privateKey", tls.private_key),
        ("credentialName", tls.credential_name),
    ):
        if value is not None:
            raise _unsupported(f"{where}.{name}", name)
    if tls.insecure_skip_verify:
        raise _unsupported(f"{where}.insecureSkipVerify", "skipping verification")
    simple = tls.mode == "SIMPLE"
    if not simple and (tls.ca_certificates or tls.sni or tls.subject_alt_names):
        raise TrafficCompileError(
            f"{where}: caCertificates, sni and subjectAltNames apply to mode SIMPLE only "
            "(mesh mTLS verifies each endpoint's own SPIFFE identity)"
        )
    return replace(
        policy,
        tls_mode=tls.mode,
        ca_file=tls.ca_certificates or "",
        sni=tls.sni or "",
        subject_alt_names=tuple(tls.subject_alt_names),
    )


# --- plait's TrafficPolicy ----------------------------------------------------------------------


def _extend(policy: ClusterPolicy, tp: PlaitTrafficPolicy, known: set[Key]) -> ClusterPolicy:
    spec = tp.spec
    where = f"TrafficPolicy {tp.metadata.namespace}/{tp.metadata.name}: spec"
    if spec.load_balancer is not None:
        if policy.load_balancer != LbPolicy():
            raise TrafficCompileError(
                f"{where}.loadBalancer: the DestinationRule for this Service already sets "
                "loadBalancer; set it in one place"
            )
        ewma = spec.load_balancer.peak_ewma
        d = LbPolicy()
        lb = LbPolicy(
            kind="PEAK_EWMA",
            ewma_default_rtt_ms=float(_or(ewma.default_rtt, int(d.ewma_default_rtt_ms))),
            ewma_decay_ms=float(_or(ewma.decay, int(d.ewma_decay_ms))),
        )
        policy = replace(policy, load_balancer=lb)
    if spec.retry_budget is not None:
        b, d_b = spec.retry_budget, BudgetPolicy()
        budget = BudgetPolicy(
            retry_ratio=d_b.retry_ratio if b.retry_ratio is None else b.retry_ratio,
            min_retries_per_second=_or(b.min_retries_per_second, d_b.min_retries_per_second),
            ttl_ms=_or(b.ttl, d_b.ttl_ms),
        )
        policy = replace(policy, retry_budget=budget)
    if spec.health_check is not None:
        hc, d_h = spec.health_check, HealthCheckPolicy()
        check = HealthCheckPolicy(
            kind="http" if hc.http is not None else "tcp",
            path=hc.http.path if hc.http is not None else "",
            interval_ms=_or(hc.interval, d_h.interval_ms),
            timeout_ms=_or(hc.timeout, d_h.timeout_ms),
            unhealthy_threshold=_or(hc.unhealthy_threshold, d_h.unhealthy_threshold),
            healthy_threshold=_or(hc.healthy_threshold, d_h.healthy_threshold),
        )
        policy = replace(policy, health_check=check)
    if spec.latency_backoff is not None:
        lat, d_l = spec.latency_backoff, LatencyBackoff()
        backoff = LatencyBackoff(
            factor=d_l.factor if lat.factor is None else lat.factor,
            min_requests=_or(lat.min_requests, d_l.min_requests),
        )
        # Without outlierDetection only latency ejects: the error runs stay off, as in Istio.
        base = policy.outlier or OutlierPolicy(consecutive_5xx=0, consecutive_gateway_errors=0)
        policy = replace(policy, outlier=replace(base, latency=backoff))
    if spec.fallback is not None:
        ref = ServiceRef(spec.fallback.name, spec.fallback.namespace or tp.metadata.namespace)
        if (ref.namespace, ref.name) not in known:
            raise TrafficCompileError(f"{where}.fallback: no Service {ref.namespace}/{ref.name}")
        if (ref.namespace, ref.name) == (tp.metadata.namespace, spec.target_ref.name):
            raise TrafficCompileError(f"{where}.fallback: a Service cannot be its own fallback")
        policy = replace(policy, fallback=ref)
    return policy
