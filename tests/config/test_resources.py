"""User resources: YAML line tracking, error text, every kind's standard shape, strictness."""

from __future__ import annotations

from pathlib import Path

import pytest

from plait.config.errors import ConfigError, ConfigErrors
from plait.config.fault_resources import HTTPFault
from plait.config.resources import (
    KINDS,
    AuthorizationPolicy,
    DestinationRule,
    Gateway,
    GRPCRoute,
    HTTPRoute,
    PeerAuthentication,
    RequestAuthentication,
    Resource,
    Service,
    Workload,
    parse_resources,
)
from plait.config.traffic_resources import PlaitTrafficPolicy
from plait.config.yamlio import load_documents

EXAMPLES = Path(__file__).parents[2] / "examples" / "bookinfo"

ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
    - {group: "", kind: Service, name: reviews, port: 9080}
  hostnames: [Reviews.Example.com]
  rules:
    - matches:
        - path: {type: PathPrefix, value: /api}
          headers:
            - {name: end-user, value: jason}
          queryParams:
            - {type: RegularExpression, name: q, value: "a.*"}
          method: GET
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-a, value: "1"}]
            add: [{name: x-b, value: "2"}]
            remove: [x-c]
        - type: ResponseHeaderModifier
          responseHeaderModifier: {remove: [server]}
        - type: RequestMirror
          requestMirror: {backendRef: {name: shadow, port: 9080}, percent: 10}
      backendRefs:
        - name: reviews-v2
          port: 9080
          weight: 90
          filters:
            - type: URLRewrite
              urlRewrite: {hostname: v2.local, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
        - {name: reviews-v3, namespace: other, port: 9080, weight: 10}
      timeouts: {request: 10s, backendRequest: 500ms}
    - filters:
        - type: RequestRedirect
          requestRedirect: {scheme: https, port: 443, statusCode: 301}
    - filters:
        - type: ExtensionRef
          extensionRef: {group: plait.dev, kind: Fault, name: slow}
      backendRefs: [{name: reviews-v1, port: 9080}]
"""

STANDARD: dict[type[Resource], str] = {
    Service: """\
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {team: a}, annotations: {note: x}}
spec:
  selector: {app: reviews}
  ports:
    - {name: http, port: 9080, targetPort: 8080}
    - {name: grpc, port: 9090, targetPort: grpc-port, protocol: grpc}
    - {port: 9091, protocol: tcp}
""",
    Workload: """\
apiVersion: plait.dev/v1
kind: Workload
metadata: {name: db-0}
spec: {address: 10.0.0.7, port: 5432, labels: {app: db}, serviceAccount: db}
""",
    HTTPRoute: ROUTE,
    GRPCRoute: """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter}
spec:
  parentRefs: [{group: "", kind: Service, name: greeter, port: 50051}]
  rules:
    - matches: [{method: {service: helloworld.Greeter, method: SayHello}}]
      backendRefs: [{name: greeter-v2, port: 50051}]
""",
    Gateway: """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: plait
  listeners:
    - name: http
      port: 80
      protocol: HTTP
      hostname: "*.example.com"
      allowedRoutes:
        namespaces: {from: Selector, selector: {matchLabels: {shared: "yes"}}}
        kinds: [{kind: HTTPRoute}]
    - name: https
      port: 443
      protocol: HTTPS
      tls: {mode: Terminate, certificateRefs: [{name: edge-cert}]}
    - {name: tcp, port: 5432, protocol: TCP}
""",
    DestinationRule: """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms}
      http: {http1MaxPendingRequests: 10, maxRequestsPerConnection: 1, maxRetries: 3}
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 10s
      baseEjectionTime: 30s
      maxEjectionPercent: 50
    tls: {mode: ISTIO_MUTUAL}
  subsets:
    - {name: v1, labels: {version: v1}}
    - name: v2
      labels: {version: v2}
      trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
""",
    AuthorizationPolicy: """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-viewer}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
    - from:
        - source: {principals: ["cluster.local/ns/default/sa/reviews"]}
      to:
        - operation: {methods: [GET], paths: ["/ratings/*"], ports: ["9080"]}
      when:
        - {key: "request.headers[end-user]", values: [jason]}
""",
    PeerAuthentication: """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
  portLevelMtls: {8080: {mode: DISABLE}}
""",
    RequestAuthentication: """\
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: default}
spec:
  selector: {matchLabels: {app: productpage}}
  jwtRules:
    - issuer: https://issuer.example
      jwksUri: https://issuer.example/jwks.json
      audiences: [bookinfo]
      fromHeaders: [{name: x-jwt, prefix: "Bearer "}]
""",
    PlaitTrafficPolicy: """\
apiVersion: plait.dev/v1
kind: TrafficPolicy
metadata: {name: reviews}
spec:
  targetRef: {kind: Service, name: reviews}
  retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
  latencyBackoff: {factor: 3}
""",
    HTTPFault: """\
apiVersion: plait.dev/v1
kind: HTTPFault
metadata: {name: ratings-delay}
spec:
  delay: {fixedDelay: 7s, percentage: {value: 100}}
""",
}


def _errors(text: str) -> list[str]:
    with pytest.raises((ConfigError, ConfigErrors)) as info:
        parse_resources(text, "r.yaml")
    return str(info.value).splitlines()


# --- yamlio -------------------------------------------------------------------------------------


def test_line_of_points_at_keys_and_items_and_falls_back_to_the_parent() -> None:
    (doc,) = load_documents("a: 1\nb:\n  - x: 1\n  - x: 2\n    y: 3\n", "f.yaml")
    assert doc.line_of(("a",)) == 1
    assert doc.line_of(("b", 1)) == 4
    assert doc.line_of(("b", 1, "y")) == 5
    assert doc.line_of(("b", 1, "missing", 0)) == 4


def test_documents_are_numbered_in_file_order_and_empty_ones_skipped() -> None:
    docs = load_documents("# header\n---\na: 1\n---\n---\nb: 2\n", "f.yaml")
    assert [(d.data, d.index, d.several) for d in docs] == [
        ({"a": 1}, 0, True),
        ({"b": 2}, 2, True),
    ]
    assert docs[1].line_of(("b",)) == 6


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("a: 1\nb: [1,\n", 3, "invalid YAML"),
        ("a: 1\n  b: 2\n", 2, "mapping values are not allowed"),
        ("a: 1\nb:\n  c: 1\n  c: 2\n", 4, "b.c: duplicate key"),
        ("a: 1\nb: \x07\n", 2, "unacceptable character"),
    ],
)
def test_malformed_yaml_names_file_and_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_documents(text, "f.yaml")
    assert info.value.file == "f.yaml"
    assert info.value.line == line
    assert str(info.value).startswith(f"f.yaml:{line}: ")
    assert reason in str(info.value)


def test_recursive_aliases_do_not_hang() -> None:
    (doc,) = load_documents("a: &x [1, *x]\n", "f.yaml")
    assert doc.line_of(("a", 1, 1)) == 1


# --- errors -------------------------------------------------------------------------------------


def test_config_error_text_leaves_out_unknown_parts() -> None:
    full = ConfigError("bad", file="f.yaml", line=3, document=1, field="spec.port")
    assert str(full) == "f.yaml:3: spec.port: bad (document 2)"
    assert str(ConfigError("bad", file="f.yaml")) == "f.yaml: bad"
    assert str(ConfigError("bad", field="spec")) == "spec: bad"


def test_config_errors_flatten_and_raise_a_lone_error_as_itself() -> None:
    a, b = ConfigError("a", file="f"), ConfigError("b", file="f")
    assert ConfigErrors([a, ConfigErrors([b])]).errors == [a, b]
    assert str(ConfigErrors([a, b])) == "f: a\nf: b"
    ConfigErrors.raise_if_any([])
    with pytest.raises(ConfigError):
        ConfigErrors.raise_if_any([a])
    with pytest.raises(ConfigErrors):
        ConfigErrors.raise_if_any([a, b])


# --- standard shapes ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(STANDARD), ids=lambda m: m.__name__)
def test_every_kind_parses_from_its_standard_yaml(model: type[Resource]) -> None:
    (resource,) = parse_resources(STANDARD[model], "r.yaml")
    assert type(resource) is model
    assert KINDS[(resource.api_version, resource.kind)] is model


def test_every_registered_kind_has_a_standard_example() -> None:
    assert set(KINDS.values()) == set(STANDARD)


def test_httproute_fields_and_defaults() -> None:
    (route,) = parse_resources(ROUTE, "r.yaml")
    assert isinstance(route, HTTPRoute)
    first, redirect, _ = route.spec.rules
    assert first.matches[0].headers[0].name == "end-user"
    assert first.backend_refs[0].weight == 90
    assert first.backend_refs[1].namespace == "other"
    assert first.timeouts is not None
    assert (first.timeouts.request, first.timeouts.backend_request) == (10_000, 500)
    # The spec's defaults: no matches is PathPrefix "/", weight 1, parent kind Gateway.
    assert [(m.path.type, m.path.value) for m in redirect.matches] == [("PathPrefix", "/")]
    assert redirect.backend_refs == ()
    (minimal,) = parse_resources(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec: {parentRefs: [{name: gw}], rules: [{matches: [], backendRefs: [{name: s}]}]}\n",
        "r.yaml",
    )
    assert isinstance(minimal, HTTPRoute)
    assert minimal.spec.parent_refs[0].kind == "Gateway"
    assert minimal.spec.rules[0].backend_refs[0].weight == 1
    assert minimal.spec.rules[0].matches[0].path.type == "PathPrefix"


@pytest.mark.parametrize(
    ("duration", "ms"), [("0s", 0), ("500ms", 500), ("10s", 10_000), ("1h30m", 5_400_000)]
)
def test_durations_are_held_in_milliseconds(duration: str, ms: int) -> None:
    (route,) = parse_resources(ROUTE.replace("request: 10s", f"request: {duration}"), "r.yaml")
    assert isinstance(route, HTTPRoute)
    timeouts = route.spec.rules[0].timeouts
    assert timeouts is not None and timeouts.request == ms


def test_namespace_defaults_to_the_one_given() -> None:
    (workload,) = parse_resources(STANDARD[Workload], "r.yaml", namespace="shop")
    assert workload.metadata.namespace == "shop"
    (service,) = parse_resources(STANDARD[Service], "r.yaml", namespace="other")
    assert service.metadata.namespace == "shop"  # written in the file: kept


def test_example_routes_parse() -> None:
    for name in ("route-jason.yaml", "route-50-50.yaml"):
        (route,) = parse_resources((EXAMPLES / name).read_text(), name)
        assert isinstance(route, HTTPRoute)
        assert route.spec.parent_refs[0].kind == "Service"


# --- errors name field and line -----------------------------------------------------------------


def test_unknown_field_is_an_error_naming_path_and_line() -> None:
    text = ROUTE.replace("          weight: 90\n", "          weight: 90\n          wieght: 1\n")
    assert _errors(text) == ["r.yaml:31: spec.rules[0].backendRefs[0].wieght: unknown field"]


def test_wrong_type_is_an_error() -> None:
    text = STANDARD[Service].replace("port: 9080,", 'port: "9080",')
    assert _errors(text) == ["r.yaml:7: spec.ports[0].port: Input should be a valid integer"]


def test_label_values_must_be_strings() -> None:
    text = STANDARD[Workload].replace("app: db", "version: 2")
    assert _errors(text) == ["r.yaml:4: spec.labels.version: Input should be a valid string"]


def test_bad_duration_is_an_error() -> None:
    lines = _errors(ROUTE.replace("request: 10s", "request: 10 seconds"))
    assert lines == [
        "r.yaml:35: spec.rules[0].timeouts.request: "
        "expected a duration like '10s', '500ms' or '1h30m', got '10 seconds'"
    ]


def test_backend_request_longer_than_request_is_an_error() -> None:
    lines = _errors(ROUTE.replace("backendRequest: 500ms", "backendRequest: 1m"))
    assert lines == [
        "r.yaml:35: spec.rules[0].timeouts: backendRequest must not be longer than request"
    ]


def test_missing_field_points_at_its_parent() -> None:
    text = STANDARD[Workload].replace("address: 10.0.0.7, ", "")
    assert _errors(text) == ["r.yaml:4: spec.address: required field is missing"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("weight: 90", "weight: 1000001", "backendRefs[0].weight: Input should be less than"),
        (
            "type: PathPrefix, value: /api",
            "type: Prefix, value: /api",
            "path.type: Input should be",
        ),
        ("value: /api", "value: api", "path: an PathPrefix path must start with '/'"),
        ("method: GET", "method: get", "method: Input should be 'GET'"),
        (
            "requestHeaderModifier:\n",
            "responseHeaderModifier:\n",
            "filters[0]: a RequestHeaderModifier",
        ),
        ("kind: Service, name: reviews", "kind: Pod, name: reviews", "parentRefs[0].kind"),
        ('group: "", kind: Service', "group: apps, kind: Service", "the group of a Service is ''"),
        ("- {name: reviews-v3,", "- {name: Reviews_V3,", "is not a DNS-1123 label"),
    ],
)
def test_invalid_httproute_fields(old: str, new: str, message: str) -> None:
    assert old in ROUTE
    (line,) = _errors(ROUTE.replace(old, new, 1))
    assert message in line


def test_unknown_kind_and_api_version_list_the_known_ones() -> None:
    (kind,) = _errors("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    assert kind.startswith("r.yaml:2: kind: unknown kind 'Pod'; known: Service (plait.dev/v1),")
    (version,) = _errors("apiVersion: v1\nkind: Service\nmetadata: {name: s}\n")
    assert version == "r.yaml:1: apiVersion: expected plait.dev/v1 for kind Service"
    (missing,) = _errors("kind: Service\nmetadata: {name: s}\n")
    assert missing == "r.yaml:1: apiVersion: required field is missing"
    (scalar,) = _errors("just a string\n")
    assert "expected a mapping" in scalar


def test_every_documents_errors_are_reported_together() -> None:
    text = "\n---\n".join(
        [
            STANDARD[Workload].replace("port: 5432", "port: 0"),
            STANDARD[Gateway],
            STANDARD[Service].replace("protocol: tcp", "protocol: udp"),
        ]
    )
    with pytest.raises(ConfigErrors) as info:
        parse_resources(text, "r.yaml")
    assert [(e.document, e.field) for e in info.value.errors] == [
        (0, "spec.port"),
        (2, "spec.ports[2].protocol"),
    ]
    assert str(info.value).splitlines()[0].endswith("(document 1)")
