"""Circuit breaking (Istio's connectionPool): hard caps per cluster that fail fast, never queue.

Each limit is a counter with `try_acquire_*` (True: go on; False: overflow, counted) and
`release_*`. On overflow the caller answers 503 with flag `UO` and `x-plait-overloaded: true`
at once: a queue would only turn overload into latency for everyone (Envoy's breakers behave
the same way). Limits are per proxy, not global, as in Envoy.

What each counts in plait's data path:
- connections: open upstream connections of the cluster (`tcp.maxConnections`);
- pending: requests waiting for a new connection to open (`http.http1MaxPendingRequests`);
- requests: tries in flight to the cluster, any protocol (`http.http2MaxRequests`);
- retries: retries in flight (`http.maxRetries`).
"""

from __future__ import annotations

from typing import Any, Final

from plait.config.traffic_policy import PoolLimits

__all__ = ["OVERFLOW_FLAG", "OVERFLOW_STATUS", "OVERLOADED_HEADER", "CircuitBreaker"]

OVERFLOW_STATUS: Final = 503
OVERFLOW_FLAG: Final = "UO"  # Envoy's response flag: upstream overflow
OVERLOADED_HEADER: Final = (b"x-plait-overloaded", b"true")  # as Envoy's x-envoy-overloaded


class CircuitBreaker:
    """One per cluster per proxy; lives as long as the cluster's snapshot entry."""

    def __init__(self, limits: PoolLimits | None = None) -> None:
        self.limits = limits or PoolLimits()
        self.connections = 0
        self.pending = 0
        self.requests = 0
        self.retries = 0
        # Envoy's counter names: upstream_cx_overflow, upstream_rq_pending_overflow, ...
        self.cx_overflow = 0
        self.rq_pending_overflow = 0
        self.rq_overflow = 0
        self.rq_retry_overflow = 0
        self.underflow = 0  # releases without an acquire: a bug in the caller, counted

    def try_acquire_connection(self) -> bool:
        if self.connections >= self.limits.max_connections:
            self.cx_overflow += 1
            return False
        self.connections += 1
        return True

    def release_connection(self) -> None:
        if self.connections > 0:
            self.connections -= 1
        else:
            self.underflow += 1

    def try_acquire_pending(self) -> bool:
        if self.pending >= self.limits.max_pending_requests:
            self.rq_pending_overflow += 1
            return False
        self.pending += 1
        return True

    def release_pending(self) -> None:
        if self.pending > 0:
            self.pending -= 1
        else:
            self.underflow += 1

    def try_acquire_request(self) -> bool:
        if self.requests >= self.limits.max_requests:
            self.rq_overflow += 1
            return False
        self.requests += 1
        return True

    def release_request(self) -> None:
        if self.requests > 0:
            self.requests -= 1
        else:
            self.underflow += 1

    def try_acquire_retry(self) -> bool:
        if self.retries >= self.limits.max_retries:
            self.rq_retry_overflow += 1
            return False
        self.retries += 1
        return True

    def release_retry(self) -> None:
        if self.retries > 0:
            self.retries -= 1
        else:
            self.underflow += 1

    def reuse_connection(self, requests_served: int) -> bool:
        """May a connection that has served this many requests be pooled again?"""
        limit = self.limits.max_requests_per_connection
        return limit == 0 or requests_served < limit

    def stats(self) -> dict[str, Any]:
        return {
            "connections": self.connections,
            "pending": self.pending,
            "requests": self.requests,
            "retries": self.retries,
            "cx_overflow": self.cx_overflow,
            "rq_pending_overflow": self.rq_pending_overflow,
            "rq_overflow": self.rq_overflow,
            "rq_retry_overflow": self.rq_retry_overflow,
        }
