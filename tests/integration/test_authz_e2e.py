"""Authorization, end-user JWTs and identity headers through real proxies.

Istio's documented examples, replayed on a mesh of real processes: `reviews` (an app that
echoes what it received, behind a proxy writing an audit log) is called by `productpage` and
`ratings` (namespace default) and by `sleep` (namespace other), each through its own proxy,
so the callee sees each caller's proven SPIFFE ID. Each test applies its policies, waits until
every proxy acknowledged them, and removes them at the end.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from meshkit import Mesh, Reply, send_request, wait_until

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
"""

PRODUCTPAGE = "cluster.local/ns/default/sa/productpage"
REVIEWS_ID = "spiffe://cluster.local/ns/default/sa/reviews"


class Bookinfo:
    """The module's mesh; `call(caller, ...)` sends a request from that caller's app."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.audit_log = tmp / "reviews.audit.log"
        self.access_log = tmp / "reviews.access.log"
        self.mesh = Mesh(tmp)
        self.mesh.apply(SERVICES)
        _, app_port = self.mesh.app("reviews")
        self.mesh.proxy(
            "reviews-0", "reviews", "app=reviews", app_port=app_port,
            extra=["--audit-log", str(self.audit_log), "--access-log", str(self.access_log)],
        )  # fmt: skip
        self.callers = {
            "productpage": self.mesh.proxy("productpage-0", "productpage", "app=productpage")[1],
            "ratings": self.mesh.proxy("ratings-0", "ratings", "app=ratings")[1],
            "sleep": self.mesh.proxy("sleep-0", "sleep", "app=sleep", namespace="other")[1],
        }
        self.settle()
        for caller in self.callers:
            wait_until(
                lambda c=caller: self.call(c).status == 200, 10, f"{caller} to reach reviews"
            )

    def call(
        self,
        caller: str,
        target: str = "/reviews/1",
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        return send_request(
            self.callers[caller]["outbound"],
            target,
            method,
            {"host": "reviews.default", **(headers or {})},
        )

    def settle(self) -> None:
        wait_until(self.mesh.converged, 10, "every proxy to acknowledge the latest config")

    @contextmanager
    def policies(self, text: str) -> Iterator[None]:
        """Apply `text` (YAML documents) for the duration of the block."""
        docs = [d for d in yaml.safe_load_all(text) if d]
        self.mesh.apply(text)
        self.settle()
        try:
            yield
        finally:
            for doc in docs:
                self.mesh.delete(doc["kind"], doc["metadata"]["name"])
            self.settle()

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def bookinfo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bookinfo]:
    b = Bookinfo(tmp_path_factory.mktemp("authz"))
    try:
        yield b
    finally:
        b.mesh.close()


def denied(reply: Reply) -> bool:
    return (
        reply.status == 403
        and reply.body.rstrip(b"\n") == b"RBAC: access denied"
        and reply.headers.get("x-plait-response-flags") == "RBAC"
    )


def served(reply: Reply) -> bool:
    """The request reached the reviews app (its echo came back)."""
    return reply.status == 200 and reply.json()["name"] == "reviews"


def policy(name: str, spec: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}}}
spec:
{spec}
"""


# Istio's examples --------------------------------------------------------------------------

ALLOW_NOTHING = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {}
"""

REVIEWS_VIEWER = policy(
    "reviews-viewer",
    """
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
    to: [{operation: {methods: ["GET"]}}]
""",
)


@pytest.mark.timeout(60)
def test_allow_nothing_denies_every_caller_with_rbac_403(bookinfo: Bookinfo) -> None:
    with bookinfo.policies(ALLOW_NOTHING):
        for caller in ("productpage", "ratings", "sleep"):
            reply = bookinfo.call(caller)
            assert denied(reply), (caller, reply)
        assert denied(bookinfo.call("productpage", method="POST"))
    assert served(bookinfo.call("productpage"))

    # The denials are in the callee proxy's access log, with the flag and the caller's identity.
    def rbac_lines() -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in bookinfo.access_log.read_text().splitlines() if x]
        return [x for x in lines if x.get("response_flags") == "RBAC"]

    lines = wait_until(rbac_lines, 5, "RBAC lines in the access log (flushed every second)")
    assert {x["status"] for x in lines} == {403}
    assert "spiffe://cluster.local/ns/default/sa/productpage" in {x["peer_identity"] for x in lines}


@pytest.mark.timeout(60)
def test_allow_get_from_productpage_principal_only(bookinfo: Bookinfo) -> None:
    with bookinfo.policies(ALLOW_NOTHING + "---" + REVIEWS_VIEWER):
        assert served(bookinfo.call("productpage"))
        assert denied(bookinfo.call("productpage", method="POST"))
        assert denied(bookinfo.call("ratings"))
        assert denied(bookinfo.call("sleep"))


DENY_ADMIN = policy(
    "deny-admin",
    """
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
""",
)

# Every spelling of /admin that a naive prefix match would let through (Istio's security
# best practices, "path normalization"); the proxy normalizes before it matches.
ADMIN_SPELLINGS = [
    "/admin",
    "/admin/users",
    "/admin?x=1",
    "//admin",
    "///admin/users",
    "/./admin",
    "/a/../admin",
    "/a/b/../../admin",
    "/reviews/../admin",
    "/%61dmin",
    "/%61%64%6d%69%6e",
    "/%2Fadmin",
    "/%2fadmin",
    "/%5Cadmin",
    "/%2e/admin",
    "/%2E%2E/admin",
    "/x/%2e%2e/admin",
    "/x%2F..%2Fadmin",
    "/..%2Fadmin",
]
NORMAL_PATHS = ["/productpage", "/reviews/1", "/api/v1/products?admin=1", "/static/admin.css"]


@pytest.mark.timeout(60)
def test_deny_by_path_holds_for_every_spelling_of_the_path(bookinfo: Bookinfo) -> None:
    with bookinfo.policies(DENY_ADMIN):
        for target in ADMIN_SPELLINGS:
            reply = bookinfo.call("productpage", target)
            assert denied(reply), (target, reply)
        for target in NORMAL_PATHS:
            reply = bookinfo.call("productpage", target)
            assert served(reply), (target, reply)
        # The app gets the path the policy judged (normalized), never the raw spelling.
        assert bookinfo.call("productpage", "/a/./b//c/%7Ed").json()["path"] == "/a/b/c/~d"
        for bad in ("/admin%00", "/%00admin", "\\admin"):
            reply = bookinfo.call("productpage", bad)
            assert reply.status == 400, (bad, reply)


@pytest.mark.timeout(60)
def test_namespace_rules_admit_only_the_named_namespaces(bookinfo: Bookinfo) -> None:
    def from_namespaces(names: str) -> str:
        return policy(
            "by-namespace",
            f"""
  selector: {{matchLabels: {{app: reviews}}}}
  action: ALLOW
  rules: [{{from: [{{source: {{namespaces: [{names}]}}}}]}}]
""",
        )

    with bookinfo.policies(from_namespaces("default")):
        assert served(bookinfo.call("productpage")) and served(bookinfo.call("ratings"))
        assert denied(bookinfo.call("sleep"))
    with bookinfo.policies(from_namespaces("other")):
        assert served(bookinfo.call("sleep"))
        assert denied(bookinfo.call("productpage")) and denied(bookinfo.call("ratings"))
    deny_other = policy(
        "deny-other",
        """
  selector: {matchLabels: {app: reviews}}
  action: DENY
  rules: [{from: [{source: {notNamespaces: [default]}}]}]
""",
    )
    with bookinfo.policies(deny_other):
        assert served(bookinfo.call("productpage"))
        assert denied(bookinfo.call("sleep"))


@pytest.mark.timeout(60)
def test_header_condition_must_hold_for_an_allow_rule(bookinfo: Bookinfo) -> None:
    versioned = policy(
        "reviews-versioned",
        """
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
    to: [{operation: {methods: ["GET"]}}]
    when:
    - key: request.headers[version]
      values: ["v1", "v2"]
""",
    )
    with bookinfo.policies(versioned):
        assert served(bookinfo.call("productpage", headers={"version": "v1"}))
        assert served(bookinfo.call("productpage", headers={"version": "v2"}))
        assert denied(bookinfo.call("productpage", headers={"version": "v3"}))
        assert denied(bookinfo.call("productpage"))
        assert denied(bookinfo.call("ratings", headers={"version": "v1"}))


@pytest.mark.timeout(60)
def test_audit_log_records_audited_and_denied_requests(bookinfo: Bookinfo) -> None:
    audit = policy(
        "audit-ratings-api",
        """
  selector: {matchLabels: {app: reviews}}
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audited/*"]}}]}]
""",
    )
    with bookinfo.policies(audit + "---" + DENY_ADMIN):
        assert served(
            bookinfo.call("productpage", "/audited/1", headers={"x-request-id": "audit-allowed-1"})
        )
        assert denied(bookinfo.call("sleep", "/admin", headers={"x-request-id": "audit-denied-1"}))
        assert served(
            bookinfo.call("productpage", "/not-audited", headers={"x-request-id": "not-audited-1"})
        )

        def records() -> dict[str, dict[str, Any]] | None:
            found = {r["request_id"]: r for r in bookinfo.audit_records()}
            return found if {"audit-allowed-1", "audit-denied-1"} <= found.keys() else None

        found = wait_until(records, 5, "audit records")  # the log is flushed once a second
    assert "not-audited-1" not in found
    allowed, rejected = found["audit-allowed-1"], found["audit-denied-1"]
    assert allowed["source_principal"] == PRODUCTPAGE
    assert (allowed["method"], allowed["path"]) == ("GET", "/audited/1")
    assert allowed["audit_policy"] == "default/audit-ratings-api"
    assert allowed["status"] is None and allowed["decision"] == "ALLOW"
    assert rejected["source_principal"] == "cluster.local/ns/other/sa/sleep"
    assert rejected["source_namespace"] == "other"
    assert (rejected["status"], rejected["decision"], rejected["policy"]) == (
        403,
        "DENY",
        "default/deny-admin",
    )
    assert rejected["path"] == "/admin" and rejected["time"]


# end-user JWTs -----------------------------------------------------------------------------

ISSUER = "https://issuer.example.com"


class Issuer:
    """An RSA signing key and its JWKS, as an identity provider would publish it."""

    def __init__(self, kid: str = "k1") -> None:
        self.kid = kid
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def jwks(self) -> str:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return json.dumps({"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]})

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": "alice", "aud": "reviews", "iat": now, "exp": now + 600}
        claims.update(overrides)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})


def unsigned_token() -> str:
    """`alg: none`: a token anyone can write."""

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "mallory", "aud": "reviews", "exp": now + 600}
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


@pytest.mark.timeout(60)
def test_jwt_request_principal_rule_admits_only_valid_tokens(bookinfo: Bookinfo) -> None:
    idp, impostor = Issuer(), Issuer()  # same kid, another key
    jwt_policy = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: reviews-jwt}}
spec:
  selector: {{matchLabels: {{app: reviews}}}}
  jwtRules:
  - issuer: {ISSUER}
    audiences: [reviews]
    jwks: {json.dumps(idp.jwks())}
---
""" + policy(
        "require-jwt",
        """
  selector: {matchLabels: {app: reviews}}
  action: ALLOW
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
""",
    )

    def with_token(token: str) -> Reply:
        return bookinfo.call("productpage", headers={"authorization": f"Bearer {token}"})

    with bookinfo.policies(jwt_policy):
        valid = with_token(idp.token())
        assert served(valid), valid
        # The token was consumed by the proxy: the app does not get it (forwardOriginalToken).
        assert "authorization" not in dict(valid.json()["headers"])

        bad_tokens = {
            "expired": idp.token(exp=int(time.time()) - 3600),
            "wrong issuer": idp.token(iss="https://evil.example.com"),
            "wrong audience": idp.token(aud="ratings"),
            "bad signature": impostor.token(),
            "alg none": unsigned_token(),
            "garbage": "not.a.jwt",
        }
        for what, token in bad_tokens.items():
            reply = with_token(token)
            assert reply.status == 401, (what, reply)
            assert reply.headers.get("x-plait-response-flags") in (None, "", "-"), (what, reply)

        assert denied(bookinfo.call("productpage"))  # no token: no request principal
    assert served(bookinfo.call("productpage"))


# identity headers ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_app_sees_the_callers_proven_identity_and_never_a_forged_one(bookinfo: Bookinfo) -> None:
    forged = f"By={REVIEWS_ID};URI=spiffe://cluster.local/ns/default/sa/admin"
    for caller, account in (("productpage", "default/sa/productpage"), ("sleep", "other/sa/sleep")):
        reply = bookinfo.call(caller, headers={"x-forwarded-client-cert": forged})
        assert served(reply), reply
        seen = [v for k, v in reply.json()["headers"] if k == "x-forwarded-client-cert"]
        assert seen == [f"By={REVIEWS_ID};URI=spiffe://cluster.local/ns/{account}"], seen
