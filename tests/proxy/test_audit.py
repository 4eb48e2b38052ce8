"""Audit records for denials and AUDIT matches; the 403 and 401 replies."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from plait.config.policy import AuthzOperation, AuthzRule, CompiledAuthzPolicy, PolicySet
from plait.proxy.filters.audit import (
    RBAC_DENIED_BODY,
    AuditLog,
    jwt_denied_reply,
    rbac_denied_reply,
)
from plait.proxy.filters.authz import Authorizer, RequestAttributes
from plait.proxy.filters.jwt_authn import AuthnResult

AUDIT = CompiledAuthzPolicy("audit-all", "default", "AUDIT", (AuthzRule(),))
DENY_ADMIN = CompiledAuthzPolicy(
    "deny-admin", "default", "DENY", (AuthzRule(to=(AuthzOperation(paths=("/admin*",)),)),)
)
REQ: dict[str, Any] = dict(
    source_principal="cluster.local/ns/default/sa/productpage",
    source_ip="10.0.0.7",
    authority="reviews:9080",
)


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(x) for x in out.getvalue().splitlines()]


def test_denials_and_audit_matches_are_recorded_and_plain_allows_are_not() -> None:
    out = io.StringIO()
    log = AuditLog(out, destination="reviews-v1.default", clock=lambda: 1_700_000_000.25)
    authz = Authorizer(PolicySet((DENY_ADMIN,)))
    for path in ("/admin", "/reviews/1"):
        req = RequestAttributes(**REQ, method="GET", path=path)
        log.record(req, authz.check(req), request_id="r1")
    log.flush()
    [entry] = lines(out)
    assert entry == {
        "time": "2023-11-14T22:13:20.250Z",
        "destination": "reviews-v1.default",
        "source_principal": "cluster.local/ns/default/sa/productpage",
        "source_namespace": "default",
        "source_ip": "10.0.0.7",
        "request_principal": "",
        "method": "GET",
        "host": "reviews:9080",
        "path": "/admin",
        "request_id": "r1",
        "status": 403,
        "decision": "DENY",
        "policy": "default/deny-admin",
        "audit_policy": None,
        "reason": "denied by DENY policy default/deny-admin, rule 0",
    }


def test_audit_match_is_recorded_as_allowed() -> None:
    out = io.StringIO()
    log = AuditLog(out)
    req = RequestAttributes(**REQ, path="/x")
    log.record(req, Authorizer(PolicySet((AUDIT,))).check(req))
    log.flush()
    [entry] = lines(out)
    assert entry["decision"] == "ALLOW" and entry["status"] is None
    assert entry["audit_policy"] == "default/audit-all"


def test_authn_failures_are_recorded(tmp_path: Path) -> None:
    target = tmp_path / "audit.log"
    log = AuditLog(str(target))
    req = RequestAttributes(**REQ, path="/")
    log.record_authn(req, AuthnResult(ok=True))
    log.record_authn(req, AuthnResult(ok=False, status=401, reason="Jwt is expired"))
    log.close()
    [entry] = [json.loads(x) for x in target.read_text().splitlines()]
    assert entry["status"] == 401 and entry["reason"] == "Jwt is expired"


def test_replies() -> None:
    reply = rbac_denied_reply()
    assert reply.startswith(b"HTTP/1.1 403 ")
    assert b"x-plait-response-flags: RBAC\r\n" in reply
    assert reply.split(b"\r\n\r\n", 1)[1].rstrip(b"\n") == RBAC_DENIED_BODY
    assert jwt_denied_reply(AuthnResult(ok=False, status=401, reason="Jwt is expired")).startswith(
        b"HTTP/1.1 401 "
    )
