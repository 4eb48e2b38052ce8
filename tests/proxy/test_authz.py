"""AuthorizationPolicy decisions, on Istio's documented examples written as YAML."""

from __future__ import annotations

from typing import Any

import pytest

from plait.config.resources import parse_resources
from plait.control.policy_compiler import compile_policies
from plait.proxy.filters.authz import (
    Authorizer,
    Decision,
    RequestAttributes,
    namespace_of,
    string_match,
)
from plait.proxy.filters.path_normalize import normalize_path

PRODUCTPAGE = "cluster.local/ns/default/sa/bookinfo-productpage"
REVIEWS = "cluster.local/ns/default/sa/bookinfo-reviews"


def authorizer(
    text: str, labels: dict[str, str] | None = None, namespace: str = "default"
) -> Authorizer:
    resources = parse_resources(text, "policy.yaml")
    return Authorizer(compile_policies(resources, labels or {"app": "reviews"}, namespace))


def request(**kw: Any) -> RequestAttributes:
    kw.setdefault("source_principal", PRODUCTPAGE)
    kw.setdefault("authority", "reviews:9080")
    kw.setdefault("port", 9080)
    return RequestAttributes(**kw)


def policy(name: str, spec: str, namespace: str = "default") -> str:
    body = "\n".join("  " + line for line in spec.strip().splitlines())
    return (
        f"apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{body}\n---\n"
    )


# --- Istio's HTTP traffic task (Bookinfo) --------------------------------------------------------

ALLOW_NOTHING = policy("allow-nothing", "{}")
REVIEWS_VIEWER = policy(
    "reviews-viewer",
    f"""
selector: {{matchLabels: {{app: reviews}}}}
action: ALLOW
rules:
- from:
  - source: {{principals: ["{PRODUCTPAGE}"]}}
  to:
  - operation: {{methods: ["GET"]}}
""",
)


def test_no_policy_allows_everything() -> None:
    authz = authorizer("")
    assert not authz.enabled
    decision = authz.check(request(method="DELETE", source_principal=""))
    assert decision.allowed and decision.policy is None


def test_allow_nothing_denies_everything() -> None:
    authz = authorizer(ALLOW_NOTHING)
    assert authz.enabled
    decision = authz.check(request())
    assert decision == Decision(False, "DENY", None, "no ALLOW policy matched")


def test_allow_get_from_productpage_to_reviews() -> None:
    authz = authorizer(ALLOW_NOTHING + REVIEWS_VIEWER)
    ok = authz.check(request(method="GET", path="/reviews/0"))
    assert ok.allowed and ok.policy == "default/reviews-viewer"
    assert not authz.check(request(method="POST", path="/reviews/0")).allowed
    assert not authz.check(request(method="GET", source_principal=REVIEWS)).allowed
    assert not authz.check(request(method="GET", source_principal="")).allowed  # plaintext


def test_selector_limits_the_policy_to_its_workloads() -> None:
    # On ratings, only allow-nothing applies: the reviews-viewer selector does not pick it.
    authz = authorizer(ALLOW_NOTHING + REVIEWS_VIEWER, labels={"app": "ratings"})
    assert not authz.check(request(method="GET")).allowed


# --- the AuthorizationPolicy reference's examples ------------------------------------------------

HTTPBIN = policy(
    "httpbin",
    """
action: ALLOW
rules:
- from:
  - source: {principals: ["cluster.local/ns/default/sa/sleep"]}
  - source: {namespaces: ["test"]}
  to:
  - operation: {methods: ["GET"], paths: ["/info*"]}
  - operation: {methods: ["POST"], paths: ["/data"]}
  when:
  - key: request.auth.claims[iss]
    values: ["https://accounts.google.com"]
""",
    namespace="foo",
)
GOOGLE = {"iss": "https://accounts.google.com", "sub": "u"}


@pytest.mark.parametrize(
    ("kw", "allowed"),
    [
        ({"source_principal": "cluster.local/ns/default/sa/sleep", "path": "/info/x"}, True),
        ({"source_principal": "cluster.local/ns/test/sa/any", "path": "/info"}, True),
        (
            {"source_principal": "cluster.local/ns/test/sa/any", "method": "POST", "path": "/data"},
            True,
        ),
        (
            {"source_principal": "cluster.local/ns/test/sa/any", "method": "POST", "path": "/info"},
            False,
        ),
        ({"source_principal": "cluster.local/ns/prod/sa/sleep", "path": "/info"}, False),
        (
            {
                "source_principal": "cluster.local/ns/test/sa/any",
                "path": "/info",
                "request_claims": {},
            },
            False,
        ),
        ({"source_principal": "", "source_ip": "10.0.0.1", "path": "/info"}, False),
    ],
)
def test_reference_example_ands_fields_and_ors_entries(kw: dict[str, Any], allowed: bool) -> None:
    authz = authorizer(HTTPBIN, labels={"app": "httpbin"}, namespace="foo")
    kw.setdefault("request_claims", GOOGLE)
    assert authz.check(request(**kw)).allowed is allowed


def test_rules_with_one_empty_rule_allow_everything() -> None:
    authz = authorizer(policy("allow-all", "rules:\n- {}"))
    assert authz.check(request(source_principal="", method="PATCH")).allowed


def test_deny_without_rules_denies_nothing() -> None:
    authz = authorizer(policy("deny-nothing", "action: DENY"))
    assert authz.check(request()).allowed


def test_deny_with_an_empty_rule_denies_everything() -> None:
    authz = authorizer(policy("deny-all", "action: DENY\nrules:\n- {}"))
    assert not authz.check(request()).allowed


# --- deny by path, and path normalization --------------------------------------------------------

DENY_ADMIN = policy(
    "deny-admin",
    """
action: DENY
rules:
- to:
  - operation: {paths: ["/admin*"]}
""",
)
ALLOW_GET = policy("allow-get", "rules:\n- to:\n  - operation: {methods: [GET]}")


def test_deny_beats_allow() -> None:
    authz = authorizer(ALLOW_GET + DENY_ADMIN)
    denied = authz.check(request(path="/admin/users"))
    assert not denied.allowed and denied.action == "DENY" and denied.policy == "default/deny-admin"
    assert "rule 0" in denied.reason
    assert authz.check(request(path="/productpage")).allowed


@pytest.mark.parametrize(
    "target",
    [b"/admin", b"//admin", b"/./admin", b"/a/../admin", b"/%61dmin", b"/%2Fadmin"]
    + [b"/%5Cadmin", b"\\admin", b"/admin/", b"/admin?x=1", b"/%2e%2e/admin"],
)
def test_every_bypass_spelling_is_denied(target: bytes) -> None:
    authz = authorizer(ALLOW_GET + DENY_ADMIN)
    path = normalize_path(target).partition(b"?")[0].decode()
    assert not authz.check(request(path=path)).allowed


def test_normal_paths_stay_allowed_and_case_matters() -> None:
    authz = authorizer(ALLOW_GET + DENY_ADMIN)
    for target in (b"/productpage", b"//productpage", b"/ADMIN"):
        path = normalize_path(target).decode()
        assert authz.check(request(path=path)).allowed, target


# --- namespaces, principals, headers, JWT principals --------------------------------------------


def test_namespaces_and_not_namespaces() -> None:
    authz = authorizer(
        policy("only-foo", "action: DENY\nrules:\n- from:\n  - source: {notNamespaces: [foo]}")
        + policy("from-foo", "rules:\n- from:\n  - source: {namespaces: [foo, bar]}")
    )
    assert authz.check(request(source_principal="cluster.local/ns/foo/sa/a")).allowed
    denied = authz.check(request(source_principal="cluster.local/ns/bar/sa/a"))
    assert not denied.allowed and denied.policy == "default/only-foo"
    assert not authz.check(request(source_principal="")).allowed  # plaintext has no namespace


def test_principal_patterns_and_negation() -> None:
    authz = authorizer(
        policy(
            "p",
            'rules:\n- from:\n  - source: {principals: ["cluster.local/ns/default/*"], '
            'notPrincipals: ["*/sa/bookinfo-reviews"]}',
        )
    )
    assert authz.check(request()).allowed
    assert not authz.check(request(source_principal=REVIEWS)).allowed
    assert not authz.check(request(source_principal="cluster.local/ns/other/sa/x")).allowed


def test_presence_principal_requires_mtls() -> None:
    authz = authorizer(policy("mtls", 'rules:\n- from:\n  - source: {principals: ["*"]}'))
    assert authz.check(request()).allowed
    assert not authz.check(request(source_principal="")).allowed


def test_header_conditions() -> None:
    authz = authorizer(
        policy(
            "h",
            """
rules:
- when:
  - key: request.headers[User-Agent]
    values: ["Mozilla/*"]
  - key: request.headers[x-env]
    notValues: ["prod"]
""",
        )
    )
    assert authz.check(request(headers=[(b"user-agent", b"Mozilla/5.0")])).allowed
    assert not authz.check(request(headers=[(b"user-agent", b"curl/8")])).allowed
    assert not authz.check(request(headers=[])).allowed
    prod = [(b"user-agent", b"Mozilla/5.0"), (b"x-env", b"prod")]
    assert not authz.check(request(headers=prod)).allowed


def test_repeated_headers_are_joined_as_envoy_does() -> None:
    authz = authorizer(
        policy("h", "rules:\n- when:\n  - key: request.headers[x-a]\n    values: ['1,2']")
    )
    assert authz.check(request(headers=[(b"x-a", b"1"), (b"x-a", b"2")])).allowed


def test_request_principals_presence_requires_a_jwt() -> None:
    authz = authorizer(policy("jwt", 'rules:\n- from:\n  - source: {requestPrincipals: ["*"]}'))
    assert authz.check(request(request_principal="https://issuer/alice")).allowed
    denied = authz.check(request(request_principal=""))
    assert not denied.allowed and denied.reason == "no ALLOW policy matched"


def test_claims_audiences_and_nested_claims() -> None:
    authz = authorizer(
        policy(
            "claims",
            """
rules:
- when:
  - {key: "request.auth.claims[groups]", values: [admins]}
  - {key: "request.auth.claims[realm][role]", values: ["op*"]}
  - {key: request.auth.audiences, values: [bookinfo]}
  - {key: request.auth.principal, values: ["issuer/*"]}
""",
        )
    )
    claims = {"groups": ["users", "admins"], "realm": {"role": "operator"}, "aud": "bookinfo"}
    assert authz.check(request(request_principal="issuer/alice", request_claims=claims)).allowed
    for change in (
        {"groups": "users"},
        {"realm": {"role": "viewer"}},
        {"aud": ["x"]},
        {"groups": [1]},
    ):
        assert not authz.check(
            request(request_principal="issuer/a", request_claims=claims | change)
        ).allowed


def test_hosts_ports_and_ips() -> None:
    authz = authorizer(
        policy(
            "op",
            """
rules:
- from:
  - source: {ipBlocks: ["10.0.0.0/8"], notIpBlocks: ["10.9.0.0/16"]}
  to:
  - operation: {hosts: ["reviews", "*.example.com"], ports: ["9080"]}
  when:
  - {key: source.ip, values: ["10.1.2.3"]}
  - {key: destination.port, values: ["9080"]}
""",
        )
    )
    ok = {"source_ip": "10.1.2.3", "authority": "Reviews:9080", "port": 9080}
    assert authz.check(request(**ok)).allowed
    assert authz.check(request(**ok | {"authority": "api.EXAMPLE.com"})).allowed
    assert not authz.check(request(**ok | {"authority": "ratings"})).allowed
    assert not authz.check(request(**ok | {"port": 9081})).allowed
    assert not authz.check(request(**ok | {"source_ip": "10.9.0.1"})).allowed
    assert not authz.check(request(**ok | {"source_ip": "not-an-ip"})).allowed


# --- AUDIT ---------------------------------------------------------------------------------------

AUDIT_PROFILE = policy(
    "audit-profile", "action: AUDIT\nrules:\n- to:\n  - operation: {paths: ['/user/profile/*']}"
)


def test_audit_marks_without_changing_the_decision() -> None:
    authz = authorizer(AUDIT_PROFILE)
    marked = authz.check(request(path="/user/profile/7"))
    assert marked.allowed and marked.audit and marked.audit_policy == "default/audit-profile"
    assert not authz.check(request(path="/other")).audit
    denied = authorizer(AUDIT_PROFILE + ALLOW_NOTHING).check(request(path="/user/profile/7"))
    assert not denied.allowed and denied.audit


def test_audit_only_does_not_turn_on_deny_by_default() -> None:
    assert authorizer(AUDIT_PROFILE).check(request(path="/x")).allowed


# --- matching details ----------------------------------------------------------------------------


def test_string_match_forms() -> None:
    m = string_match(["exact", "pre*", "*suf"])
    assert m("exact") and m("prefix") and m("pre") and m("thesuf")
    assert not m("exac") and not m("") and not m("xpre")
    assert string_match(["*"])("anything") and not string_match(["*"])("")
    assert string_match(["*", ""])("")
    n = string_match(["abc"])
    assert not n("abcd") and not n("ABC")
    assert string_match(["a*"])("abc") and not string_match(["a*"])("bac")
    assert string_match(["Example.COM"], fold_case=True)("EXAMPLE.com")


def test_namespace_comes_from_the_principal() -> None:
    assert namespace_of("cluster.local/ns/foo/sa/bar") == "foo"
    assert namespace_of("") == "" and namespace_of("cluster.local/x/foo/sa/bar") == ""
    assert RequestAttributes(source_principal="td/ns/a/sa/b").source_namespace == "a"


def test_ipv6_authority_port_is_stripped() -> None:
    assert RequestAttributes(authority="[::1]:8080").host == "[::1]"
    assert RequestAttributes(authority="Host:80").host == "host"
    assert RequestAttributes(authority="host").host == "host"


# --- TCP connections (Istio: "HTTP-only fields" on TCP) --------------------------------------


def tcp_authorizer(text: str) -> Authorizer:
    resources = parse_resources(text, "policy.yaml")
    policies = compile_policies(resources, {"app": "reviews"}, "default")
    return Authorizer(policies).for_tcp(policies)


def connection(**kw: Any) -> RequestAttributes:
    kw.setdefault("source_principal", PRODUCTPAGE)
    kw.setdefault("port", 9080)
    return RequestAttributes(method="", authority="", path="", headers=[], **kw)


def test_tcp_deny_with_http_fields_matches_more_never_less() -> None:
    deny = policy(
        "deny-admin-from-productpage",
        f"""
action: DENY
rules:
- from: [{{source: {{principals: ["{PRODUCTPAGE}"]}}}}]
  to: [{{operation: {{paths: ["/admin"], notMethods: ["GET"]}}}}]
  when: [{{key: "request.headers[x-debug]", values: ["1"]}}]
""",
    )
    authz = tcp_authorizer(deny)
    assert not authz.check(connection()).allowed  # HTTP fields dropped: productpage denied
    assert authz.check(connection(source_principal=REVIEWS)).allowed  # other callers are not


def test_tcp_allow_with_http_fields_never_matches() -> None:
    allow = policy(
        "allow-not-post",
        f"""
action: ALLOW
rules:
- from: [{{source: {{principals: ["{PRODUCTPAGE}"]}}}}]
  to: [{{operation: {{notMethods: ["POST"]}}}}]
""",
    )
    # Over HTTP a GET matches; a TCP connection has no method, and the rule is dropped for it.
    assert (
        Authorizer(
            compile_policies(parse_resources(allow, "p.yaml"), {"app": "reviews"}, "default")
        )
        .check(request(method="GET"))
        .allowed
    )
    assert not tcp_authorizer(allow).check(connection()).allowed


def test_tcp_allow_on_principal_and_port_applies() -> None:
    allow = policy(
        "allow-productpage",
        f"""
action: ALLOW
rules:
- from: [{{source: {{principals: ["{PRODUCTPAGE}"]}}}}]
  to: [{{operation: {{ports: ["9080"]}}}}]
""",
    )
    authz = tcp_authorizer(allow)
    assert authz.check(connection()).allowed
    assert not authz.check(connection(source_principal=REVIEWS)).allowed
