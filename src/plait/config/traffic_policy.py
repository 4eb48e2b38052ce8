"""Traffic policy compiled for the proxy: how to balance, limit, eject and retry, per cluster.

The control plane compiles DestinationRules and plait `TrafficPolicy` resources into one
`ClusterPolicy` per Service (`plait.control.traffic_compiler`) and route retries into
`RetryPolicyConfig`; the proxy reads them with `from_dict` as part of its snapshot and builds its
runtime objects (balancer, breaker, budget, detector) once per snapshot. All values are plain
numbers in milliseconds, counts and percents; every default carries the source it follows.

The dict shape is the field names in snake_case, nested policies as mappings, tuples as lists.
Errors name the field path (`clusters[1].policy.outlier.interval_ms: must be > 0`).
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Self, Union, get_args, get_origin, get_type_hints

__all__ = [
    "GRPC_RETRY_ON",
    "GRPC_RETRY_STATUS",
    "HASH_SOURCES",
    "HTTP_RETRY_ON",
    "LB_KINDS",
    "TLS_MODES",
    "UNLIMITED",
    "BudgetPolicy",
    "ClusterPolicy",
    "HealthCheckPolicy",
    "LatencyBackoff",
    "LbPolicy",
    "OutlierPolicy",
    "PoolLimits",
    "RetryPolicyConfig",
    "ServiceRef",
    "TrafficPolicyError",
    "parse_retry_on",
]

# LEAST_REQUEST first: Istio's default. PEAK_EWMA is plait's (Linkerd's algorithm).
LB_KINDS = ("LEAST_REQUEST", "ROUND_ROBIN", "RANDOM", "PEAK_EWMA", "RING_HASH")
HASH_SOURCES = ("header", "cookie", "source_ip", "query_parameter")
# AUTO: mTLS exactly to endpoints that have a proxy identity (Istio's auto mTLS).
TLS_MODES = ("AUTO", "ISTIO_MUTUAL", "DISABLE", "SIMPLE")
HEALTH_CHECK_KINDS = ("tcp", "http")
# Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on conditions that plait implements.
HTTP_RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "connect-failure",
        "refused-stream",
        "retriable-4xx",
        "retriable-status-codes",
    }
)
# Envoy's x-envoy-retry-grpc-on names (Istio's retryOn) -> gRPC status (grpc/doc/statuscodes.md).
GRPC_RETRY_STATUS = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}
GRPC_RETRY_ON = frozenset(GRPC_RETRY_STATUS)
# 2^32-1: Istio's connectionPool default for every limit, i.e. none.
UNLIMITED = 2**32 - 1


H2_UPGRADE_POLICIES = ("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE")


class TrafficPolicyError(ValueError):
    """A traffic policy the proxy cannot apply; the message starts with the field path."""


def parse_retry_on(text: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Istio's `retryOn` string -> (conditions, status codes); `"503"` implies the codes condition.

    Istio accepts HTTP status codes among the conditions (`5xx,503`) and turns them into
    Envoy's `retriable-status-codes`; so do we.
    """
    conditions: list[str] = []
    codes: list[int] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        if item.isdigit():
            code = int(item)
            if not 100 <= code <= 599:
                raise ValueError(f"{item!r} is not an HTTP status code")
            codes.append(code)
            item = "retriable-status-codes"
        elif item not in HTTP_RETRY_ON and item not in GRPC_RETRY_ON:
            known = ", ".join(sorted(HTTP_RETRY_ON | GRPC_RETRY_ON))
            raise ValueError(f"unknown retry condition {item!r}; known: {known} or a status code")
        if item not in conditions:
            conditions.append(item)
    return tuple(conditions), tuple(dict.fromkeys(codes))


# --- the dataclasses --------------------------------------------------------------------------


class _Policy:
    """Shared `from_dict`/`to_dict` for the frozen dataclasses below, driven by their fields."""

    __slots__ = ()

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Self:
        obj = cls(**_read_fields(cls, data, path))
        obj._check(path)
        return obj

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def _check(self, path: str) -> None:
        """Cross-field and range rules; raise TrafficPolicyError naming the field."""


@dataclass(frozen=True, slots=True)
class LbPolicy(_Policy):
    """`trafficPolicy.loadBalancer`: which balancer, and what RING_HASH hashes on."""

    kind: str = "LEAST_REQUEST"  # Istio's default: P2C on requests in flight
    hash_on: str = ""  # RING_HASH: header | cookie | source_ip | query_parameter
    hash_name: str = ""  # the header (lower case), cookie or query parameter name
    # Envoy's default minimum ring size; each host gets at least 256 points (see RingHash).
    minimum_ring_size: int = 1024
    # Linkerd's defaults: a new endpoint is assumed to answer in 30 ms; the peak decays over 10 s.
    ewma_default_rtt_ms: float = 30.0
    ewma_decay_ms: float = 10_000.0

    def _check(self, path: str) -> None:
        _one_of(self.kind, LB_KINDS, path, "kind")
        if self.kind == "RING_HASH":
            _one_of(self.hash_on, HASH_SOURCES, path, "hash_on")
            if self.hash_on != "source_ip" and not self.hash_name:
                _fail(path, "hash_name", f"required when hash_on is {self.hash_on}")
            if self.hash_on == "header" and self.hash_name != self.hash_name.lower():
                _fail(path, "hash_name", "header names are compared in lower case")
        elif self.hash_on or self.hash_name:
            _fail(path, "hash_on", "only RING_HASH hashes")
        _at_least(self, path, "minimum_ring_size", 1)
        _above_zero(self, path, "ewma_default_rtt_ms")
        _above_zero(self, path, "ewma_decay_ms")


@dataclass(frozen=True, slots=True)
class PoolLimits(_Policy):
    """`trafficPolicy.connectionPool`: circuit-breaking limits, per cluster, per proxy."""

    max_connections: int = UNLIMITED  # tcp.maxConnections
    max_pending_requests: int = UNLIMITED  # http.http1MaxPendingRequests
    max_requests: int = UNLIMITED  # http.http2MaxRequests (Envoy applies it to every protocol)
    max_requests_per_connection: int = 0  # http.maxRequestsPerConnection; 0: no limit (Istio)
    max_retries: int = UNLIMITED  # http.maxRetries: retries in flight at once
    connect_timeout_ms: int = 0  # tcp.connectTimeout; 0: the proxy's --connect-timeout
    idle_timeout_ms: int = 0  # http.idleTimeout; 0: the proxy's own idle timeout
    # http.h2UpgradePolicy: HTTP/1.1 requests to peer proxies over one multiplexed HTTP/2
    # connection (UPGRADE) or pooled HTTP/1.1 (DO_NOT_UPGRADE); DEFAULT: the proxy's default.
    h2_upgrade_policy: str = "DEFAULT"

    def _check(self, path: str) -> None:
        for f in fields(self):
            if f.name != "h2_upgrade_policy":
                _at_least(self, path, f.name, 0)
        _one_of(self.h2_upgrade_policy, H2_UPGRADE_POLICIES, path, "h2_upgrade_policy")


@dataclass(frozen=True, slots=True)
class LatencyBackoff(_Policy):
    """plait's latency back-off: eject an endpoint much slower than its peers before it fails."""

    factor: float = 3.0  # p50 above 3x the peers' median p50: slow, not merely noisy
    min_requests: int = 20  # per interval; fewer samples say little about a p50

    def _check(self, path: str) -> None:
        if not self.factor > 1:
            _fail(path, "factor", "must be > 1")
        _at_least(self, path, "min_requests", 1)


@dataclass(frozen=True, slots=True)
class OutlierPolicy(_Policy):
    """`trafficPolicy.outlierDetection` (Istio's defaults) plus plait's latency back-off."""

    consecutive_5xx: int = 5  # Envoy/Istio default; 0 disables
    consecutive_gateway_errors: int = 0  # 502/503/504 and connect failures; 0 (off) as in Istio
    interval_ms: int = 10_000  # Istio's default sweep interval
    base_ejection_ms: int = 30_000  # Istio's default; times the number of ejections
    max_ejection_percent: int = 10  # Istio's default; at least one host may go (Envoy)
    latency: LatencyBackoff | None = None

    def _check(self, path: str) -> None:
        _at_least(self, path, "consecutive_5xx", 0)
        _at_least(self, path, "consecutive_gateway_errors", 0)
        _at_least(self, path, "interval_ms", 1)
        _at_least(self, path, "base_ejection_ms", 1)
        _percent(self, path, "max_ejection_percent")


@dataclass(frozen=True, slots=True)
class HealthCheckPolicy(_Policy):
    """plait's active health checks; defaults are Kubernetes probe defaults operators know."""

    kind: str = "tcp"  # tcp: connect only; http: GET `path`, 2xx/3xx is healthy (Kubernetes)
    path: str = ""
    interval_ms: int = 10_000  # periodSeconds 10
    timeout_ms: int = 1_000  # timeoutSeconds 1
    unhealthy_threshold: int = 3  # failureThreshold 3
    healthy_threshold: int = 1  # successThreshold 1

    def _check(self, path: str) -> None:
        _one_of(self.kind, HEALTH_CHECK_KINDS, path, "kind")
        if self.kind == "http" and not self.path.startswith("/"):
            _fail(path, "path", "an http check needs a path starting with '/'")
        if self.kind == "tcp" and self.path:
            _fail(path, "path", "a tcp check has no path")
        for name in ("interval_ms", "timeout_ms", "unhealthy_threshold", "healthy_threshold"):
            _at_least(self, path, name, 1)


@dataclass(frozen=True, slots=True)
class BudgetPolicy(_Policy):
    """Linkerd's retry budget (its defaults): retries add at most 20 % + 10/s over 10 s."""

    retry_ratio: float = 0.2
    min_retries_per_second: int = 10
    ttl_ms: int = 10_000

    def _check(self, path: str) -> None:
        if not self.retry_ratio >= 0:
            _fail(path, "retry_ratio", "must be >= 0")
        _at_least(self, path, "min_retries_per_second", 0)
        # Linkerd accepts 1 s to 60 s: shorter windows flap, longer ones remember stale load.
        if not 1_000 <= self.ttl_ms <= 60_000:
            _fail(path, "ttl_ms", "must be between 1000 and 60000")


@dataclass(frozen=True, slots=True)
class ServiceRef(_Policy):
    """A Service by name and namespace (the fallback target)."""

    name: str
    namespace: str = "default"

    def _check(self, path: str) -> None:
        if not self.name:
            _fail(path, "name", "must not be empty")


@dataclass(frozen=True, slots=True)
class ClusterPolicy(_Policy):
    """Everything the proxy needs to call one Service well; the default is Istio's behaviour."""

    load_balancer: LbPolicy = field(default_factory=LbPolicy)
    connection_pool: PoolLimits = field(default_factory=PoolLimits)
    outlier: OutlierPolicy | None = None  # off unless configured, as in Istio
    health_check: HealthCheckPolicy | None = None
    retry_budget: BudgetPolicy = field(default_factory=BudgetPolicy)  # always on: no storms
    # Below this % of healthy endpoints, balance over all of them (Envoy's 50 % panic
    # threshold; Istio's minHealthPercent sets it). 0 disables panic mode.
    panic_threshold_percent: int = 50
    fallback: ServiceRef | None = None  # answers when no endpoint is healthy
    tls_mode: str = "AUTO"
    ca_file: str = ""  # SIMPLE: the CA bundle to verify the server with (else system roots)
    sni: str = ""  # SIMPLE: the server name to send and verify
    subject_alt_names: tuple[str, ...] = ()  # SIMPLE: accept only these names

    def _check(self, path: str) -> None:
        _percent(self, path, "panic_threshold_percent")
        _one_of(self.tls_mode, TLS_MODES, path, "tls_mode")
        if self.tls_mode != "SIMPLE":
            for name in ("ca_file", "sni", "subject_alt_names"):
                if getattr(self, name):
                    _fail(path, name, "only tls_mode SIMPLE takes it")


@dataclass(frozen=True, slots=True)
class RetryPolicyConfig(_Policy):
    """A route's retries; `attempts` counts retries after the first try, as Istio's does.

    The default is the one used when a route configures none: connection-level failures only,
    so a 500 is neither hidden nor repeated.
    """

    attempts: int = 2
    per_try_timeout_ms: int = 0  # 0: none, each try may use the rest of the request timeout
    retry_on: tuple[str, ...] = ("connect-failure", "refused-stream")
    retriable_status_codes: tuple[int, ...] = ()
    backoff_base_ms: int = 25  # Envoy's and Istio's default base interval
    backoff_max_ms: int = 250  # Envoy's default: 10x the base
    # gRPC statuses (1-16) retried when a response carries them (retryOn `unavailable`, ...).
    grpc_statuses: frozenset[int] = frozenset()

    def _check(self, path: str) -> None:
        _at_least(self, path, "attempts", 0)
        for code in sorted(self.grpc_statuses):
            if not 1 <= code <= 16:
                _fail(path, "grpc_statuses", f"{code} is not a gRPC error status (1-16)")
        _at_least(self, path, "per_try_timeout_ms", 0)
        for i, cond in enumerate(self.retry_on):
            if cond not in HTTP_RETRY_ON and cond not in GRPC_RETRY_ON:
                known = ", ".join(sorted(HTTP_RETRY_ON | GRPC_RETRY_ON))
                raise TrafficPolicyError(
                    f"{path}.retry_on[{i}]: unknown condition {cond!r}; known: {known}"
                )
        for i, code in enumerate(self.retriable_status_codes):
            if not 100 <= code <= 599:
                raise TrafficPolicyError(
                    f"{path}.retriable_status_codes[{i}]: not an HTTP status code"
                )
        if self.retriable_status_codes and "retriable-status-codes" not in self.retry_on:
            _fail(path, "retriable_status_codes", "needs retry_on retriable-status-codes")
        _at_least(self, path, "backoff_base_ms", 1)
        if self.backoff_max_ms < self.backoff_base_ms:
            _fail(path, "backoff_max_ms", "must be >= backoff_base_ms")


# --- reading ---------------------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _read_fields(cls: type, data: Any, path: str) -> dict[str, Any]:
    """The fields of `cls` present in `data`, typed and checked; the rest keep their defaults."""
    where = path or "<root>"
    if not isinstance(data, Mapping):
        raise TrafficPolicyError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    for key in data:
        if key not in known:
            raise TrafficPolicyError(f"{_join(path, str(key))}: unknown field")
    out: dict[str, Any] = {}
    for name, f in known.items():
        value = data.get(name)
        if value is None:
            if f.default is MISSING and f.default_factory is MISSING:
                raise TrafficPolicyError(f"{_join(path, name)}: required field is missing")
            continue
        out[name] = _convert(_hints(cls)[name], value, _join(path, name))
    return out


def _convert(kind: Any, value: Any, where: str) -> Any:
    origin = get_origin(kind)
    if origin in (Union, types.UnionType):  # `X | None`: None was handled by the caller
        (kind,) = (a for a in get_args(kind) if a is not type(None))
        origin = get_origin(kind)
    if origin is tuple or origin is frozenset:
        if not isinstance(value, (list, tuple, frozenset)):
            raise TrafficPolicyError(f"{where}: expected a list, got {type(value).__name__}")
        item = get_args(kind)[0]
        return origin(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if is_dataclass(kind):
        return kind.from_dict(value, where)  # type: ignore[union-attr]
    if isinstance(value, bool) and kind is not bool:
        raise TrafficPolicyError(f"{where}: expected {kind.__name__}, got a boolean")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        raise TrafficPolicyError(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, _Policy):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, frozenset):
        return sorted(value)  # a stable list, so equal policies are equal dicts
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _fail(path: str, name: str, reason: str) -> None:
    raise TrafficPolicyError(f"{_join(path, name)}: {reason}")


def _one_of(value: str, allowed: tuple[str, ...], path: str, name: str) -> None:
    if value not in allowed:
        _fail(path, name, f"must be one of {', '.join(allowed)}, got {value!r}")


def _at_least(obj: object, path: str, name: str, low: int) -> None:
    if getattr(obj, name) < low:
        _fail(path, name, f"must be >= {low}")


def _above_zero(obj: object, path: str, name: str) -> None:
    if not getattr(obj, name) > 0:
        _fail(path, name, "must be > 0")


def _percent(obj: object, path: str, name: str) -> None:
    if not 0 <= getattr(obj, name) <= 100:
        _fail(path, name, "must be a percentage, 0-100")
