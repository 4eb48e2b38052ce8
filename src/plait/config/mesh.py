"""The local runner's mesh file: one `kind: Mesh` document (the apps to start) plus resources.

`plait up FILE` reads it once. Everything is checked before anything starts: each document's
shape, then the references between them (an app's Service, the gateway's Gateway, a route's
parents and backends), so a typo is a line-numbered error instead of a silent 503 later.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from plait.config.errors import ConfigError, ConfigErrors
from plait.config.resources import (
    BackendObjectReference,
    DNSLabel,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteRule,
    Items,
    Labels,
    Port,
    Resource,
    Service,
    SomeItems,
    StrictModel,
    parse_resource,
    selects,
    validate,
)
from plait.config.yamlio import Document, FieldPath, load_documents

__all__ = [
    "AppSpec",
    "GatewaySpec",
    "HealthCheck",
    "MeshFile",
    "TcpOutbound",
    "load_mesh_file",
    "parse_mesh",
]

# The interpreter running `plait up`: the demo apps then need no separate installation.
_OWN_PYTHON = ("python", "python3")


@dataclass(frozen=True)
class HealthCheck:
    """How the runner decides an instance is up: an HTTP GET of `http_path`, else a TCP connect."""

    http_path: str | None = None


@dataclass(frozen=True)
class TcpOutbound:
    """A TCP service port an app reaches through a local port of its proxy."""

    service: str
    port: int
    env: str  # e.g. REDIS_ADDR=127.0.0.1:40123 in the app's environment


@dataclass(frozen=True)
class AppSpec:
    """One app to run: `replicas` instances named NAME-0, NAME-1, ..., each beside a proxy."""

    name: str
    service: str
    namespace: str
    labels: Mapping[str, str]
    command: tuple[str, ...]  # a leading python/python3 is already the runner's interpreter
    port: int
    replicas: int
    env: Mapping[str, str]
    health: HealthCheck
    # TCP services the app calls without capture: each gets a local port on its proxy
    # (`--tcp-outbound`), whose address the app finds in the environment variable named.
    tcp_outbound: tuple[TcpOutbound, ...] = ()

    def instance_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}-{i}" for i in range(self.replicas))


@dataclass(frozen=True)
class GatewaySpec:
    """A gateway proxy serving the Gateway resource `name` on host port `port`."""

    name: str
    port: int


@dataclass(frozen=True)
class MeshFile:
    path: str
    name: str
    namespace: str
    gateway: GatewaySpec | None
    apps: tuple[AppSpec, ...]
    resources: tuple[Resource, ...]
    # The control plane's API port on 127.0.0.1: 15014, Istio's, unless the file says otherwise.
    control_port: int = 15014
    # Every proxy exports spans to this OTLP/HTTP collector, sampling this fraction of traces.
    tracing: tuple[str, float] | None = None
    # "sidecar" (a proxy per app instance) or "node" (one `plait proxy --mode node` for all).
    proxy_mode: str = "sidecar"


class _HttpGet(StrictModel):
    path: str = "/"


class _TcpSocket(StrictModel):
    pass


class _Health(StrictModel):
    http_get: _HttpGet | None = None
    tcp_socket: _TcpSocket | None = None

    @model_validator(mode="after")
    def _one_probe(self) -> _Health:
        if self.http_get is not None and self.tcp_socket is not None:
            raise ValueError("use either httpGet or tcpSocket")
        return self


class _TcpOutbound(StrictModel):
    service: DNSLabel
    port: Port
    env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class _App(StrictModel):
    name: DNSLabel
    service: DNSLabel
    labels: Labels = Field(default_factory=dict)
    command: SomeItems[str]
    port: Port
    replicas: int = Field(default=1, ge=0)
    env: Labels = Field(default_factory=dict)
    health: _Health = Field(default_factory=_Health)
    tcp_outbound: Items[_TcpOutbound] = ()


class _Gateway(StrictModel):
    name: DNSLabel
    port: Port


class _Control(StrictModel):
    port: Port = 15014


class _Tracing(StrictModel):
    endpoint: str = Field(pattern=r"^https?://")  # an OTLP/HTTP collector
    sample: float = Field(default=0.01, ge=0.0, le=1.0)  # 1 %: Istio's default


class _MeshSpec(StrictModel):
    namespace: DNSLabel = "default"
    # sidecar: a proxy beside each app instance; node: one proxy for all of them (node mode).
    proxy_mode: Literal["sidecar", "node"] = "sidecar"
    control: _Control = Field(default_factory=_Control)
    gateway: _Gateway | None = None
    tracing: _Tracing | None = None
    apps: Items[_App] = ()


class _MeshMeta(StrictModel):
    name: DNSLabel
    labels: Labels = Field(default_factory=dict)
    annotations: Labels = Field(default_factory=dict)


class _Mesh(StrictModel):
    api_version: Literal["plait.dev/v1"]
    kind: Literal["Mesh"]
    metadata: _MeshMeta
    spec: _MeshSpec = Field(default_factory=_MeshSpec)


def load_mesh_file(path: str) -> MeshFile:
    """Read and check a mesh file; every problem is a ConfigError naming file, line and field."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=path) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text: {e.reason}", file=path) from None
    return parse_mesh(text, path)


def parse_mesh(text: str, filename: str) -> MeshFile:
    """The pure half of `load_mesh_file`: text in, checked MeshFile out."""
    docs = load_documents(text, filename)
    mesh_docs = [d for d in docs if isinstance(d.data, dict) and d.data.get("kind") == "Mesh"]
    if not mesh_docs:
        raise ConfigError("no Mesh document (apiVersion: plait.dev/v1, kind: Mesh)", file=filename)
    if len(mesh_docs) > 1:
        raise mesh_docs[1].error(filename, ("kind",), "a mesh file holds exactly one Mesh")
    mesh_doc = mesh_docs[0]
    errors: list[ConfigError | ConfigErrors] = []
    mesh: _Mesh | None = None
    try:
        mesh = validate(_Mesh, mesh_doc, filename)
    except (ConfigError, ConfigErrors) as e:
        errors.append(e)  # still check the resources, to report every document at once
    namespace = mesh.spec.namespace if mesh else "default"
    placed: list[tuple[Resource, Document]] = []
    for doc in docs:
        if doc is not mesh_doc:
            try:
                placed.append((parse_resource(doc, filename, namespace=namespace), doc))
            except (ConfigError, ConfigErrors) as e:
                errors.append(e)
    ConfigErrors.raise_if_any(errors)
    assert mesh is not None  # else raise_if_any raised its error
    ConfigErrors.raise_if_any(_Checker(filename, mesh, mesh_doc, placed).errors())
    if mesh.spec.proxy_mode == "node" and any(app.tcp_outbound for app in mesh.spec.apps):
        raise mesh_doc.error(
            filename, ("spec", "proxyMode"), "tcpOutbound listeners need proxyMode: sidecar"
        )
    gateway = mesh.spec.gateway
    return MeshFile(
        path=filename,
        name=mesh.metadata.name,
        namespace=namespace,
        gateway=GatewaySpec(gateway.name, gateway.port) if gateway else None,
        apps=tuple(_app_spec(app, namespace) for app in mesh.spec.apps),
        resources=tuple(r for r, _ in placed),
        control_port=mesh.spec.control.port,
        proxy_mode=mesh.spec.proxy_mode,
        tracing=(mesh.spec.tracing.endpoint, mesh.spec.tracing.sample)
        if mesh.spec.tracing
        else None,
    )


def _app_spec(app: _App, namespace: str) -> AppSpec:
    command = app.command
    if command[0] in _OWN_PYTHON:
        command = (sys.executable, *command[1:])
    http_get = app.health.http_get
    return AppSpec(
        name=app.name,
        service=app.service,
        namespace=namespace,
        labels=dict(app.labels),
        command=command,
        port=app.port,
        replicas=app.replicas,
        env=dict(app.env),
        health=HealthCheck(http_get.path if http_get else None),
        tcp_outbound=tuple(TcpOutbound(t.service, t.port, t.env) for t in app.tcp_outbound),
    )


class _Checker:
    """References between the documents of one mesh file; collects every broken one."""

    def __init__(
        self,
        filename: str,
        mesh: _Mesh,
        mesh_doc: Document,
        placed: list[tuple[Resource, Document]],
    ) -> None:
        self.filename = filename
        self.mesh = mesh
        self.mesh_doc = mesh_doc
        self.placed = placed
        self.found: list[ConfigError] = []
        self.by_key: dict[tuple[str, str, str], tuple[Resource, Document]] = {}

    def errors(self) -> list[ConfigError]:
        self._index()
        self._apps()
        self._gateway()
        for resource, doc in self.placed:
            if isinstance(resource, HTTPRoute | GRPCRoute):
                self._route(resource, doc)
        return self.found

    def _fail(self, doc: Document, path: FieldPath, reason: str) -> None:
        self.found.append(doc.error(self.filename, path, reason))

    def _index(self) -> None:
        for resource, doc in self.placed:
            key = (resource.kind, resource.metadata.namespace, resource.metadata.name)
            if key in self.by_key:
                first = self.by_key[key][1].line_of(("metadata", "name"))
                self._fail(doc, ("metadata", "name"), f"duplicate {key[0]} (first at line {first})")
            else:
                self.by_key[key] = (resource, doc)

    def _service(self, namespace: str, name: str) -> Service | None:
        found = self.by_key.get(("Service", namespace, name))
        return found[0] if found and isinstance(found[0], Service) else None

    def _has(self, kind: str, namespace: str, name: str) -> bool:
        return (kind, namespace, name) in self.by_key

    def _apps(self) -> None:
        namespace = self.mesh.spec.namespace
        first_line: dict[str, int | None] = {}
        for i, app in enumerate(self.mesh.spec.apps):
            at: FieldPath = ("spec", "apps", i)
            if app.name in first_line:
                self._fail(
                    self.mesh_doc,
                    (*at, "name"),
                    f"duplicate app {app.name!r} (first at line {first_line[app.name]})",
                )
            first_line.setdefault(app.name, self.mesh_doc.line_of((*at, "name")))
            service = self._service(namespace, app.service)
            if service is None:
                reason = _missing("Service", namespace, app.service)
                self._fail(self.mesh_doc, (*at, "service"), reason)
                continue
            if not selects(service.spec.selector, app.labels):
                selector = ", ".join(f"{k}={v}" for k, v in service.spec.selector.items())
                reason = (
                    f"not selected by Service {app.service!r} (selector: {selector or 'empty'})"
                )
                self._fail(self.mesh_doc, (*at, "labels"), reason)
            ports = [p.port for p in service.spec.ports]
            if app.port not in ports:
                reason = f"{app.port} is not a port of Service {app.service!r} {ports}"
                self._fail(self.mesh_doc, (*at, "port"), reason)
            for j, tcp in enumerate(app.tcp_outbound):
                target = self._service(namespace, tcp.service)
                where: FieldPath = (*at, "tcpOutbound", j)
                if target is None:
                    reason = _missing("Service", namespace, tcp.service)
                    self._fail(self.mesh_doc, (*where, "service"), reason)
                elif tcp.port not in [p.port for p in target.spec.ports]:
                    reason = f"{tcp.port} is not a port of Service {tcp.service!r}"
                    self._fail(self.mesh_doc, (*where, "port"), reason)

    def _gateway(self) -> None:
        gateway = self.mesh.spec.gateway
        namespace = self.mesh.spec.namespace
        if gateway is not None and not self._has("Gateway", namespace, gateway.name):
            reason = _missing("Gateway", namespace, gateway.name)
            self._fail(self.mesh_doc, ("spec", "gateway", "name"), reason)

    def _route(self, route: HTTPRoute | GRPCRoute, doc: Document) -> None:
        own = route.metadata.namespace
        for i, parent in enumerate(route.spec.parent_refs):
            namespace = parent.namespace or own
            if not self._has(parent.kind, namespace, parent.name):
                reason = _missing(parent.kind, namespace, parent.name)
                self._fail(doc, ("spec", "parentRefs", i, "name"), reason)
        rules: tuple[HTTPRouteRule | GRPCRouteRule, ...] = route.spec.rules
        for i, rule in enumerate(rules):
            backends: tuple[BackendObjectReference, ...] = rule.backend_refs
            for j, backend in enumerate(backends):
                at: FieldPath = ("spec", "rules", i, "backendRefs", j)
                namespace = backend.namespace or own
                service = self._service(namespace, backend.name)
                if service is None:
                    self._fail(doc, (*at, "name"), _missing("Service", namespace, backend.name))
                    continue
                ports = [p.port for p in service.spec.ports]
                if backend.port is not None and backend.port not in ports:
                    reason = f"{backend.port} is not a port of Service {backend.name!r} {ports}"
                    self._fail(doc, (*at, "port"), reason)


def _missing(kind: str, namespace: str, name: str) -> str:
    return f"no {kind} {name!r} in namespace {namespace!r} in this file"
