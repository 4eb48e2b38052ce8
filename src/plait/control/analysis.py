"""`plait analyze`: what is accepted but will not work, as `istioctl analyze` reports it. Pure.

The API accepts dangling references (as Kubernetes does: objects may arrive in any order); this
module finds them afterwards. Errors: a reference to a Service or Gateway that does not exist,
a backend port the Service does not have, a DestinationRule host that names no Service, a route
the proxy cannot express yet. Warnings: a selector or subset that selects no known workload
(static Workload resources and workloads registered by proxies).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from plait.config import resources as r
from plait.config.snapshot import Node
from plait.config.yamlio import FieldPath, format_path
from plait.control.compiler import CompileError, compile_snapshot

__all__ = [
    "NOT_SUPPORTED",
    "PORT_NOT_FOUND",
    "REFERENCE_NOT_FOUND",
    "SELECTS_NOTHING",
    "SUBSET_SELECTS_NOTHING",
    "Finding",
    "Labelled",
    "analyze",
]

# Codes in istioctl's style (IST0101 is its ReferencedResourceNotFound).
REFERENCE_NOT_FOUND = "PLT0101"
SELECTS_NOTHING = "PLT0102"
SUBSET_SELECTS_NOTHING = "PLT0103"
PORT_NOT_FOUND = "PLT0104"
NOT_SUPPORTED = "PLT0105"

Level = Literal["Error", "Warning"]
Route = r.HTTPRoute | r.GRPCRoute  # both attach to parents and send to backendRefs
Filter = r.HTTPRouteFilter | r.GRPCRouteFilter


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem with one resource; `field` is the path to fix (None: the whole resource)."""

    level: Level
    code: str
    kind: str
    namespace: str
    name: str
    field: str | None
    message: str

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        head = f"{self.level} [{self.code}] ({self.kind} {self.namespace}/{self.name})"
        return f"{head} {where}{self.message}"


@dataclass(frozen=True, slots=True)
class Labelled:
    """A workload that selectors may pick: its namespace (None: any) and labels."""

    namespace: str | None
    labels: Mapping[str, str]


def analyze(resources: Sequence[r.Resource], registered: Iterable[Labelled] = ()) -> list[Finding]:
    """Every finding for these resources, errors first, then by kind, namespace, name, field."""
    mesh = _Mesh(resources, registered)
    findings: list[Finding] = []
    clean_routes: list[Route] = []
    for resource in resources:
        found: list[Finding] = []
        if isinstance(resource, r.HTTPRoute | r.GRPCRoute):
            found = mesh.check_route(resource)
            if not found:
                clean_routes.append(resource)
        elif isinstance(resource, r.Service):
            found = mesh.check_service(resource)
        elif isinstance(resource, r.DestinationRule):
            found = mesh.check_destination_rule(resource)
        findings += found
    findings += _unsupported([*mesh.services, *mesh.faults], clean_routes)
    return sorted(
        findings, key=lambda f: (f.level != "Error", f.kind, f.namespace, f.name, f.field or "")
    )


class _Mesh:
    """The resources indexed by (namespace, name), and the checks that use the index."""

    def __init__(self, resources: Sequence[r.Resource], registered: Iterable[Labelled]) -> None:
        self.services = [x for x in resources if isinstance(x, r.Service)]
        # Routes' ExtensionRef filters resolve to these: the compiler needs them too.
        self.faults = [x for x in resources if x.kind == "HTTPFault"]
        self.by_name: dict[tuple[str, str], r.Service] = {
            (s.metadata.namespace, s.metadata.name): s for s in self.services
        }
        self.gateways = {
            (x.metadata.namespace, x.metadata.name) for x in resources if isinstance(x, r.Gateway)
        }
        self.workloads = [
            Labelled(x.metadata.namespace, x.spec.labels)
            for x in resources
            if isinstance(x, r.Workload)
        ]
        self.workloads += registered

    def selects_any(self, namespace: str, selector: Mapping[str, str]) -> bool:
        return any(
            w.namespace in (None, namespace) and r.selects(selector, w.labels)
            for w in self.workloads
        )

    def check_route(self, route: Route) -> list[Finding]:
        found: list[Finding] = []
        namespace = route.metadata.namespace
        for i, parent in enumerate(route.spec.parent_refs):
            key = (parent.namespace or namespace, parent.name)
            exists = key in self.gateways if parent.kind == "Gateway" else key in self.by_name
            if not exists:
                path = ("spec", "parentRefs", i, "name")
                found.append(_missing(route, path, parent.kind, key))
        rules: Sequence[r.HTTPRouteRule | r.GRPCRouteRule] = route.spec.rules
        for i, rule in enumerate(rules):
            base: FieldPath = ("spec", "rules", i)
            refs: Sequence[r.HTTPBackendRef | r.GRPCBackendRef] = rule.backend_refs
            for j, ref in enumerate(refs):
                found += self._backend(route, ref, (*base, "backendRefs", j))
                own: Sequence[Filter] = ref.filters
                for k, f in enumerate(own):
                    found += self._mirror(route, f, (*base, "backendRefs", j, "filters", k))
            filters: Sequence[Filter] = rule.filters
            for k, f in enumerate(filters):
                found += self._mirror(route, f, (*base, "filters", k))
        return found

    def _mirror(self, route: Route, f: Filter, path: FieldPath) -> list[Finding]:
        if f.request_mirror is None:
            return []
        return self._backend(route, f.request_mirror.backend_ref, (*path, "requestMirror"))

    def _backend(
        self, route: Route, ref: r.BackendObjectReference, path: FieldPath
    ) -> list[Finding]:
        key = (ref.namespace or route.metadata.namespace, ref.name)
        service = self.by_name.get(key)
        if service is None:
            return [_missing(route, (*path, "name"), "Service", key)]
        ports = [p.port for p in service.spec.ports]
        if ref.port is not None and ref.port not in ports:
            message = f"Service {key[0]}/{key[1]} has no port {ref.port} (it has {_list(ports)})"
            return [_finding("Error", PORT_NOT_FOUND, route, (*path, "port"), message)]
        return []

    def check_service(self, service: r.Service) -> list[Finding]:
        selector = service.spec.selector
        path = ("spec", "selector")
        if not selector:
            message = "the selector is empty, so the Service has no endpoints"
            return [_finding("Warning", SELECTS_NOTHING, service, path, message)]
        if self.selects_any(service.metadata.namespace, selector):
            return []
        message = f"the selector {_labels(selector)} matches no known workload"
        return [_finding("Warning", SELECTS_NOTHING, service, path, message)]

    def check_destination_rule(self, rule: r.DestinationRule) -> list[Finding]:
        key = _host(rule.spec.host, rule.metadata.namespace)
        if key is None:
            return []  # a wildcard host: nothing in particular to resolve
        service = self.by_name.get(key)
        if service is None:
            return [_missing(rule, ("spec", "host"), "Service", key, rule.spec.host)]
        if not self.selects_any(key[0], service.spec.selector):
            return []  # the Service's own warning says it; one per cause
        found = []
        for i, subset in enumerate(rule.spec.subsets):
            selector = {**service.spec.selector, **subset.labels}
            if subset.labels and not self.selects_any(key[0], selector):
                message = f"subset {subset.name!r} ({_labels(selector)}) selects no known workload"
                path = ("spec", "subsets", i, "labels")
                found.append(_finding("Warning", SUBSET_SELECTS_NOTHING, rule, path, message))
        return found


def _unsupported(services: Sequence[r.Resource], routes: list[Route]) -> list[Finding]:
    """Routes whose references resolve but which the proxy cannot express yet."""
    node = Node(name="analyze")
    try:
        compile_snapshot([*services, *routes], [], node, "analyze")
        return []
    except CompileError:
        pass  # find which: one route at a time
    found = []
    for route in routes:
        try:
            compile_snapshot([*services, route], [], node, "analyze")
        except CompileError as e:
            found.append(_finding("Error", NOT_SUPPORTED, route, (), str(e)))
    return found


def _host(host: str, namespace: str) -> tuple[str, str] | None:
    """`reviews`, `reviews.prod`, `reviews.prod.svc.cluster.local` -> (namespace, name)."""
    if host.startswith("*"):
        return None
    labels = host.lower().split(".")
    return (labels[1] if len(labels) > 1 else namespace, labels[0])


def _missing(
    resource: r.Resource, path: FieldPath, kind: str, key: tuple[str, str], host: str = ""
) -> Finding:
    what = f"host {host!r}: " if host else ""
    message = f"{what}referenced {kind} {key[0]}/{key[1]} not found"
    return _finding("Error", REFERENCE_NOT_FOUND, resource, path, message)


def _finding(
    level: Level, code: str, resource: r.Resource, path: FieldPath, message: str
) -> Finding:
    meta = resource.metadata
    field = format_path(path) or None
    return Finding(level, code, resource.kind, meta.namespace, meta.name, field, message)


def _labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _list(items: Iterable[int]) -> str:
    return ", ".join(str(x) for x in items)
