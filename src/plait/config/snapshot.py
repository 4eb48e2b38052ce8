"""The proxy's configuration snapshot: plain, frozen data compiled for one proxy.

A snapshot is what a proxy runs on. The control plane's compiler (or `plait up`, or a test)
produces it from user resources; the proxy parses it once with `Snapshot.from_dict`, swaps it
in whole and never mutates it. It holds no user-facing resource kinds, so the proxy needs no
validation stack beyond this module. The same dict shape is the `--config FILE` format
(YAML or JSON) and, later, the control plane's push payload. Its schema is documented in
`docs/proxy.md`.

Errors name the field path (`clusters[2].endpoints[0].port: expected an integer`).
"""

from __future__ import annotations

import ipaddress
import re
import re._parser as _sre
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from plait.config.policy import PolicyError, PolicySet
from plait.config.traffic_policy import ClusterPolicy, RetryPolicyConfig, TrafficPolicyError

__all__ = [
    "NO_FILTERS",
    "BackendRef",
    "Cluster",
    "Endpoint",
    "Fault",
    "Filters",
    "HeaderMatch",
    "HeaderModifier",
    "Mirror",
    "Node",
    "PathMatch",
    "PathModifier",
    "QueryParamMatch",
    "Redirect",
    "Rewrite",
    "Route",
    "RouteMatch",
    "RouteRule",
    "Snapshot",
    "SnapshotError",
    "compile_regex",
]

PATH_MATCH_TYPES = ("Exact", "PathPrefix", "RegularExpression")
VALUE_MATCH_TYPES = ("Exact", "RegularExpression")  # headers and query parameters
PATH_MODIFIER_TYPES = ("ReplaceFullPath", "ReplacePrefixMatch")
REDIRECT_CODES = (301, 302, 303, 307, 308)
PARENT_KINDS = ("Service", "Gateway")
MTLS_MODES = ("STRICT", "PERMISSIVE", "DISABLE")
# A Service port's `protocol` (config.resources.ServicePort).
PORT_PROTOCOLS = ("http", "http2", "grpc", "tcp")
PROTOCOL_HINTS = ("", "h2")  # Endpoint.protocol_hint

T = TypeVar("T")


class SnapshotError(ValueError):
    """A snapshot that cannot be applied; the message starts with the field path."""


class _Reader:
    """Reads one mapping, remembering its path so every error names the field."""

    __slots__ = ("data", "path", "seen")

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise SnapshotError(
                f"{path or '<root>'}: expected a mapping, got {type(data).__name__}"
            )
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(
        self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, required: bool = False
    ) -> Any:
        self.seen.add(key)
        if key not in self.data or self.data[key] is None:
            if required or default is ...:
                raise SnapshotError(f"{self._where(key)}: required field is missing")
            return default
        value = self.data[key]
        # bool is an int subclass: refuse it where an integer is asked for.
        if isinstance(value, bool) and kind is int:
            raise SnapshotError(f"{self._where(key)}: expected an integer, got a boolean")
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise SnapshotError(f"{self._where(key)}: expected {names}, got {type(value).__name__}")
        return value

    def items(self, key: str) -> list[tuple[str, Any]]:
        """A list field: (path of each element, element)."""
        values = self.get(key, list, [])
        return [(f"{self._where(key)}[{i}]", v) for i, v in enumerate(values)]

    def labels(self, key: str) -> dict[str, str]:
        raw = self.get(key, Mapping, {})
        out: dict[str, str] = {}
        for k, v in raw.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise SnapshotError(f"{self._where(key)}: labels must map strings to strings")
            out[k] = v
        return out

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise SnapshotError(f"{self._where(unknown[0])}: unknown field")


def _port(value: int, where: str) -> int:
    if not 0 < value < 65536:
        raise SnapshotError(f"{where}: port {value} is out of range 1-65535")
    return value


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One reachable instance of a service: its proxy's inbound address (or the app itself)."""

    address: str
    port: int
    labels: Mapping[str, str] = field(default_factory=dict)
    workload: str = ""
    healthy: bool = True
    # The SPIFFE ID its proxy proves. Auto mTLS (as Istio): endpoints with an identity are
    # called over mTLS and must present exactly it; endpoints without one (no proxy) in plaintext.
    identity: str = ""
    # "h2": the endpoint's proxy is plait, which turns HTTP/1.1 requests carried over HTTP/2
    # back into HTTP/1.1, so callers may multiplex them on one connection (Linkerd's protocol
    # hint). Only the control plane sets it, for proxies that said so when they registered.
    protocol_hint: str = ""

    @property
    def key(self) -> tuple[str, int]:
        return (self.address, self.port)

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Endpoint:
        r = _Reader(data, path)
        ep = cls(
            address=r.get("address", str, required=True),
            port=_port(r.get("port", int, required=True), f"{path}.port"),
            labels=r.labels("labels"),
            workload=r.get("workload", str, ""),
            healthy=r.get("healthy", bool, True),
            identity=r.get("identity", str, ""),
            protocol_hint=r.get("protocol_hint", str, ""),
        )
        r.done()
        if ep.protocol_hint not in PROTOCOL_HINTS:
            raise SnapshotError(
                f"{path}.protocol_hint: {ep.protocol_hint!r} is not one of {PROTOCOL_HINTS}"
            )
        return ep


@dataclass(frozen=True, slots=True)
class Cluster:
    """A service as the proxy sees it: its names, its ports and its endpoints."""

    name: str
    namespace: str = "default"
    ports: tuple[int, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    # Balancing, limits, outlier detection, TLS: from DestinationRule / TrafficPolicy.
    policy: ClusterPolicy = field(default_factory=ClusterPolicy)
    # The service's virtual IP (Kubernetes' ClusterIP), allocated by the control plane: mesh
    # DNS answers it, and a captured connection to it (Host missing or an IP) routes here.
    vip: str = ""
    # The protocol of each port in `ports` (same order; empty: none declared). `tcp` skips
    # protocol detection; http2/grpc tell the proxy to speak h2c to the app.
    protocols: tuple[str, ...] = ()

    def protocol(self, port: int) -> str:
        """The declared protocol of `port` ("" when undeclared or not a port of this service)."""
        for i, p in enumerate(self.ports):
            if p == port:
                return self.protocols[i] if i < len(self.protocols) else ""
        return ""

    @property
    def dns_names(self) -> tuple[str, ...]:
        """Names a caller may use for this service, as Kubernetes DNS would resolve them."""
        n, ns = self.name, self.namespace
        return (n, f"{n}.{ns}", f"{n}.{ns}.svc", f"{n}.{ns}.svc.cluster.local")

    @property
    def hostnames(self) -> tuple[str, ...]:
        """What a Host header may say to reach this service: its DNS names and its VIP."""
        return (*self.dns_names, self.vip) if self.vip else self.dns_names

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Cluster:
        r = _Reader(data, path)
        ports = []
        for where, p in r.items("ports"):
            if isinstance(p, bool) or not isinstance(p, int):
                raise SnapshotError(f"{where}: expected an integer")
            ports.append(_port(p, where))
        protocols = []
        for where, p in r.items("protocols"):
            if p not in PORT_PROTOCOLS:
                raise SnapshotError(f"{where}: must be one of {', '.join(PORT_PROTOCOLS)}")
            protocols.append(p)
        if protocols and len(protocols) != len(ports):
            raise SnapshotError(
                f"{path}.protocols: {len(protocols)} protocols for {len(ports)} ports "
                "(one per port, in the same order)"
            )
        c = cls(
            name=r.get("name", str, required=True),
            namespace=r.get("namespace", str, "default"),
            ports=tuple(ports),
            endpoints=tuple(Endpoint.from_dict(e, w) for w, e in r.items("endpoints")),
            policy=_cluster_policy(r.get("policy", Mapping, None), f"{path}.policy"),
            vip=_ipv4(r.get("vip", str, ""), f"{path}.vip"),
            protocols=tuple(protocols),
        )
        r.done()
        return c


def _ipv4(value: str, where: str) -> str:
    """A dotted-quad IPv4 address (or empty): a VIP is matched as a Host and answered in DNS."""
    if value:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise SnapshotError(f"{where}: {value!r} is not an IPv4 address") from None
    return value


def _cluster_policy(raw: Any, path: str) -> ClusterPolicy:
    if raw is None:
        return ClusterPolicy()
    try:
        return ClusterPolicy.from_dict(raw, path)
    except TrafficPolicyError as exc:
        raise SnapshotError(str(exc)) from None


# --- routes: compiled HTTPRoutes ----------------------------------------------------------------

# Python's `re` backtracks, so a repeat inside a repeat (`(a+)*`) can take exponential time on a
# crafted path. Such nesting is refused unless the inner repeat cannot backtrack: possessive
# (`a++`) or atomic (`(?>a+)`). Checked with the length cap once, when the snapshot is parsed,
# so a dangerous pattern is a NACK, never a stuck proxy.
MAX_REGEX_LENGTH = 1024
_REPEATS = (_sre.MAX_REPEAT, _sre.MIN_REPEAT)


def compile_regex(pattern: str) -> re.Pattern[str]:
    """`pattern` compiled; ValueError if too long, invalid or prone to runaway backtracking."""
    if len(pattern) > MAX_REGEX_LENGTH:
        raise ValueError(f"regular expression longer than {MAX_REGEX_LENGTH} characters")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    if _nested_repeat(_sre.parse(pattern), 0):
        raise ValueError(
            "nested repeats such as (a+)* can backtrack exponentially; "
            "make the inner one possessive (a++) or atomic ((?>a+))"
        )
    return compiled


def _nested_repeat(items: Any, outer: int) -> bool:
    """A backtracking repeat inside another one (max count `outer`), either of them unbounded."""
    for op, av in items:
        if op in _REPEATS:
            high = av[1]
            if outer > 1 and high > 1 and _sre.MAXREPEAT in (outer, high):
                return True
            inner = [(av[2], max(outer, high))]
        elif op is _sre.POSSESSIVE_REPEAT:  # nothing outside can backtrack into these two
            inner = [(av[2], 0)]
        elif op is _sre.ATOMIC_GROUP:
            inner = [(av, 0)]
        elif op is _sre.SUBPATTERN:
            inner = [(av[3], outer)]
        elif op is _sre.BRANCH:
            inner = [(branch, outer) for branch in av[1]]
        elif op in (_sre.ASSERT, _sre.ASSERT_NOT):
            inner = [(av[1], outer)]
        elif op is _sre.GROUPREF_EXISTS:
            inner = [(branch, outer) for branch in av[1:] if branch is not None]
        else:
            continue
        if any(_nested_repeat(sub, limit) for sub, limit in inner):
            return True
    return False


def _choice(value: str, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise SnapshotError(f"{where}: must be one of {', '.join(allowed)}")
    return value


def _build(cls: type[T], where: str, *args: Any, **kwargs: Any) -> T:
    """`cls(...)`, its own checks (ValueError) reported at `where`."""
    try:
        return cls(*args, **kwargs)
    except SnapshotError:
        raise
    except ValueError as exc:
        raise SnapshotError(f"{where}: {exc}") from None


def _regex_for(kind: str, value: str) -> re.Pattern[str] | None:
    return compile_regex(value) if kind == "RegularExpression" else None


@dataclass(frozen=True, slots=True)
class PathMatch:
    """Exact, PathPrefix (element-wise, Gateway API) or RegularExpression (full match)."""

    type: str
    value: str
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.type != "RegularExpression" and not self.value.startswith("/"):
            raise ValueError("a path must start with '/'")
        object.__setattr__(self, "regex", _regex_for(self.type, self.value))

    @classmethod
    def from_dict(cls, data: Any, path: str) -> PathMatch:
        r = _Reader(data, path)
        kind = _choice(r.get("type", str, "PathPrefix"), PATH_MATCH_TYPES, f"{path}.type")
        m = _build(cls, f"{path}.value", kind, r.get("value", str, "/"))
        r.done()
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "value": self.value}


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    """A request header (lower-case name) equal to, or fully matching, `value`."""

    name: str
    value: str
    type: str = "Exact"
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _regex_for(self.type, self.value))

    @classmethod
    def from_dict(cls, data: Any, path: str) -> HeaderMatch:
        r = _Reader(data, path)
        kind = _choice(r.get("type", str, "Exact"), VALUE_MATCH_TYPES, f"{path}.type")
        name = r.get("name", str, required=True).lower()
        m = _build(cls, f"{path}.value", name, r.get("value", str, required=True), kind)
        r.done()
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "type": self.type}


@dataclass(frozen=True, slots=True)
class QueryParamMatch:
    """A query parameter (case-sensitive name, decoded value) equal to, or matching, `value`."""

    name: str
    value: str
    type: str = "Exact"
    regex: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _regex_for(self.type, self.value))

    @classmethod
    def from_dict(cls, data: Any, path: str) -> QueryParamMatch:
        r = _Reader(data, path)
        kind = _choice(r.get("type", str, "Exact"), VALUE_MATCH_TYPES, f"{path}.type")
        name = r.get("name", str, required=True)
        m = _build(cls, f"{path}.value", name, r.get("value", str, required=True), kind)
        r.done()
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "type": self.type}


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """All present conditions must hold (AND), as in the Gateway API's HTTPRouteMatch."""

    path: PathMatch | None = None
    method: str | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryParamMatch, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str) -> RouteMatch:
        r = _Reader(data, path)
        p = r.get("path", Mapping, None)
        m = cls(
            path=PathMatch.from_dict(p, f"{path}.path") if p is not None else None,
            method=r.get("method", str, None),
            headers=tuple(HeaderMatch.from_dict(h, w) for w, h in r.items("headers")),
            query_params=tuple(QueryParamMatch.from_dict(q, w) for w, q in r.items("query_params")),
        )
        r.done()
        return m

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.path is not None:
            out["path"] = self.path.to_dict()
        if self.method is not None:
            out["method"] = self.method
        if self.headers:
            out["headers"] = [h.to_dict() for h in self.headers]
        if self.query_params:
            out["query_params"] = [q.to_dict() for q in self.query_params]
        return out


# --- routes: filters ---------------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")  # RFC 9110 section 5.6.2, lower-cased
_FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")  # no CR, LF or NUL: no header injection
# Framing and hop-by-hop fields: editing them could desynchronise the two connections
# (request smuggling); the authority changes through URLRewrite.hostname instead.
_UNMODIFIABLE = frozenset(
    ("host", "content-length", "transfer-encoding", "connection", "keep-alive")
    + ("proxy-connection", "te", "trailer", "upgrade")
)
_PATH_VALUE = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})*")  # Gateway API
_PRECISE_HOST = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_Pair = tuple[str, str]


def _headers(r: _Reader, key: str) -> tuple[_Pair, ...]:
    out = []
    for where, h in r.items(key):
        item = _Reader(h, where)
        name = item.get("name", str, required=True).lower()
        out.append((name, item.get("value", str, required=True)))
        item.done()
    return tuple(out)


def _strings(r: _Reader, key: str) -> tuple[str, ...]:
    for where, s in r.items(key):
        if not isinstance(s, str):
            raise SnapshotError(f"{where}: expected a string")
    return tuple(r.get(key, list, []))


@dataclass(frozen=True, slots=True)
class HeaderModifier:
    """Request/ResponseHeaderModifier: remove, set (replace) or add fields; one action a name."""

    set: tuple[_Pair, ...] = ()
    add: tuple[_Pair, ...] = ()
    remove: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = [n for n, _ in self.set] + [n for n, _ in self.add] + list(self.remove)
        for name in names:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a lower-case header name")
            if name in _UNMODIFIABLE:
                raise ValueError(f"header {name!r} cannot be modified (framing or hop-by-hop)")
        if len(set(names)) != len(names):
            raise ValueError("each header name may appear in one action only")
        for name, value in self.set + self.add:
            if not _FIELD_VALUE.fullmatch(value):
                raise ValueError(f"the value of {name!r} holds a control character")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> HeaderModifier:
        r = _Reader(data, path)
        remove = tuple(n.lower() for n in _strings(r, "remove"))
        m = _build(cls, path, _headers(r, "set"), _headers(r, "add"), remove)
        r.done()
        return m

    def to_dict(self) -> dict[str, Any]:
        return {
            "set": [{"name": n, "value": v} for n, v in self.set],
            "add": [{"name": n, "value": v} for n, v in self.add],
            "remove": list(self.remove),
        }


@dataclass(frozen=True, slots=True)
class PathModifier:
    """ReplaceFullPath or ReplacePrefixMatch (of the PathPrefix the request matched)."""

    type: str
    value: str

    def __post_init__(self) -> None:
        if self.type not in PATH_MODIFIER_TYPES:
            raise ValueError(f"type must be one of {', '.join(PATH_MODIFIER_TYPES)}")
        full = self.type == "ReplaceFullPath"
        if (full or self.value) and not self.value.startswith("/"):
            raise ValueError("the new path must start with '/'")
        if len(self.value) > 1024 or not _PATH_VALUE.fullmatch(self.value):
            raise ValueError(f"{self.value!r} is not a valid path")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> PathModifier:
        r = _Reader(data, path)
        m = _build(cls, path, r.get("type", str, required=True), r.get("value", str, required=True))
        r.done()
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "value": self.value}


def _hostname(value: str | None) -> None:
    if value is not None and not _PRECISE_HOST.fullmatch(value):
        raise ValueError(f"{value!r} is not a lower-case hostname")


@dataclass(frozen=True, slots=True)
class Redirect:
    """RequestRedirect: the proxy answers `status_code` with a Location built from the request."""

    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path: PathModifier | None = None
    status_code: int = 302

    def __post_init__(self) -> None:
        if self.scheme not in (None, "http", "https"):
            raise ValueError("scheme must be http or https")
        _hostname(self.hostname)
        if self.port is not None:
            _port(self.port, "port")
        if self.status_code not in REDIRECT_CODES:
            raise ValueError(f"status_code must be one of {', '.join(map(str, REDIRECT_CODES))}")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Redirect:
        r = _Reader(data, path)
        p = r.get("path", Mapping, None)
        m = _build(
            cls,
            path,
            scheme=r.get("scheme", str, None),
            hostname=r.get("hostname", str, None),
            port=r.get("port", int, None),
            path=PathModifier.from_dict(p, f"{path}.path") if p is not None else None,
            status_code=r.get("status_code", int, 302),
        )
        r.done()
        return m

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "hostname": self.hostname,
            "port": self.port,
            "path": self.path.to_dict() if self.path else None,
            "status_code": self.status_code,
        }


@dataclass(frozen=True, slots=True)
class Rewrite:
    """URLRewrite: a new Host and/or path before forwarding."""

    hostname: str | None = None
    path: PathModifier | None = None

    def __post_init__(self) -> None:
        _hostname(self.hostname)

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Rewrite:
        r = _Reader(data, path)
        p = r.get("path", Mapping, None)
        m = _build(
            cls,
            path,
            hostname=r.get("hostname", str, None),
            path=PathModifier.from_dict(p, f"{path}.path") if p is not None else None,
        )
        r.done()
        return m

    def to_dict(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "path": self.path.to_dict() if self.path else None}


@dataclass(frozen=True, slots=True)
class Mirror:
    """RequestMirror: a copy of `numerator`/`denominator` of the requests goes to this service."""

    service: str
    namespace: str = "default"
    port: int | None = None
    numerator: int = 100
    denominator: int = 100

    def __post_init__(self) -> None:
        if not 0 <= self.numerator <= self.denominator or self.denominator < 1:
            raise ValueError("the mirrored fraction must be between 0 and 1")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Mirror:
        r = _Reader(data, path)
        port = r.get("port", int, None)
        m = _build(
            cls,
            path,
            service=r.get("service", str, required=True),
            namespace=r.get("namespace", str, "default"),
            port=_port(port, f"{path}.port") if port is not None else None,
            numerator=r.get("numerator", int, 100),
            denominator=r.get("denominator", int, 100),
        )
        r.done()
        return m

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "namespace": self.namespace,
            "port": self.port,
            "numerator": self.numerator,
            "denominator": self.denominator,
        }


def _percent(r: _Reader, key: str) -> float:
    value = r.get(key, (int, float), 0.0)
    if isinstance(value, bool) or not 0 <= value <= 100:
        raise SnapshotError(f"{r._where(key)}: expected a percentage from 0 to 100")
    return float(value)


@dataclass(frozen=True, slots=True)
class Fault:
    """An HTTPFault: delay and/or abort (HTTP status or gRPC status), each on a percentage."""

    delay_ms: int = 0
    delay_percent: float = 0.0
    abort_http_status: int | None = None
    abort_grpc_status: int | None = None
    abort_percent: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        if self.abort_http_status is not None and not 200 <= self.abort_http_status <= 599:
            raise ValueError("abort_http_status must be from 200 to 599")
        if self.abort_grpc_status is not None and not 0 <= self.abort_grpc_status <= 16:
            raise ValueError("abort_grpc_status must be a gRPC code from 0 to 16")
        if self.abort_http_status is not None and self.abort_grpc_status is not None:
            raise ValueError("abort with an HTTP status or a gRPC status, not both")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Fault:
        r = _Reader(data, path)
        m = _build(
            cls,
            path,
            delay_ms=r.get("delay_ms", int, 0),
            delay_percent=_percent(r, "delay_percent"),
            abort_http_status=r.get("abort_http_status", int, None),
            abort_grpc_status=r.get("abort_grpc_status", int, None),
            abort_percent=_percent(r, "abort_percent"),
        )
        r.done()
        return m

    def to_dict(self) -> dict[str, Any]:
        return {
            "delay_ms": self.delay_ms,
            "delay_percent": self.delay_percent,
            "abort_http_status": self.abort_http_status,
            "abort_grpc_status": self.abort_grpc_status,
            "abort_percent": self.abort_percent,
        }


@dataclass(frozen=True, slots=True)
class Filters:
    """The filters of a rule or a backend, one slot per kind (only RequestMirror repeats).

    The proxy applies them in this order: fault, request headers, redirect or rewrite, mirrors;
    response headers on the way back.
    """

    request_headers: HeaderModifier | None = None
    response_headers: HeaderModifier | None = None
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    mirrors: tuple[Mirror, ...] = ()
    fault: Fault | None = None

    def __post_init__(self) -> None:
        if self.redirect is not None and self.rewrite is not None:
            raise ValueError("a rule cannot both redirect and rewrite")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Filters:
        r = _Reader(data, path)

        def one(key: str, kind: Any) -> Any:
            value = r.get(key, Mapping, None)
            return None if value is None else kind.from_dict(value, f"{path}.{key}")

        f = _build(
            cls,
            path,
            request_headers=one("request_headers", HeaderModifier),
            response_headers=one("response_headers", HeaderModifier),
            redirect=one("redirect", Redirect),
            rewrite=one("rewrite", Rewrite),
            mirrors=tuple(Mirror.from_dict(m, w) for w, m in r.items("mirrors")),
            fault=one("fault", Fault),
        )
        r.done()
        return f

    def to_dict(self) -> dict[str, Any]:
        """Only the slots in use, so a rule without filters dumps as before."""
        out: dict[str, Any] = {}
        for key in ("request_headers", "response_headers", "redirect", "rewrite", "fault"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.to_dict()
        if self.mirrors:
            out["mirrors"] = [m.to_dict() for m in self.mirrors]
        return out


NO_FILTERS = Filters()


def _filters(r: _Reader, path: str) -> Filters:
    data = r.get("filters", Mapping, None)
    return NO_FILTERS if data is None else Filters.from_dict(data, f"{path}.filters")


# --- routes: rules -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackendRef:
    """A weighted backend Service, with the filters that apply only when it is chosen."""

    service: str
    namespace: str = "default"
    port: int | None = None
    weight: int = 1
    filters: Filters = NO_FILTERS

    def __post_init__(self) -> None:
        if self.filters.redirect is not None:
            raise ValueError("a redirect answers instead of forwarding: put it on the rule")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> BackendRef:
        r = _Reader(data, path)
        port = r.get("port", int, None)
        weight = r.get("weight", int, 1)
        if weight < 0:
            raise SnapshotError(f"{path}.weight: must be >= 0")
        b = _build(
            cls,
            f"{path}.filters",
            service=r.get("service", str, required=True),
            namespace=r.get("namespace", str, "default"),
            port=_port(port, f"{path}.port") if port is not None else None,
            weight=weight,
            filters=_filters(r, path),
        )
        r.done()
        return b

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "service": self.service,
            "namespace": self.namespace,
            "port": self.port,
            "weight": self.weight,
        }
        if self.filters != NO_FILTERS:
            out["filters"] = self.filters.to_dict()
        return out


def _uses_prefix_replacement(filters: Filters) -> bool:
    action = filters.redirect or filters.rewrite
    path = action.path if action is not None else None
    return path is not None and path.type == "ReplacePrefixMatch"


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Matches OR-ed together; backends split by weight; a timeout of 0 means none."""

    matches: tuple[RouteMatch, ...] = ()
    backends: tuple[BackendRef, ...] = ()
    timeout_ms: int = 0  # timeouts.request: the whole exchange, retries included
    backend_timeout_ms: int = 0  # timeouts.backendRequest: each attempt at a backend
    filters: Filters = NO_FILTERS
    retries: RetryPolicyConfig | None = None  # None: the default (connection failures only)

    def __post_init__(self) -> None:
        if self.timeout_ms < 0 or self.backend_timeout_ms < 0:
            raise ValueError("timeouts must be >= 0")
        replaces = [self.filters] + [b.filters for b in self.backends]
        prefixes = all(m.path is None or m.path.type == "PathPrefix" for m in self.matches)
        if not prefixes and any(_uses_prefix_replacement(f) for f in replaces):
            # Gateway API: ReplacePrefixMatch is only compatible with PathPrefix matches.
            raise ValueError("ReplacePrefixMatch needs every match of the rule to be a PathPrefix")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> RouteRule:
        r = _Reader(data, path)
        rule = _build(
            cls,
            path,
            matches=tuple(RouteMatch.from_dict(m, w) for w, m in r.items("matches")),
            backends=tuple(BackendRef.from_dict(b, w) for w, b in r.items("backends")),
            timeout_ms=r.get("timeout_ms", int, 0),
            backend_timeout_ms=r.get("backend_timeout_ms", int, 0),
            filters=_filters(r, path),
            retries=_retries(r.get("retries", Mapping, None), f"{path}.retries"),
        )
        r.done()
        return rule

    def services(self) -> list[tuple[str, str, str]]:
        """(field path below the rule, namespace, name) of every Service the rule sends to."""
        refs = [(f"backends[{k}]", b.namespace, b.service) for k, b in enumerate(self.backends)]
        sources = [("filters", self.filters)]
        sources += [(f"backends[{k}].filters", b.filters) for k, b in enumerate(self.backends)]
        for where, filters in sources:
            for i, m in enumerate(filters.mirrors):
                refs.append((f"{where}.mirrors[{i}]", m.namespace, m.service))
        return refs

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "matches": [m.to_dict() for m in self.matches],
            "backends": [b.to_dict() for b in self.backends],
            "timeout_ms": self.timeout_ms,
            "backend_timeout_ms": self.backend_timeout_ms,
        }
        if self.filters != NO_FILTERS:
            out["filters"] = self.filters.to_dict()
        if self.retries is not None:
            out["retries"] = self.retries.to_dict()
        return out


def _retries(raw: Any, path: str) -> RetryPolicyConfig | None:
    if raw is None:
        return None
    try:
        return RetryPolicyConfig.from_dict(raw, path)
    except TrafficPolicyError as exc:
        raise SnapshotError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Route:
    """An HTTPRoute compiled for the proxy. `parent_kind` Service is GAMMA (mesh) routing,
    Gateway is ingress routing on a gateway-mode proxy."""

    name: str
    parent_kind: str
    parent_name: str
    namespace: str = "default"
    hostnames: tuple[str, ...] = ()
    rules: tuple[RouteRule, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Route:
        r = _Reader(data, path)
        kind = _choice(r.get("parent_kind", str, "Service"), PARENT_KINDS, f"{path}.parent_kind")
        hostnames = [h.lower() for h in _strings(r, "hostnames")]
        route = cls(
            name=r.get("name", str, required=True),
            parent_kind=kind,
            parent_name=r.get("parent_name", str, required=True),
            namespace=r.get("namespace", str, "default"),
            hostnames=tuple(hostnames),
            rules=tuple(RouteRule.from_dict(x, w) for w, x in r.items("rules")),
        )
        r.done()
        return route

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "parent_kind": self.parent_kind,
            "parent_name": self.parent_name,
            "hostnames": list(self.hostnames),
            "rules": [rule.to_dict() for rule in self.rules],
        }


@dataclass(frozen=True, slots=True)
class Node:
    """Who this proxy serves: the workload's service, namespace and labels."""

    name: str = "proxy"
    service: str = ""
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    gateway: str = ""

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Node:
        r = _Reader(data, path)
        n = cls(
            name=r.get("name", str, "proxy"),
            service=r.get("service", str, ""),
            namespace=r.get("namespace", str, "default"),
            labels=r.labels("labels"),
            gateway=r.get("gateway", str, ""),
        )
        r.done()
        return n


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one proxy needs to route: who it is, the services it may call, the routes."""

    version: str = "0"
    node: Node = field(default_factory=Node)
    clusters: tuple[Cluster, ...] = ()
    routes: tuple[Route, ...] = ()
    # This workload's own security policy (compiled for it by the control plane).
    policies: PolicySet = field(default_factory=PolicySet.empty)
    # Inbound PeerAuthentication mode; STRICT by default (plaintext to the inbound refused).
    mtls_mode: str = "STRICT"

    def app_protocol(self, app_port: int = 0) -> str:
        """The protocol this node's app declared: its service's port `app_port`, or the only
        port that service has ("" when the service or the port is not known)."""
        node = self.node
        for c in self.clusters:
            if (c.name, c.namespace) == (node.service, node.namespace):
                declared = c.protocol(app_port)
                if not declared and len(c.ports) == 1:
                    declared = c.protocol(c.ports[0])
                return declared
        return ""

    @classmethod
    def from_dict(cls, data: Any) -> Snapshot:
        r = _Reader(data, "")
        version = r.get("version", (str, int), "0")
        node = r.get("node", Mapping, {})
        mtls_mode = r.get("mtls_mode", str, "STRICT")
        if mtls_mode not in MTLS_MODES:
            raise SnapshotError(f"mtls_mode: must be one of {', '.join(MTLS_MODES)}")
        try:
            policies = PolicySet.from_dict(r.get("policies", Mapping, {}), "policies")
        except PolicyError as exc:
            raise SnapshotError(str(exc)) from None
        snap = cls(
            version=str(version),
            node=Node.from_dict(node, "node"),
            clusters=tuple(Cluster.from_dict(c, w) for w, c in r.items("clusters")),
            routes=tuple(Route.from_dict(x, w) for w, x in r.items("routes")),
            policies=policies,
            mtls_mode=mtls_mode,
        )
        r.done()
        snap._check_references()
        return snap

    def _check_references(self) -> None:
        names = set()
        for i, c in enumerate(self.clusters):
            key = (c.namespace, c.name)
            if key in names:
                raise SnapshotError(f"clusters[{i}].name: duplicate service {c.namespace}/{c.name}")
            names.add(key)
        for i, route in enumerate(self.routes):
            for j, rule in enumerate(route.rules):
                for where, namespace, service in rule.services():
                    if (namespace, service) not in names:
                        raise SnapshotError(
                            f"routes[{i}].rules[{j}].{where}.service: "
                            f"no service {namespace}/{service} in clusters"
                        )

    def to_dict(self) -> dict[str, Any]:
        """The same shape `from_dict` reads (for `/config_dump` and for writing files)."""
        return {
            "version": self.version,
            "node": {
                "name": self.node.name,
                "service": self.node.service,
                "namespace": self.node.namespace,
                "labels": dict(self.node.labels),
                "gateway": self.node.gateway,
            },
            "clusters": [
                {
                    "name": c.name,
                    "namespace": c.namespace,
                    "ports": list(c.ports),
                    "endpoints": [
                        {
                            "address": e.address,
                            "port": e.port,
                            "labels": dict(e.labels),
                            "workload": e.workload,
                            "healthy": e.healthy,
                            "identity": e.identity,
                            **({"protocol_hint": e.protocol_hint} if e.protocol_hint else {}),
                        }
                        for e in c.endpoints
                    ],
                    "policy": c.policy.to_dict(),
                    **({"vip": c.vip} if c.vip else {}),
                    **({"protocols": list(c.protocols)} if c.protocols else {}),
                }
                for c in self.clusters
            ],
            "routes": [rt.to_dict() for rt in self.routes],
            "policies": self.policies.to_dict(),
            "mtls_mode": self.mtls_mode,
        }
