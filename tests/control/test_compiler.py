"""The compiler: services to clusters, HTTPRoutes to routes, and the errors it refuses to hide."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from plait.config.mesh import load_mesh_file
from plait.config.resources import Resource, parse_resources
from plait.config.snapshot import (
    BackendRef,
    Cluster,
    HeaderMatch,
    Node,
    PathMatch,
    RouteMatch,
    Snapshot,
)
from plait.control.compiler import CompileError, Instance, compile_snapshot

BOOKINFO = Path(__file__).parents[2] / "examples" / "bookinfo" / "mesh.yaml"
NODE = Node(name="productpage-0", service="productpage", labels={"app": "productpage"})


def _service(name: str, selector: str, namespace: str = "default", ports: str = "9080") -> str:
    return f"""\
apiVersion: plait.dev/v1
kind: Service
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{selector: {{{selector}}}, ports: [{", ".join(f"{{port: {p}}}" for p in ports.split())}]}}
"""


SERVICES = [
    _service("reviews", "app: reviews"),
    _service("reviews-v1", "app: reviews, version: v1"),
    _service("reviews-v2", "app: reviews, version: v2"),
    _service("ratings", "app: ratings", ports="9080 9090"),
]


def _instance(name: str, port: int, namespace: str = "default", **labels: str) -> Instance:
    return Instance(name, labels.get("app", ""), namespace, labels, "127.0.0.1", port)


INSTANCES = [
    _instance("reviews-v1-0", 20001, app="reviews", version="v1"),
    _instance("reviews-v2-0", 20002, app="reviews", version="v2"),
    _instance("reviews-v2-1", 20003, app="reviews", version="v2"),
    _instance("reviews-v3-0", 20004, app="reviews", version="v3"),
    _instance("reviews-other", 20005, namespace="other", app="reviews", version="v1"),
]


def _route(rules: str, parents: str = "[{kind: Service, name: reviews}]", extra: str = "") -> str:
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: reviews}}
spec:
  parentRefs: {parents}
{extra}  rules:
{rules}"""


def _compile(*texts: str, instances: Sequence[Instance] = INSTANCES) -> Snapshot:
    resources: list[Resource] = []
    for text in texts:
        resources += parse_resources(text, "r.yaml")
    snapshot = compile_snapshot(resources, instances, NODE, "7")
    assert Snapshot.from_dict(snapshot.to_dict()) == snapshot  # what a proxy will accept
    return snapshot


def _clusters(snapshot: Snapshot) -> dict[str, Cluster]:
    return {c.name: c for c in snapshot.clusters}


def test_selectors_pick_endpoints_and_version_services_narrow_them() -> None:
    clusters = _clusters(_compile(*SERVICES))
    assert [e.workload for e in clusters["reviews"].endpoints] == [
        "reviews-v1-0",
        "reviews-v2-0",
        "reviews-v2-1",
        "reviews-v3-0",
    ]  # not reviews-other: a Service selects in its own namespace
    assert [e.workload for e in clusters["reviews-v2"].endpoints] == [
        "reviews-v2-0",
        "reviews-v2-1",
    ]
    v1 = clusters["reviews-v1"].endpoints[0]
    assert (v1.address, v1.port, dict(v1.labels)) == (
        "127.0.0.1",
        20001,
        {"app": "reviews", "version": "v1"},
    )
    assert clusters["ratings"].endpoints == ()
    assert clusters["ratings"].ports == (9080, 9090)


def test_empty_selector_selects_nothing() -> None:
    assert _clusters(_compile(_service("all", "")))["all"].endpoints == ()


def test_workload_resources_are_endpoints_too() -> None:
    workload = """\
apiVersion: plait.dev/v1
kind: Workload
metadata: {name: legacy-reviews}
spec: {address: 10.1.2.3, port: 8080, labels: {app: reviews, version: v1}}
"""
    clusters = _clusters(_compile(*SERVICES, workload))
    legacy = clusters["reviews-v1"].endpoints[-1]
    assert (legacy.workload, legacy.address, legacy.port) == ("legacy-reviews", "10.1.2.3", 8080)
    assert clusters["reviews-v2"].endpoints[-1].workload == "reviews-v2-1"


def test_clusters_and_routes_are_sorted_by_namespace_and_name() -> None:
    snapshot = _compile(*reversed(SERVICES), _service("a", "app: a", namespace="zz"))
    assert [(c.namespace, c.name) for c in snapshot.clusters] == [
        ("default", "ratings"),
        ("default", "reviews"),
        ("default", "reviews-v1"),
        ("default", "reviews-v2"),
        ("zz", "a"),
    ]
    assert (snapshot.version, snapshot.node) == ("7", NODE)


def test_weights_and_backend_namespaces() -> None:
    rules = """\
    - backendRefs:
        - {name: reviews-v1, port: 9080, weight: 90}
        - {name: reviews-v2, weight: 10}
        - {name: x, namespace: other, weight: 0}
"""
    (route,) = _compile(*SERVICES, _service("x", "app: x", "other"), _route(rules)).routes
    assert route.rules[0].backends == (
        BackendRef("reviews-v1", "default", 9080, 90),
        BackendRef("reviews-v2", "default", None, 10),
        BackendRef("x", "other", None, 0),
    )


def test_one_route_per_parent_with_lowercased_hostnames() -> None:
    text = _route(
        "    - backendRefs: [{name: reviews-v1}]\n",
        parents="[{kind: Service, name: reviews}, {name: edge, sectionName: http}]",
        extra="  hostnames: [Reviews.Example.COM, '*.shop.io']\n",
    )
    routes = _compile(*SERVICES, text).routes
    assert [(r.parent_kind, r.parent_name) for r in routes] == [
        ("Service", "reviews"),
        ("Gateway", "edge"),
    ]
    assert routes[0].hostnames == ("reviews.example.com", "*.shop.io")
    assert routes[0].rules == routes[1].rules


@pytest.mark.parametrize(
    ("timeouts", "ms"),
    [
        ("", 0),
        ("timeouts: {request: 10s}", 10_000),
        ("timeouts: {request: 0s}", 0),
        ("timeouts: {request: 10s, backendRequest: 1500ms}", 1_500),
        ("timeouts: {request: 0s, backendRequest: 2s}", 2_000),
    ],
)
def test_timeouts(timeouts: str, ms: int) -> None:
    rules = f"    - backendRefs: [{{name: reviews}}]\n      {timeouts}\n"
    (route,) = _compile(*SERVICES, _route(rules)).routes
    assert route.rules[0].timeout_ms == ms


def test_path_header_and_method_matches() -> None:
    rules = """\
    - matches:
        - path: {type: Exact, value: /reviews/1}
          headers: [{name: End-User, value: jason}, {type: Exact, name: x-canary, value: "1"}]
          method: POST
        - headers: [{name: x-debug, value: "on"}]
      backendRefs: [{name: reviews-v2}]
    - backendRefs: [{name: reviews-v1}]
"""
    (route,) = _compile(*SERVICES, _route(rules)).routes
    canary, default = route.rules
    assert canary.matches == (
        RouteMatch(
            path=PathMatch("Exact", "/reviews/1"),
            method="POST",
            headers=(HeaderMatch("end-user", "jason"), HeaderMatch("x-canary", "1")),
        ),
        RouteMatch(path=PathMatch("PathPrefix", "/"), headers=(HeaderMatch("x-debug", "on"),)),
    )
    assert default.matches == (RouteMatch(path=PathMatch("PathPrefix", "/")),)


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ("path: {type: RegularExpression, value: /r.*}", "matches[0].path: RegularExpression"),
        ("headers: [{type: RegularExpression, name: a, value: b.*}]", "matches[0].headers[0]"),
        ("queryParams: [{name: a, value: b}]", "matches[0].queryParams: query parameter"),
    ],
)
def test_unsupported_matches_are_compile_errors(match: str, message: str) -> None:
    rules = f"    - matches: [{{{match}}}]\n      backendRefs: [{{name: reviews}}]\n"
    with pytest.raises(CompileError, match="HTTPRoute default/reviews: spec.rules") as info:
        _compile(*SERVICES, _route(rules))
    assert message in str(info.value)


def test_filters_are_compile_errors_until_the_proxy_applies_them() -> None:
    rules = """\
    - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [x]}}]
      backendRefs: [{name: reviews}]
"""
    with pytest.raises(CompileError, match="spec.rules\\[0\\]: filters are not supported"):
        _compile(*SERVICES, _route(rules))


def test_dangling_backend_is_a_compile_error() -> None:
    rules = "    - backendRefs: [{name: reviews}, {name: nowhere}]\n"
    with pytest.raises(CompileError, match="backendRefs\\[1\\]: no Service default/nowhere"):
        _compile(*SERVICES, _route(rules))


def test_cross_namespace_parent_is_a_compile_error() -> None:
    text = _route("    - backendRefs: [{name: reviews}]\n", "[{name: edge, namespace: infra}]")
    with pytest.raises(CompileError, match="parent in another namespace"):
        _compile(*SERVICES, text)


def test_duplicate_service_is_a_compile_error() -> None:
    with pytest.raises(CompileError, match="default/reviews: defined twice"):
        _compile(*SERVICES, SERVICES[0])


def test_bookinfo_compiles() -> None:
    mesh = load_mesh_file(str(BOOKINFO))
    running = [(app, name) for app in mesh.apps for name in app.instance_names()]
    instances = [
        Instance(name, app.service, app.namespace, app.labels, "127.0.0.1", 21000 + n)
        for n, (app, name) in enumerate(running)
    ]
    node = Node(name="gateway", gateway="bookinfo-gateway")
    snapshot = compile_snapshot(mesh.resources, instances, node, "1")
    assert Snapshot.from_dict(snapshot.to_dict()) == snapshot
    clusters = _clusters(snapshot)
    assert [e.workload for e in clusters["reviews"].endpoints] == [
        "reviews-v1-0",
        "reviews-v2-0",
        "reviews-v3-0",
    ]
    assert [e.workload for e in clusters["reviews-v3"].endpoints] == ["reviews-v3-0"]
    (route,) = snapshot.routes
    assert (route.parent_kind, route.parent_name) == ("Gateway", "bookinfo-gateway")
    (rule,) = route.rules
    assert rule.backends == (BackendRef("productpage", "default", 9080, 1),)
    assert [(m.path.type, m.path.value) for m in rule.matches if m.path] == [
        ("Exact", "/productpage"),
        ("PathPrefix", "/static"),
        ("Exact", "/login"),
        ("Exact", "/logout"),
        ("PathPrefix", "/api/v1/products"),
        ("Exact", "/"),
    ]


@pytest.mark.parametrize("name", ["route-jason.yaml", "route-50-50.yaml"])
def test_example_routes_compile_with_bookinfo(name: str) -> None:
    mesh = load_mesh_file(str(BOOKINFO))
    extra = parse_resources((BOOKINFO.parent / name).read_text(), name)
    snapshot = compile_snapshot([*mesh.resources, *extra], [], NODE, "2")
    reviews = [r for r in snapshot.routes if r.parent_name == "reviews"]
    assert [b.service for rule in reviews[0].rules for b in rule.backends] in (
        ["reviews-v2", "reviews-v1"],
        ["reviews-v1", "reviews-v3"],
    )
    assert Snapshot.from_dict(snapshot.to_dict()) == snapshot
