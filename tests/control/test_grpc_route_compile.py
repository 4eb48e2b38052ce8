"""GRPCRoute through the control plane: kind names, stored form, compile, routing, analyze.

A GRPCRoute compiles into the snapshot's HTTP route shapes (POST on `/package.Service/Method`),
so these tests also run the compiled routes through the proxy's pure route table to check the
GRPCRoute precedence rules end to end.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.config.resources import GRPCRoute, Resource, parse_resources
from plait.config.snapshot import HeaderMatch, Node, PathMatch, RouteMatch, Snapshot
from plait.control import kinds
from plait.control.analysis import NOT_SUPPORTED, PORT_NOT_FOUND, REFERENCE_NOT_FOUND, analyze
from plait.control.compiler import CompileError, compile_snapshot
from plait.proxy.resilience import Outcome, RetryPolicy
from plait.proxy.routing import RouteTable

NODE = Node(name="client-0", service="client", labels={"app": "client"})


def _service(name: str, selector: str) -> str:
    return f"""\
apiVersion: plait.dev/v1
kind: Service
metadata: {{name: {name}}}
spec: {{selector: {{{selector}}}, ports: [{{port: 50051, protocol: grpc}}]}}
"""


SERVICES = "---\n".join(
    [
        _service("greeter", "app: greeter"),
        _service("greeter-v1", "app: greeter, version: v1"),
        _service("greeter-v2", "app: greeter, version: v2"),
        _service("greeter-shadow", "app: greeter-shadow"),
    ]
)


def _route(rules: str, name: str = "greeter", extra: str = "") -> str:
    return f"""\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{kind: Service, name: greeter, port: 50051}}]
{extra}  rules:
{rules}"""


def _resources(*texts: str) -> list[Resource]:
    return parse_resources("---\n".join([SERVICES, *texts]), "g.yaml")


def _compile(*texts: str) -> Snapshot:
    return compile_snapshot(_resources(*texts), [], NODE, "1")


def _pick(table: RouteTable, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> str:
    decision = table.outbound(b"greeter:50051", b"POST", path.encode(), headers or [])
    assert decision is not None, path
    return decision.service[1]


# --- kind names and the stored form -------------------------------------------------------------


def test_kind_names_resolve() -> None:
    for name in ("GRPCRoute", "grpcroute", "grpcroutes", "grpcroutes.gateway.networking.k8s.io"):
        assert kinds.resolve_kind(name) == "GRPCRoute"
    assert kinds.API_VERSIONS["GRPCRoute"] == "gateway.networking.k8s.io/v1"


def test_stored_form_round_trips() -> None:
    (route,) = parse_resources(
        _route(
            """\
    - matches: [{method: {service: helloworld.Greeter, method: SayHello}}]
      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: greeter-shadow}}}]
      backendRefs: [{name: greeter-v1, weight: 3}]
      retry: {retryOn: unavailable, attempts: 2, backoff: 100ms}
"""
        ),
        "g.yaml",
    )
    stored = kinds.encode(route)
    assert b"requestRedirect" not in stored and b"urlRewrite" not in stored
    back = kinds.decode("GRPCRoute", stored)
    assert isinstance(back, GRPCRoute) and back == route


# --- compile -----------------------------------------------------------------------------------


def test_method_matches_compile_to_post_paths() -> None:
    snapshot = _compile(
        _route(
            """\
    - matches:
        - method: {service: helloworld.Greeter, method: SayHello}
          headers: [{name: X-Tier, value: gold}, {name: x-tier, value: ignored}]
        - method: {service: helloworld.Greeter}
        - method: {method: SayHello}
        - method: {type: RegularExpression, service: "hello.*", method: "Say(Hello|Bye)"}
        - method: {type: RegularExpression, method: "Say.*"}
        - headers: [{type: RegularExpression, name: x-tier, value: "g.*"}]
      backendRefs: [{name: greeter-v1}]
"""
        )
    )
    (route,) = snapshot.routes
    assert (route.name, route.parent_kind, route.parent_name) == ("greeter", "Service", "greeter")
    matches = route.rules[0].matches
    assert matches[0] == RouteMatch(
        path=PathMatch("Exact", "/helloworld.Greeter/SayHello"),
        method="POST",
        headers=(HeaderMatch("x-tier", "gold"),),
    )
    paths = [(m.path.type, m.path.value) for m in matches if m.path is not None]
    assert paths[1:] == [
        ("PathPrefix", "/helloworld.Greeter/"),
        ("RegularExpression", "/[^/]+/SayHello"),
        ("RegularExpression", "/(?:hello.*)/(?:Say(Hello|Bye))"),
        ("RegularExpression", "/[^/]+/(?:Say.*)"),
        ("PathPrefix", "/"),
    ]
    assert all(m.method == "POST" for m in matches)


def test_no_matches_is_every_grpc_call() -> None:
    (route,) = _compile(_route("    - backendRefs: [{name: greeter-v1}]\n")).routes
    assert route.rules[0].matches == (RouteMatch(path=PathMatch("PathPrefix", "/"), method="POST"),)


def test_filters_weights_and_retries_compile() -> None:
    (route,) = _compile(
        _route(
            """\
    - filters:
        - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Routed, value: grpc}]}}
        - {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [X-Internal]}}
        - {type: RequestMirror, requestMirror: {backendRef: {name: greeter-shadow}, percent: 5}}
      backendRefs:
        - {name: greeter-v1, weight: 80}
        - name: greeter-v2
          weight: 20
          filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: a, value: b}]}}]
      retry: {retryOn: "unavailable,resource-exhausted,5xx", attempts: 3}
""",
            extra="  hostnames: [Greeter.Example.com]\n",
        )
    ).routes
    rule = route.rules[0]
    assert route.hostnames == ("greeter.example.com",)
    assert rule.filters.request_headers is not None
    assert rule.filters.request_headers.set == (("x-routed", "grpc"),)
    assert rule.filters.response_headers is not None
    assert rule.filters.response_headers.remove == ("x-internal",)
    assert [(m.service, m.numerator) for m in rule.filters.mirrors] == [("greeter-shadow", 5)]
    assert [(b.service, b.weight) for b in rule.backends] == [
        ("greeter-v1", 80),
        ("greeter-v2", 20),
    ]
    assert rule.backends[1].filters.request_headers is not None
    assert rule.timeout_ms == 0  # grpc-timeout carries the deadline
    retries = rule.retries
    assert retries is not None
    assert retries.attempts == 3
    assert retries.retry_on == ("5xx",)
    assert retries.grpc_statuses == frozenset({14, 8})


def test_grpc_retry_conditions_keep_connect_failure_retries() -> None:
    (route,) = _compile(
        _route("    - backendRefs: [{name: greeter-v1}]\n      retry: {retryOn: cancelled}\n")
    ).routes
    retries = route.rules[0].retries
    assert retries is not None
    assert retries.retry_on == ("connect-failure", "refused-stream")
    assert retries.grpc_statuses == frozenset({1})


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "    - backendRefs: [{name: nope}]\n",
            "GRPCRoute default/greeter: spec.rules[0].backendRefs[0]: no Service default/nope",
        ),
        (
            "    - matches: [{method: {type: RegularExpression, service: '(a+)*'}}]\n"
            "      backendRefs: [{name: greeter-v1}]\n",
            "GRPCRoute default/greeter: spec.rules[0].matches[0].method: nested repeats",
        ),
        (
            "    - matches: [{method: {type: RegularExpression, method: '('}}]\n"
            "      backendRefs: [{name: greeter-v1}]\n",
            "spec.rules[0].matches[0].method: invalid regular expression",
        ),
        (
            "    - backendRefs: [{name: greeter-v1}]\n      retry: {retryOn: sometimes}\n",
            "spec.rules[0]: unknown retry condition 'sometimes'",
        ),
        (
            "    - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: gone}}}]\n"
            "      backendRefs: [{name: greeter-v1}]\n",
            "spec.rules[0].filters[0]: requestMirror.backendRef: no Service default/gone",
        ),
        (
            "    - filters:\n"
            "        - {type: ExtensionRef, extensionRef: {group: x.io, kind: Thing, name: t}}\n"
            "      backendRefs: [{name: greeter-v1}]\n",
            "spec.rules[0].filters[0]: extensionRef: unsupported x.io/Thing",
        ),
    ],
)
def test_what_the_proxy_cannot_apply_is_a_compile_error(rule: str, message: str) -> None:
    with pytest.raises(CompileError) as e:
        _compile(_route(rule))
    assert message in str(e.value)


def test_snapshot_with_grpc_route_round_trips() -> None:
    snapshot = _compile(
        _route(
            "    - matches: [{method: {service: helloworld.Greeter}}]\n"
            "      backendRefs: [{name: greeter-v1}]\n"
            "      retry: {retryOn: unavailable}\n"
        )
    )
    data = snapshot.to_dict()
    assert data["routes"][0]["rules"][0]["retries"]["grpc_statuses"] == [14]
    assert Snapshot.from_dict(data) == snapshot


# --- routing: the compiled routes through the proxy's route table ------------------------------


def test_routing_by_method_and_precedence() -> None:
    table = RouteTable(
        _compile(
            _route(
                """\
    - matches: [{method: {service: helloworld.Greeter}}]
      backendRefs: [{name: greeter-v1}]
    - matches: [{method: {service: helloworld.Greeter, method: SayHelloStream}}]
      backendRefs: [{name: greeter-v2}]
    - matches:
        - method: {service: helloworld.Greeter, method: SayHello}
          headers: [{name: x-canary, value: "yes"}]
      backendRefs: [{name: greeter-shadow}]
"""
            )
        )
    )
    # Exact service and method outrank the service alone, whatever the rule order.
    assert _pick(table, "/helloworld.Greeter/SayHelloStream") == "greeter-v2"
    assert _pick(table, "/helloworld.Greeter/SayHello") == "greeter-v1"
    assert _pick(table, "/helloworld.Greeter/SayHello", [(b"x-canary", b"yes")]) == "greeter-shadow"
    assert _pick(table, "/helloworld.Greeter/Other") == "greeter-v1"
    # Not a method of helloworld.Greeter: no route (a gRPC caller gets UNIMPLEMENTED).
    for path in (b"/helloworld.GreeterX/SayHello", b"/other.Service/SayHello"):
        assert table.outbound(b"greeter:50051", b"POST", path, []) is None


def test_regex_method_match_routes() -> None:
    table = RouteTable(
        _compile(
            _route(
                """\
    - matches: [{method: {type: RegularExpression, service: "helloworld\\\\..*", method: "Say.*Stream"}}]
      backendRefs: [{name: greeter-v2}]
    - backendRefs: [{name: greeter-v1}]
"""
            )
        )
    )
    assert _pick(table, "/helloworld.Greeter/SayHelloStream") == "greeter-v2"
    assert _pick(table, "/helloworld.Greeter/SayHello") == "greeter-v1"
    assert _pick(table, "/other.Greeter/SayHelloStream") == "greeter-v1"


def test_weighted_split() -> None:
    snapshot = _compile(
        _route(
            "    - backendRefs: [{name: greeter-v1, weight: 3}, {name: greeter-v2, weight: 1}]\n"
        )
    )
    table = RouteTable(snapshot, random.Random(7))
    picks = [_pick(table, "/helloworld.Greeter/SayHello") for _ in range(4000)]
    share = picks.count("greeter-v1") / len(picks)
    assert 0.70 < share < 0.80, share
    assert set(picks) == {"greeter-v1", "greeter-v2"}


def test_grpc_routes_only_take_post() -> None:
    table = RouteTable(_compile(_route("    - backendRefs: [{name: greeter-v1}]\n")))
    assert _pick(table, "/helloworld.Greeter/SayHello") == "greeter-v1"
    assert table.outbound(b"greeter:50051", b"GET", b"/helloworld.Greeter/SayHello", []) is None


def test_compiled_retries_retry_listed_grpc_statuses_for_post() -> None:
    (route,) = _compile(
        _route("    - backendRefs: [{name: greeter-v1}]\n      retry: {retryOn: unavailable}\n")
    ).routes
    assert route.rules[0].retries is not None
    policy = RetryPolicy.from_config(route.rules[0].retries)
    unavailable = Outcome(status=200, grpc_status=14, idempotent=False)
    assert policy.should_retry(unavailable, 0)
    assert not policy.should_retry(Outcome(status=200, grpc_status=13), 0)
    assert not policy.should_retry(Outcome(status=200, grpc_status=14, replayable=False), 0)
    assert not policy.should_retry(unavailable, 2)  # Istio's default attempts: 2


# --- analyze --------------------------------------------------------------------------------------


def test_analyze_reports_dangling_references_and_ports() -> None:
    resources = _resources(
        _route(
            """\
    - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: gone}}}]
      backendRefs: [{name: greeter-v1, port: 8080}, {name: missing}]
"""
        ).replace("name: greeter, port: 50051", "name: nowhere")
    )
    findings = [f for f in analyze(resources) if f.kind == "GRPCRoute"]
    got = {(f.code, f.field) for f in findings}
    assert got == {
        (REFERENCE_NOT_FOUND, "spec.parentRefs[0].name"),
        (PORT_NOT_FOUND, "spec.rules[0].backendRefs[0].port"),
        (REFERENCE_NOT_FOUND, "spec.rules[0].backendRefs[1].name"),
        (REFERENCE_NOT_FOUND, "spec.rules[0].filters[0].requestMirror.name"),
    }


def test_analyze_reports_what_does_not_compile() -> None:
    resources = _resources(
        _route(
            "    - matches: [{method: {type: RegularExpression, method: '(a*)*'}}]\n"
            "      backendRefs: [{name: greeter-v1}]\n"
        )
    )
    (finding,) = [f for f in analyze(resources) if f.kind == "GRPCRoute"]
    assert finding.code == NOT_SUPPORTED
    assert "nested repeats" in finding.message


_IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)


@settings(max_examples=40, deadline=None)
@given(package=_IDENT, service=_IDENT, method=_IDENT, other=_IDENT)
def test_exact_method_matches_route_exactly_that_method(
    package: str, service: str, method: str, other: str
) -> None:
    full = f"{package}.{service}"
    table = RouteTable(
        _compile(
            _route(
                f"""\
    - matches: [{{method: {{service: "{full}", method: "{method}"}}}}]
      backendRefs: [{{name: greeter-v2}}]
    - matches: [{{method: {{service: "{full}"}}}}]
      backendRefs: [{{name: greeter-v1}}]
"""
            )
        )
    )
    assert _pick(table, f"/{full}/{method}") == "greeter-v2"
    if other != method:
        assert _pick(table, f"/{full}/{other}") == "greeter-v1"
    assert table.outbound(b"greeter", b"POST", f"/{full}x/{method}".encode(), []) is None
