"""Policy compiler: which policies apply to a workload, and the errors it refuses to hide."""

from __future__ import annotations

import json

import pytest

from plait.config.authn_resources import RequestAuthentication
from plait.config.errors import ConfigError
from plait.config.policy import JwtHeader, JwtRule, PolicySet
from plait.config.resources import parse_resource, validate
from plait.config.yamlio import load_documents
from plait.control.policy_compiler import PolicyCompileError, compile_policies

JWKS = json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "k"}]})
REVIEWS = {"app": "reviews", "version": "v1"}


def parse(text: str) -> list[object]:
    """Resources of a YAML stream, RequestAuthentication included (until it is in KINDS)."""
    out: list[object] = []
    for doc in load_documents(text, "t.yaml"):
        if doc.data.get("kind") == "RequestAuthentication":
            meta = {"namespace": "default", **doc.data["metadata"]}
            out.append(
                validate(RequestAuthentication, doc, "t.yaml", {**doc.data, "metadata": meta})
            )
        else:
            out.append(parse_resource(doc, "t.yaml"))
    return out


def authz(name: str, namespace: str, spec: str = "{}") -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n"
    )


def names(ps: PolicySet) -> list[str]:
    return [p.key for p in ps.authorization]


def test_applicability_follows_istio() -> None:
    resources = parse(
        authz("mesh-wide", "istio-system")
        + authz("root-selected", "istio-system", "{selector: {matchLabels: {app: reviews}}}")
        + authz("root-other", "istio-system", "{selector: {matchLabels: {app: ratings}}}")
        + authz("ns-wide", "default")
        + authz("empty-selector", "default", "{selector: {matchLabels: {}}}")
        + authz("selected", "default", "{selector: {matchLabels: {app: reviews, version: v1}}}")
        + authz("other-version", "default", "{selector: {matchLabels: {version: v2}}}")
        + authz("other-ns", "prod")
        + authz("other-ns-selected", "prod", "{selector: {matchLabels: {app: reviews}}}")
    )
    got = names(compile_policies(resources, REVIEWS, "default"))
    assert got == [
        "default/empty-selector",
        "default/ns-wide",
        "default/selected",
        "istio-system/mesh-wide",
        "istio-system/root-selected",
    ]
    assert names(compile_policies(resources, REVIEWS, "prod")) == [
        "istio-system/mesh-wide",
        "istio-system/root-selected",
        "prod/other-ns",
        "prod/other-ns-selected",
    ]
    assert names(compile_policies(resources, REVIEWS, "default", root_namespace="mesh")) == [
        "default/empty-selector",
        "default/ns-wide",
        "default/selected",
    ]


def test_output_does_not_depend_on_input_order() -> None:
    resources = parse(authz("b", "default") + authz("a", "default") + authz("c", "istio-system"))
    assert compile_policies(resources, {}, "default") == compile_policies(
        resources[::-1], {}, "default"
    )


def test_rules_are_compiled_flat_and_round_trip() -> None:
    resources = parse(
        authz(
            "p",
            "default",
            """
  action: DENY
  rules:
  - from: [{source: {principals: [a], notNamespaces: [b]}}]
    to: [{operation: {methods: [GET], notPaths: ["/x*"], ports: ["80"]}}]
    when: [{key: "request.headers[x-a]", notValues: ["1"]}]""",
        )
    )
    ps = compile_policies(resources, {}, "default")
    [policy] = ps.authorization
    [rule] = policy.rules
    assert policy.action == "DENY"
    assert rule.from_[0].principals == ("a",) and rule.from_[0].not_namespaces == ("b",)
    assert rule.to[0].not_paths == ("/x*",) and rule.to[0].ports == ("80",)
    assert rule.when[0].not_values == ("1",)
    assert PolicySet.from_dict(ps.to_dict()) == ps


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{action: CUSTOM, provider: {name: ext}}", "spec.action: CUSTOM is not supported"),
        ("{action: DENY, provider: {name: ext}}", "spec.provider: only valid with action CUSTOM"),
        (
            "{rules: [{when: [{key: request.bogus, values: [x]}]}]}",
            "spec.rules[0].when[0].key: unknown condition key 'request.bogus'",
        ),
        (
            "{rules: [{when: [{key: 'request.headers[a][b]', values: [x]}]}]}",
            "request.headers takes one header name",
        ),
        ("{rules: [{when: [{key: source.ip}]}]}", "spec.rules[0].when[0]: set values or notValues"),
        (
            "{rules: [{when: [{key: source.ip, values: [nope]}]}]}",
            "spec.rules[0].when[0].values[0]: 'nope' is not an IP",
        ),
        (
            "{rules: [{when: [{key: destination.port, notValues: ['0']}]}]}",
            "when[0].notValues[0]: '0' is not a port",
        ),
        (
            "{rules: [{from: [{source: {notIpBlocks: [1.2.3.4/99]}}]}]}",
            "spec.rules[0].from[0].source.notIpBlocks[0]: '1.2.3.4/99'",
        ),
        (
            "{rules: [{from: [{source: {}}]}]}",
            "spec.rules[0].from[0]: a source must set at least one field",
        ),
        (
            "{rules: [{to: [{operation: {}}]}]}",
            "spec.rules[0].to[0]: an operation must set at least one field",
        ),
        (
            "{rules: [{to: [{operation: {ports: [http]}}]}]}",
            "spec.rules[0].to[0].operation.ports[0]: 'http' is not a port",
        ),
        ("{rules: [{to: [{operation: {paths: ['/a/{*}']}}]}]}", "path templates"),
    ],
)
def test_errors_name_the_resource_and_the_yaml_field(spec: str, message: str) -> None:
    with pytest.raises(PolicyCompileError) as e:
        compile_policies(parse(authz("bad", "default", spec)), {}, "default")
    assert str(e.value).startswith("AuthorizationPolicy default/bad: ")
    assert message in str(e.value)


def request_authn(name: str, namespace: str, spec: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{spec}\n---\n"
    )


def test_jwt_rules_with_defaults_and_named_locations() -> None:
    resources = parse(
        request_authn(
            "jwt",
            "default",
            f"""
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: https://a.example
    jwks: '{JWKS}'
  - issuer: https://b.example
    jwksUri: https://b.example/jwks
    audiences: [bookinfo]
    fromHeaders: [{{name: X-Jwt, prefix: "Token "}}]
    forwardOriginalToken: true
    outputClaimToHeaders: [{{header: x-sub, claim: sub}}]
    timeout: 2s""",
        )
        + request_authn(
            "mesh",
            "istio-system",
            "  jwtRules: [{issuer: https://m.example, jwksUri: https://m.example/k}]",
        )
        + request_authn(
            "elsewhere",
            "default",
            "  selector: {matchLabels: {app: ratings}}\n  jwtRules: [{issuer: x, jwksUri: http://x/k}]",
        )
    )
    ps = compile_policies(resources, REVIEWS, "default")
    a, b, m = ps.jwt_rules
    assert a == JwtRule(issuer="https://a.example", jwks=JWKS, policy="default/jwt")
    assert b.from_headers == (JwtHeader("x-jwt", "Token "),) and b.from_params == ()
    assert b.forward_original_token and b.jwks_timeout_ms == 2000 and b.audiences == ("bookinfo",)
    assert b.output_claim_to_headers[0].header == "x-sub"
    assert m.issuer == "https://m.example" and m.policy == "istio-system/mesh"
    assert PolicySet.from_dict(ps.to_dict()) == ps


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("{issuer: x}", "set exactly one of jwks and jwksUri"),
        (
            f"{{issuer: x, jwksUri: 'https://x/k', jwks: '{JWKS}'}}",
            "set exactly one of jwks and jwksUri",
        ),
        (
            "{issuer: x, jwksUri: 'ftp://host/k'}",
            "jwksUri must be an http://, https:// or file:// URL",
        ),
        ("{issuer: x, jwks: 'not json'}", "not valid JSON"),
        ("{issuer: x, jwks: '{}'}", 'a JWKS is a JSON object with a "keys" list'),
        ("{issuer: x, jwksUri: 'https://x/k', fromHeader: []}", "unknown field"),
    ],
)
def test_request_authentication_model_errors(rule: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(request_authn("bad", "default", f"  jwtRules: [{rule}]"))
