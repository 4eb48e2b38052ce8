"""The inbound security chain for one snapshot: normalize the path, authenticate the JWT,
authorize, audit. Built once per snapshot (so a bad policy NACKs instead of failing a
request); called once per inbound request with what it needs, and answers either "go on"
(None) or a complete local reply with its response flag.

Order and header handling follow Envoy's as Istio configures it: path normalization
(DECODE_AND_MERGE_SLASHES) before any matching, the normalized path forwarded upstream;
`x-forwarded-client-cert` from the caller is never trusted (the listener replaces it);
JWT output headers are stripped before they could be spoofed.
"""

from __future__ import annotations

from collections.abc import Callable

from plait.config.policy import PolicySet
from plait.proto.events import Headers
from plait.proxy.filters.audit import RBAC_DENIED_BODY, RBAC_FLAG, AuditLog
from plait.proxy.filters.authz import Authorizer, RequestAttributes
from plait.proxy.filters.jwt_authn import JwtAuthenticator, KeySet

__all__ = ["InboundPolicy", "Verdict"]

# (status, response flag, reply body): the listener sends it as a local reply.
Verdict = tuple[int, str, bytes]


class InboundPolicy:
    """Authentication and authorization of one workload's inbound requests."""

    __slots__ = ("authz", "authn", "audit", "enabled", "port", "counters", "policies")

    def __init__(
        self,
        policies: PolicySet,
        audit: AuditLog | None,
        port: int,
        jwks: Callable[[str], KeySet | None] | None = None,
    ) -> None:
        self.policies = policies
        self.authz = Authorizer(policies)
        self.authn = JwtAuthenticator(policies.jwt_rules, jwks)
        self.audit = audit
        self.port = port  # the app's port: what Istio's `ports` and `destination.port` mean
        self.enabled = self.authz.enabled or self.authn.enabled
        self.counters = {"denied": 0, "unauthenticated": 0, "audited": 0}

    def check(
        self,
        method: bytes,
        authority: bytes,
        path: bytes,
        query: bytes,
        headers: Headers,
        peer_id: str,
        peer_ip: str,
        request_id: bytes,
    ) -> Verdict | None:
        """None to go on; else the local reply. May edit `headers` (JWT outputs)."""
        attrs = RequestAttributes(
            source_principal=peer_id.removeprefix("spiffe://"),
            source_ip=peer_ip,
            method=method.decode("latin-1"),
            authority=authority.decode("latin-1"),
            port=self.port,
            path=path.decode("latin-1"),
            headers=headers,
        )
        rid = request_id.decode("latin-1")
        if self.authn.enabled:
            result = self.authn.authenticate(headers, query)
            if not result.ok:
                self.counters["unauthenticated"] += 1
                if self.audit is not None:
                    self.audit.record_authn(attrs, result, rid)
                # Envoy's jwt_authn sets no response flag; the body says why.
                return (result.status or 401, "", result.reason.encode("utf-8", "replace"))
            if result.remove_headers:
                drop = {n.lower() for n in result.remove_headers}
                headers[:] = [(n, v) for n, v in headers if n not in drop]
            headers.extend(result.add_headers)
            attrs.request_principal = result.principal or ""
            attrs.request_claims = result.claims
        if self.authz.enabled:
            decision = self.authz.check(attrs)
            if decision.audit or not decision.allowed:
                if decision.audit:
                    self.counters["audited"] += 1
                if self.audit is not None:
                    self.audit.record(attrs, decision, rid)
            if not decision.allowed:
                self.counters["denied"] += 1
                return (403, RBAC_FLAG, RBAC_DENIED_BODY)
        return None

    def check_connection(self, peer_id: str, peer_ip: str) -> Verdict | None:
        """Authorization of a TCP connection: only the caller's identity, address and the
        port are known, so rules on HTTP fields apply as Istio applies them to TCP (see
        `Authorizer(tcp=True)`); no JWT can be presented."""
        authz = self.authz.for_tcp(self.policies)
        if not authz.enabled:
            return None
        attrs = RequestAttributes(
            source_principal=peer_id.removeprefix("spiffe://"),
            source_ip=peer_ip,
            method="",
            authority="",
            port=self.port,
            path="",
            headers=[],
        )
        decision = authz.check(attrs)
        if decision.audit or not decision.allowed:
            if decision.audit:
                self.counters["audited"] += 1
            if self.audit is not None:
                self.audit.record(attrs, decision, "")
        if not decision.allowed:
            self.counters["denied"] += 1
            return (403, RBAC_FLAG, RBAC_DENIED_BODY)
        return None
