"""Audit log: one JSON line for every denied request and every AUDIT policy match.

The mission's "access audit information": who (source principal, namespace, address, end-user
principal) tried what (method, host, path) on which workload, which policy decided, and why.
Lines are buffered like the access log (flushed at 64 KiB and by the proxy's ticker calling
`flush()`), so a flood of denials costs a `json.dumps` each, not a system call each.

Also what a refused request looks like, as Envoy answers it: 403 with the body
`RBAC: access denied` and response flag `RBAC`; 401 with the JWT failure as the body.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import IO, Any, Final

from plait.proxy.filters.authz import Decision, RequestAttributes
from plait.proxy.filters.jwt_authn import AuthnResult
from plait.proxy.local_reply import local_reply_bytes
from plait.telemetry.jsonlines import JsonLines

__all__ = [
    "RBAC_DENIED_BODY",
    "RBAC_FLAG",
    "AuditLog",
    "jwt_denied_reply",
    "rbac_denied_reply",
]

RBAC_FLAG: Final = "RBAC"  # Envoy's response flag for a request denied by authorization policy
RBAC_DENIED_BODY: Final = b"RBAC: access denied"  # Envoy's body, byte for byte


def rbac_denied_reply(*, close: bool = False) -> bytes:
    """The HTTP/1.1 403 for a request the authorization policy denied."""
    return local_reply_bytes(403, RBAC_FLAG, RBAC_DENIED_BODY, close=close)


def jwt_denied_reply(result: AuthnResult, *, close: bool = False) -> bytes:
    """The HTTP/1.1 401 for a request whose JWT failed; the body says why, as Envoy's does."""
    return local_reply_bytes(401, "", result.reason.encode("utf-8", "replace"), close=close)


class AuditLog(JsonLines):
    """Owns the file it opens (closed by `close()`); a stream it is given is never closed."""

    def __init__(
        self,
        target: str | IO[str] = "-",
        *,
        destination: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(target)
        self.destination = destination  # this workload, e.g. "reviews-v1.default"
        self._clock = clock

    def record(self, req: RequestAttributes, decision: Decision, request_id: str = "") -> None:
        """Log an authorization decision if it denied or an AUDIT policy matched."""
        if decision.allowed and not decision.audit:
            return
        self._write(
            req,
            request_id,
            status=None if decision.allowed else 403,
            decision=decision.action,
            policy=decision.policy,
            audit_policy=decision.audit_policy,
            reason=decision.reason,
        )

    def record_authn(
        self, req: RequestAttributes, result: AuthnResult, request_id: str = ""
    ) -> None:
        """Log a request refused for its JWT (401)."""
        if result.ok:
            return
        self._write(req, request_id, status=401, decision="DENY", policy=None, reason=result.reason)

    def _write(self, req: RequestAttributes, request_id: str, **outcome: Any) -> None:
        wall = self._clock()
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall))
            + f".{int(wall % 1 * 1000):03d}Z",
            "destination": self.destination,
            "source_principal": req.source_principal,
            "source_namespace": req.source_namespace,
            "source_ip": req.source_ip,
            "request_principal": req.request_principal,
            "method": req.method,
            "host": req.authority,
            "path": req.path,
            "request_id": request_id,
            **outcome,
        }
        self.write(entry)
