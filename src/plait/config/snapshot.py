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

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from plait.config.policy import PolicyError, PolicySet

__all__ = [
    "BackendRef",
    "Cluster",
    "Endpoint",
    "HeaderMatch",
    "Node",
    "PathMatch",
    "Route",
    "RouteMatch",
    "RouteRule",
    "Snapshot",
    "SnapshotError",
]

PATH_MATCH_TYPES = ("Exact", "PathPrefix")
HEADER_MATCH_TYPES = ("Exact",)
PARENT_KINDS = ("Service", "Gateway")
MTLS_MODES = ("STRICT", "PERMISSIVE", "DISABLE")


class SnapshotError(ValueError):
    """A snapshot that cannot be applied; the message starts with the field path."""


class _Reader:
    """Reads one mapping, remembering its path so every error names the field."""

    __slots__ = ("data", "path", "seen")

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise SnapshotError(f"{path or '<root>'}: expected a mapping, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def _where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ..., *, required: bool = False) -> Any:
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
        )
        r.done()
        return ep


@dataclass(frozen=True, slots=True)
class Cluster:
    """A service as the proxy sees it: its names, its ports and its endpoints."""

    name: str
    namespace: str = "default"
    ports: tuple[int, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def hostnames(self) -> tuple[str, ...]:
        """Names a caller may use for this service, as Kubernetes DNS would resolve them."""
        n, ns = self.name, self.namespace
        return (n, f"{n}.{ns}", f"{n}.{ns}.svc", f"{n}.{ns}.svc.cluster.local")

    @classmethod
    def from_dict(cls, data: Any, path: str) -> Cluster:
        r = _Reader(data, path)
        ports = []
        for where, p in r.items("ports"):
            if isinstance(p, bool) or not isinstance(p, int):
                raise SnapshotError(f"{where}: expected an integer")
            ports.append(_port(p, where))
        c = cls(
            name=r.get("name", str, required=True),
            namespace=r.get("namespace", str, "default"),
            ports=tuple(ports),
            endpoints=tuple(Endpoint.from_dict(e, w) for w, e in r.items("endpoints")),
        )
        r.done()
        return c


@dataclass(frozen=True, slots=True)
class PathMatch:
    type: str
    value: str

    @classmethod
    def from_dict(cls, data: Any, path: str) -> PathMatch:
        r = _Reader(data, path)
        kind = r.get("type", str, "PathPrefix")
        if kind not in PATH_MATCH_TYPES:
            raise SnapshotError(f"{path}.type: must be one of {', '.join(PATH_MATCH_TYPES)}")
        value = r.get("value", str, "/")
        if not value.startswith("/"):
            raise SnapshotError(f"{path}.value: a path must start with '/'")
        r.done()
        return cls(kind, value)


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str
    value: str
    type: str = "Exact"

    @classmethod
    def from_dict(cls, data: Any, path: str) -> HeaderMatch:
        r = _Reader(data, path)
        kind = r.get("type", str, "Exact")
        if kind not in HEADER_MATCH_TYPES:
            raise SnapshotError(f"{path}.type: must be one of {', '.join(HEADER_MATCH_TYPES)}")
        m = cls(name=r.get("name", str, required=True).lower(), value=r.get("value", str, required=True), type=kind)
        r.done()
        return m


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """All present conditions must hold (AND), as in the Gateway API's HTTPRouteMatch."""

    path: PathMatch | None = None
    method: str | None = None
    headers: tuple[HeaderMatch, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str) -> RouteMatch:
        r = _Reader(data, path)
        p = r.get("path", Mapping, None)
        m = cls(
            path=PathMatch.from_dict(p, f"{path}.path") if p is not None else None,
            method=r.get("method", str, None),
            headers=tuple(HeaderMatch.from_dict(h, w) for w, h in r.items("headers")),
        )
        r.done()
        return m


@dataclass(frozen=True, slots=True)
class BackendRef:
    service: str
    namespace: str = "default"
    port: int | None = None
    weight: int = 1

    @classmethod
    def from_dict(cls, data: Any, path: str) -> BackendRef:
        r = _Reader(data, path)
        port = r.get("port", int, None)
        weight = r.get("weight", int, 1)
        if weight < 0:
            raise SnapshotError(f"{path}.weight: must be >= 0")
        b = cls(
            service=r.get("service", str, required=True),
            namespace=r.get("namespace", str, "default"),
            port=_port(port, f"{path}.port") if port is not None else None,
            weight=weight,
        )
        r.done()
        return b


@dataclass(frozen=True, slots=True)
class RouteRule:
    """Matches OR-ed together; backends split by weight; `timeout_ms` 0 means none."""

    matches: tuple[RouteMatch, ...] = ()
    backends: tuple[BackendRef, ...] = ()
    timeout_ms: int = 0

    @classmethod
    def from_dict(cls, data: Any, path: str) -> RouteRule:
        r = _Reader(data, path)
        timeout = r.get("timeout_ms", int, 0)
        if timeout < 0:
            raise SnapshotError(f"{path}.timeout_ms: must be >= 0")
        rule = cls(
            matches=tuple(RouteMatch.from_dict(m, w) for w, m in r.items("matches")),
            backends=tuple(BackendRef.from_dict(b, w) for w, b in r.items("backends")),
            timeout_ms=timeout,
        )
        r.done()
        return rule


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
        kind = r.get("parent_kind", str, "Service")
        if kind not in PARENT_KINDS:
            raise SnapshotError(f"{path}.parent_kind: must be one of {', '.join(PARENT_KINDS)}")
        hostnames = []
        for where, h in r.items("hostnames"):
            if not isinstance(h, str):
                raise SnapshotError(f"{where}: expected a string")
            hostnames.append(h.lower())
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
                for k, b in enumerate(rule.backends):
                    if (b.namespace, b.service) not in names:
                        raise SnapshotError(
                            f"routes[{i}].rules[{j}].backends[{k}].service: "
                            f"no service {b.namespace}/{b.service} in clusters"
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
                        }
                        for e in c.endpoints
                    ],
                }
                for c in self.clusters
            ],
            "routes": [
                {
                    "name": rt.name,
                    "namespace": rt.namespace,
                    "parent_kind": rt.parent_kind,
                    "parent_name": rt.parent_name,
                    "hostnames": list(rt.hostnames),
                    "rules": [
                        {
                            "matches": [_match_to_dict(m) for m in rule.matches],
                            "backends": [
                                {
                                    "service": b.service,
                                    "namespace": b.namespace,
                                    "port": b.port,
                                    "weight": b.weight,
                                }
                                for b in rule.backends
                            ],
                            "timeout_ms": rule.timeout_ms,
                        }
                        for rule in rt.rules
                    ],
                }
                for rt in self.routes
            ],
            "policies": self.policies.to_dict(),
            "mtls_mode": self.mtls_mode,
        }


def _match_to_dict(m: RouteMatch) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if m.path is not None:
        out["path"] = {"type": m.path.type, "value": m.path.value}
    if m.method is not None:
        out["method"] = m.method
    if m.headers:
        out["headers"] = [{"name": h.name, "value": h.value, "type": h.type} for h in m.headers]
    return out
