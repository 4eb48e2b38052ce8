"""The compiler: services to clusters, HTTPRoutes to routes, and the errors it refuses to hide."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from plait.config.errors import ConfigError
from plait.config.fault_resources import HTTPFault
from plait.config.mesh import load_mesh_file
from plait.config.resources import Resource, parse_resource, parse_resources, validate
from plait.config.snapshot import (
    BackendRef,
    Cluster,
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
    RouteMatch,
    Snapshot,
)
from plait.config.yamlio import load_documents
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


def _parse(text: str, filename: str = "r.yaml") -> list[Resource | HTTPFault]:
    """Resources, HTTPFault included (until resources.KINDS registers it)."""
    return [
        validate(HTTPFault, doc, filename)
        if doc.data.get("kind") == "HTTPFault"
        else parse_resource(doc, filename)
        for doc in load_documents(text, filename)
    ]


def _compile(*texts: str, instances: Sequence[Instance] = INSTANCES) -> Snapshot:
    resources: list[Resource | HTTPFault] = []
    for text in texts:
        resources += _parse(text)
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
    ("timeouts", "request_ms", "backend_ms"),
    [
        ("", 0, 0),
        ("timeouts: {request: 10s}", 10_000, 0),
        ("timeouts: {request: 0s}", 0, 0),
        ("timeouts: {request: 10s, backendRequest: 1500ms}", 10_000, 1_500),
        ("timeouts: {request: 0s, backendRequest: 2s}", 0, 2_000),
    ],
)
def test_request_and_backend_timeouts_compile_separately(
    timeouts: str, request_ms: int, backend_ms: int
) -> None:
    rules = f"    - backendRefs: [{{name: reviews}}]\n      {timeouts}\n"
    (route,) = _compile(*SERVICES, _route(rules)).routes
    assert (route.rules[0].timeout_ms, route.rules[0].backend_timeout_ms) == (
        request_ms,
        backend_ms,
    )


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


def test_regex_and_query_matches_with_first_of_a_name_winning() -> None:
    rules = """\
    - matches:
        - path: {type: RegularExpression, value: "/reviews/[0-9]+"}
          headers:
            - {type: RegularExpression, name: X-Canary, value: "on|yes"}
            - {name: x-canary, value: ignored}
          queryParams:
            - {name: u, value: jason}
            - {type: RegularExpression, name: id, value: "[0-9]+"}
            - {name: u, value: ignored}
      backendRefs: [{name: reviews-v2}]
"""
    (route,) = _compile(*SERVICES, _route(rules)).routes
    (match,) = route.rules[0].matches
    assert match == RouteMatch(
        path=PathMatch("RegularExpression", "/reviews/[0-9]+"),
        headers=(HeaderMatch("x-canary", "on|yes", "RegularExpression"),),
        query_params=(
            QueryParamMatch("u", "jason"),
            QueryParamMatch("id", "[0-9]+", "RegularExpression"),
        ),
    )
    assert match.path is not None and match.path.regex is not None  # compiled once, here


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ("path: {type: RegularExpression, value: '/(a+)+'}", "matches[0].path: nested repeats"),
        ("path: {type: RegularExpression, value: '/(['}", "matches[0].path: invalid regular"),
        ("headers: [{type: RegularExpression, name: a, value: '(x*)*'}]", "matches[0].headers[0]"),
        ("queryParams: [{type: RegularExpression, name: a, value: '(b|c+)*'}]", "queryParams[0]"),
        (f"headers: [{{type: RegularExpression, name: a, value: '{'x' * 1025}'}}]", "longer than"),
    ],
)
def test_dangerous_or_invalid_regexes_are_compile_errors(match: str, message: str) -> None:
    rules = f"    - matches: [{{{match}}}]\n      backendRefs: [{{name: reviews}}]\n"
    with pytest.raises(CompileError, match="HTTPRoute default/reviews: spec.rules") as info:
        _compile(*SERVICES, _route(rules))
    assert message in str(info.value)


def test_possessive_or_atomic_nesting_is_accepted() -> None:
    rules = """\
    - matches:
        - path: {type: RegularExpression, value: "(/[a-z]++)*"}
        - path: {type: RegularExpression, value: "(?>/[a-z]+)*/x"}
        - path: {type: RegularExpression, value: "(\\\\d{1,3}\\\\.){3}\\\\d{1,3}"}
      backendRefs: [{name: reviews}]
"""
    (route,) = _compile(*SERVICES, _route(rules)).routes
    assert len(route.rules[0].matches) == 3


def test_header_redirect_and_rewrite_filters_compile() -> None:
    rules = """\
    - matches: [{path: {value: /old}}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: X-Route, value: canary}]
            add: [{name: X-Extra, value: "1"}]
            remove: [X-Drop]
        - {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [Server]}}
        - type: RequestRedirect
          requestRedirect:
            scheme: https
            hostname: Shop.Example.com
            path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}
            statusCode: 301
    - backendRefs:
        - name: reviews-v1
          filters:
            - type: URLRewrite
              urlRewrite: {hostname: reviews.internal, path: {type: ReplaceFullPath, replaceFullPath: /}}
"""
    (route,) = _compile(*SERVICES, _route(rules)).routes
    redirect, rewrite = route.rules
    assert redirect.filters == Filters(
        request_headers=HeaderModifier(
            set=(("x-route", "canary"),), add=(("x-extra", "1"),), remove=("x-drop",)
        ),
        response_headers=HeaderModifier(remove=("server",)),
        redirect=Redirect(
            "https", "shop.example.com", None, PathModifier("ReplacePrefixMatch", "/new"), 301
        ),
    )
    assert rewrite.backends[0].filters == Filters(
        rewrite=Rewrite("reviews.internal", PathModifier("ReplaceFullPath", "/"))
    )


def test_mirrors_repeat_with_percent_or_fraction() -> None:
    rules = """\
    - filters:
        - {type: RequestMirror, requestMirror: {backendRef: {name: reviews-v2, port: 9080}}}
        - {type: RequestMirror, requestMirror: {backendRef: {name: ratings}, percent: 10}}
        - type: RequestMirror
          requestMirror: {backendRef: {name: reviews-v1}, fraction: {numerator: 1, denominator: 3}}
      backendRefs: [{name: reviews}]
"""
    (route,) = _compile(*SERVICES, _route(rules)).routes
    assert route.rules[0].filters.mirrors == (
        Mirror("reviews-v2", "default", 9080, 100, 100),
        Mirror("ratings", "default", None, 10, 100),
        Mirror("reviews-v1", "default", None, 1, 3),
    )


FAULT = """\
apiVersion: plait.dev/v1
kind: HTTPFault
metadata: {name: slow}
spec:
  delay: {fixedDelay: 7s, percentage: {value: 100}}
  abort: {grpcStatus: UNAVAILABLE, percentage: {value: 12.5}}
"""


def test_extension_ref_resolves_an_http_fault() -> None:
    rules = """\
    - filters: [{type: ExtensionRef, extensionRef: {group: plait.dev, kind: HTTPFault, name: slow}}]
      backendRefs: [{name: reviews}]
"""
    (route,) = _compile(*SERVICES, FAULT, _route(rules)).routes
    assert route.rules[0].filters.fault == Fault(
        delay_ms=7_000, delay_percent=100.0, abort_grpc_status=14, abort_percent=12.5
    )


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("{group: plait.dev, kind: HTTPFault, name: nowhere}", "no HTTPFault default/nowhere"),
        ("{group: example.com, kind: Auth, name: slow}", "unsupported example.com/Auth"),
    ],
)
def test_dangling_or_foreign_extension_ref_is_a_compile_error(ref: str, message: str) -> None:
    rules = f"    - filters: [{{type: ExtensionRef, extensionRef: {ref}}}]\n"
    with pytest.raises(
        CompileError, match="spec.rules\\[0\\].filters\\[0\\]: extensionRef"
    ) as info:
        _compile(*SERVICES, FAULT, _route(rules))
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "- filters: [{type: RequestMirror, requestMirror: {backendRef: {name: gone}}}]",
            "filters[0]: requestMirror.backendRef: no Service default/gone",
        ),
        (
            "- filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {remove: [a]}},"
            " {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [b]}}]",
            "filters[1]: a second ResponseHeaderModifier",
        ),
        (
            "- filters: [{type: RequestHeaderModifier, requestHeaderModifier:"
            " {set: [{name: X-A, value: '1'}], remove: [x-a]}}]",
            "filters[0]: each header name may appear in one action only",
        ),
        (
            "- filters: [{type: RequestHeaderModifier, requestHeaderModifier:"
            " {set: [{name: Content-Length, value: '0'}]}}]",
            "'content-length' cannot be modified",
        ),
        (
            "- filters: [{type: RequestHeaderModifier, requestHeaderModifier:"
            ' {add: [{name: x-a, value: "a\\r\\nx: b"}]}}]',
            "control character",
        ),
        (
            "- backendRefs: [{name: reviews, filters: [{type: RequestRedirect,"
            " requestRedirect: {hostname: a}}]}]",
            "backendRefs[0].filters: a RequestRedirect belongs on the rule",
        ),
        (
            "- matches: [{path: {type: Exact, value: /a}}]\n"
            "      filters: [{type: URLRewrite, urlRewrite:"
            " {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]",
            "spec.rules[0]: ReplacePrefixMatch needs every match of the rule to be a PathPrefix",
        ),
    ],
)
def test_filters_the_proxy_could_not_apply_are_compile_errors(rule: str, message: str) -> None:
    with pytest.raises(CompileError, match="HTTPRoute default/reviews: spec.rules") as info:
        _compile(*SERVICES, _route(f"    {rule}\n"))
    assert message in str(info.value)


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


def test_example_fault_delays_ratings_for_jason() -> None:
    mesh = load_mesh_file(str(BOOKINFO))
    name = "fault-ratings-delay.yaml"
    extra = _parse((BOOKINFO.parent / name).read_text(), name)
    snapshot = compile_snapshot([*mesh.resources, *extra], [], NODE, "3")
    (ratings,) = [r for r in snapshot.routes if r.parent_name == "ratings"]
    jason, everyone = ratings.rules
    assert jason.matches[0].headers == (HeaderMatch("end-user", "jason"),)
    assert jason.filters.fault == Fault(delay_ms=7_000, delay_percent=100.0)
    assert everyone.filters == Filters()
    assert Snapshot.from_dict(snapshot.to_dict()) == snapshot


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{}", "spec: set delay, abort or both"),
        ("{delay: {fixedDelay: 7s}}", "spec.delay.percentage: required field is missing"),
        ("{delay: {fixedDelay: 0s, percentage: {value: 1}}}", "fixedDelay must be at least 1ms"),
        ("{abort: {percentage: {value: 1}}}", "set exactly one of httpStatus and grpcStatus"),
        ("{abort: {grpcStatus: NOPE, percentage: {value: 1}}}", "grpcStatus must be one of OK"),
        ("{abort: {httpStatus: 700, percentage: {value: 1}}}", "spec.abort.httpStatus"),
        ("{delay: {fixedDelay: 1s, percentage: {value: 101}}}", "spec.delay.percentage.value"),
    ],
)
def test_http_fault_is_strict(spec: str, message: str) -> None:
    text = f"apiVersion: plait.dev/v1\nkind: HTTPFault\nmetadata: {{name: f}}\nspec: {spec}\n"
    with pytest.raises(ConfigError, match=re.escape(message)):
        _parse(text)
