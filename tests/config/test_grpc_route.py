"""GRPCRoute (gateway.networking.k8s.io/v1): the spec's fields, defaults and strictness."""

from __future__ import annotations

from pathlib import Path

import pytest

from plait.config.errors import ConfigError, ConfigErrors
from plait.config.mesh import load_mesh_file, parse_mesh
from plait.config.resources import GRPCRoute, parse_resources
from plait.config.snapshot import Node, PathMatch
from plait.control.compiler import compile_snapshot

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter}
spec:
  parentRefs: [{group: "", kind: Service, name: greeter, port: 50051}]
  hostnames: [greeter.example.com]
  rules:
    - matches:
        - method: {service: helloworld.Greeter, method: SayHello}
          headers: [{name: x-tier, value: gold}]
        - method: {type: RegularExpression, service: "helloworld\\\\..*", method: "Say.*"}
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-routed, value: grpc}]}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {remove: [x-internal]}
        - type: RequestMirror
          requestMirror: {backendRef: {name: greeter-shadow}, percent: 10}
      backendRefs:
        - {name: greeter-v1, port: 50051, weight: 90}
        - name: greeter-v2
          weight: 10
          filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: a, value: b}]}}]
      retry: {retryOn: "unavailable,resource-exhausted", attempts: 3}
    - backendRefs: [{name: greeter-v1}]
"""


def _route(text: str = ROUTE) -> GRPCRoute:
    (route,) = parse_resources(text, "g.yaml")
    assert isinstance(route, GRPCRoute)
    return route


def _errors(text: str) -> list[str]:
    with pytest.raises((ConfigError, ConfigErrors)) as e:
        parse_resources(text, "g.yaml")
    err = e.value
    return [str(x) for x in err.errors] if isinstance(err, ConfigErrors) else [str(err)]


def test_fields_and_defaults() -> None:
    route = _route()
    first, catch_all = route.spec.rules
    exact, regex = first.matches
    assert exact.method is not None and exact.method.type == "Exact"  # the spec's default
    assert (exact.method.service, exact.method.method) == ("helloworld.Greeter", "SayHello")
    assert exact.headers[0].type == "Exact"
    assert regex.method is not None and regex.method.type == "RegularExpression"
    assert [f.type for f in first.filters] == [
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestMirror",
    ]
    assert [(b.name, b.weight) for b in first.backend_refs] == [
        ("greeter-v1", 90),
        ("greeter-v2", 10),
    ]
    assert first.retry is not None and first.retry.retry_on == "unavailable,resource-exhausted"
    assert catch_all.matches == ()  # no matches: every call
    assert catch_all.backend_refs[0].weight == 1
    assert route.spec.parent_refs[0].kind == "Service"


def test_service_or_method_alone_is_enough() -> None:
    text = ROUTE.replace(
        "method: {service: helloworld.Greeter, method: SayHello}", "method: {method: SayHello}"
    )
    assert _route(text).spec.rules[0].matches[0].method.service is None  # type: ignore[union-attr]
    text = ROUTE.replace(
        "method: {service: helloworld.Greeter, method: SayHello}",
        "method: {service: .helloworld.Greeter}",
    )
    assert _route(text).spec.rules[0].matches[0].method.method is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "method: {service: helloworld.Greeter, method: SayHello}",
            "method: {}",
            "spec.rules[0].matches[0].method: one or both of service and method must be set",
        ),
        (
            "service: helloworld.Greeter, method: SayHello",
            "service: hello/world, method: SayHello",
            "spec.rules[0].matches[0].method: service 'hello/world' is not a gRPC service name",
        ),
        (
            "service: helloworld.Greeter, method: SayHello",
            "service: helloworld.Greeter, method: Say.Hello",
            "spec.rules[0].matches[0].method: method 'Say.Hello' is not a gRPC method name",
        ),
        (
            "service: helloworld.Greeter, method: SayHello}",
            "service: helloworld.Greeter, method: SayHello, type: Prefix}",
            "spec.rules[0].matches[0].method.type: Input should be 'Exact' or 'RegularExpression'",
        ),
        (
            "headers: [{name: x-tier, value: gold}]",
            "headers: [{name: x-tier, value: gold, type: Prefix}]",
            "spec.rules[0].matches[0].headers[0].type:",
        ),
        (
            "type: RequestHeaderModifier\n          requestHeaderModifier",
            "type: URLRewrite\n          requestHeaderModifier",
            "spec.rules[0].filters[0].type: Input should be",
        ),
        (
            "type: ResponseHeaderModifier\n",
            "type: RequestHeaderModifier\n",
            "spec.rules[0].filters[1]: a RequestHeaderModifier filter sets "
            "`requestHeaderModifier` and no other",
        ),
        (
            "{name: greeter-v1, port: 50051, weight: 90}",
            "{name: greeter-v1, port: 50051, weight: -1}",
            "spec.rules[0].backendRefs[0].weight: Input should be greater than or equal to 0",
        ),
        (
            "{name: greeter-v1, port: 50051, weight: 90}",
            "{name: greeter-v1, port: 50051, weight: 90, kind: Pod}",
            "spec.rules[0].backendRefs[0].kind: Input should be 'Service'",
        ),
        (
            "{name: greeter-v1, port: 50051, weight: 90}",
            "{name: greeter-v1, port: 50051, weihgt: 90}",
            "spec.rules[0].backendRefs[0].weihgt: unknown field",
        ),
        (
            "retry: {retryOn",
            "retry: {sometimes: true, retryOn",
            "spec.rules[0].retry.sometimes: unknown field",
        ),
        ("hostnames: [greeter.example.com]", "hostnames: [greeter_example]", "spec.hostnames[0]"),
        ("  rules:\n", "  timeouts: {request: 1s}\n  rules:\n", "spec.timeouts: unknown field"),
    ],
)
def test_bad_fields_are_errors_naming_the_field(old: str, new: str, message: str) -> None:
    assert old in ROUTE
    errors = _errors(ROUTE.replace(old, new, 1))
    assert any(message in e for e in errors), errors


def test_a_route_needs_parents_and_rules() -> None:
    text = (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\n"
        "spec: {parentRefs: [], rules: []}\n"
    )
    errors = _errors(text)
    assert any("spec.parentRefs: must not be empty" in e for e in errors), errors
    assert any("spec.rules: must not be empty" in e for e in errors), errors


def test_wrong_api_version_names_the_right_one() -> None:
    text = ROUTE.replace("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2")
    assert _errors(text) == [
        "g.yaml:1: apiVersion: expected gateway.networking.k8s.io/v1 for kind GRPCRoute"
    ]


# --- the example mesh file ----------------------------------------------------------------------

EXAMPLE = Path(__file__).parents[2] / "examples" / "grpc" / "mesh.yaml"


def test_grpc_example_loads_and_compiles() -> None:
    mesh = load_mesh_file(str(EXAMPLE))
    assert {a.name: (a.service, a.port) for a in mesh.apps} == {
        "greeter-v1": ("greeter", 50051),
        "greeter-v2": ("greeter", 50051),
        "client": ("client", 8080),
    }
    greeter = next(
        r for r in mesh.resources if r.kind == "Service" and r.metadata.name == "greeter"
    )
    assert greeter.spec.ports[0].protocol == "grpc"  # type: ignore[union-attr]
    snapshot = compile_snapshot(list(mesh.resources), [], Node(name="client-0"), "1")
    (route,) = [r for r in snapshot.routes if r.parent_kind == "Service"]
    assert route.name == "greeter"
    first, second = route.rules
    assert first.matches[0].path == PathMatch("Exact", "/helloworld.Greeter/SayHelloStream")
    assert [(b.service, b.weight) for b in second.backends] == [
        ("greeter-v1", 80),
        ("greeter-v2", 20),
    ]
    assert second.retries is not None and second.retries.grpc_statuses == frozenset({14})


def test_mesh_file_checks_grpcroute_references() -> None:
    text = (
        EXAMPLE.read_text()
        .replace(
            "backendRefs: [{name: greeter-v2, port: 50051}]",
            "backendRefs: [{name: greeter-v3, port: 50051}]",
        )
        .replace(
            "{name: greeter-v1, port: 50051, weight: 80}", "{name: greeter-v1, port: 9, weight: 80}"
        )
    )
    with pytest.raises((ConfigError, ConfigErrors)) as e:
        parse_mesh(text, "mesh.yaml")
    message = str(e.value)
    assert "spec.rules[0].backendRefs[0].name: no Service 'greeter-v3'" in message
    assert "spec.rules[1].backendRefs[0].port: 9 is not a port of Service 'greeter-v1'" in message
