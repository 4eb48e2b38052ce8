"""Whether a failed try may be repeated, and how long to wait first.

Conditions follow Envoy's `x-envoy-retry-on` / `x-envoy-retry-grpc-on` (which Istio's
`retryOn` passes through): `5xx` covers any 5xx and any try without a response (connect
failure, refused stream, reset, per-try timeout); `gateway-error` is 502/503/504 plus the same
response-less failures (they surface as 503/504); `reset` is any response-less failure;
`connect-failure` and `refused-stream` only those; `retriable-4xx` is 409; and
`retriable-status-codes` the listed codes. gRPC conditions (`unavailable`, `cancelled`,
`deadline-exceeded`, `resource-exhausted`, `internal`) read the `grpc-status` of a
trailers-only response.

Safety comes before any condition: a request that may have reached the upstream is repeated
only when its method is idempotent (RFC 9110 section 9.2.2), and never when its body was too
large to keep for replay. A connect failure or a refused stream proves that the upstream never
saw the request, so those are retried for every method. A listed gRPC status is retried
whatever the method (every gRPC call is a POST): listing it is the route owner's statement that
the call is safe to repeat, as a gRPC service config's retryableStatusCodes is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plait.config.traffic_policy import GRPC_RETRY_STATUS, RetryPolicyConfig

if TYPE_CHECKING:
    from plait.proxy.resilience.breaker import CircuitBreaker
    from plait.proxy.resilience.budget import RetryBudget

__all__ = [
    "CONNECT_FAILURE",
    "DEFAULT_RETRY_POLICY",
    "REFUSED_STREAM",
    "RESET",
    "TIMEOUT",
    "Outcome",
    "RetryPolicy",
    "may_retry",
]

# Why a try ended without a response.
CONNECT_FAILURE = "connect-failure"  # no connection: the request never left the proxy
REFUSED_STREAM = "refused-stream"  # HTTP/2 REFUSED_STREAM: the peer did not process it
RESET = "reset"  # the connection broke after the request was (maybe) sent
TIMEOUT = "timeout"  # the per-try timeout fired
NEVER_REACHED = frozenset({CONNECT_FAILURE, REFUSED_STREAM})
_NO_RESPONSE = frozenset({CONNECT_FAILURE, REFUSED_STREAM, RESET, TIMEOUT})

# The failures each condition covers (Envoy's RetryStateImpl::wouldRetryFromReset).
_FAILURES = {
    "5xx": _NO_RESPONSE,
    "gateway-error": _NO_RESPONSE,
    "reset": _NO_RESPONSE,
    "connect-failure": frozenset({CONNECT_FAILURE}),
    "refused-stream": frozenset({REFUSED_STREAM}),
}
_STATUSES = {
    "5xx": frozenset(range(500, 600)),
    "gateway-error": frozenset({502, 503, 504}),
    "retriable-4xx": frozenset({409}),  # Envoy: only 409 Conflict is worth repeating
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one try ended; built only for failed tries, so success allocates nothing."""

    status: int | None = None  # the response status; None when no response came
    failure: str | None = None  # CONNECT_FAILURE, REFUSED_STREAM, RESET or TIMEOUT
    grpc_status: int | None = None  # from `grpc-status` (headers or trailers)
    reached_upstream: bool = True  # False: provably unseen (no byte was written)
    idempotent: bool = False  # the method is (GET, HEAD, OPTIONS, TRACE, PUT, DELETE)
    replayable: bool = True  # the whole body is still held (at most 64 KiB)


class RetryPolicy:
    """A route's retry rule, compiled to sets so each decision is a few lookups."""

    __slots__ = (
        "attempts",
        "per_try_timeout",
        "statuses",
        "failures",
        "grpc_statuses",
        "backoff_base",
        "backoff_max",
    )

    def __init__(
        self,
        attempts: int = 2,
        retry_on: tuple[str, ...] = ("connect-failure", "refused-stream"),
        retriable_status_codes: tuple[int, ...] = (),
        per_try_timeout: float = 0.0,
        backoff_base: float = 0.025,
        backoff_max: float = 0.250,
        grpc_statuses: frozenset[int] = frozenset(),
    ) -> None:
        self.attempts = attempts  # retries after the first try (Istio's `attempts`)
        self.per_try_timeout = per_try_timeout  # seconds; 0: none
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        statuses: set[int] = set()
        failures: set[str] = set()
        for cond in retry_on:
            statuses |= _STATUSES.get(cond, frozenset())
            failures |= _FAILURES.get(cond, frozenset())
        if "retriable-status-codes" in retry_on:
            statuses.update(retriable_status_codes)
        self.statuses = frozenset(statuses)  # the lead may test `status in statuses` first
        self.failures = frozenset(failures)
        # gRPC statuses: given as codes (the snapshot's `grpc_statuses`) or as condition names.
        named = (GRPC_RETRY_STATUS[c] for c in retry_on if c in GRPC_RETRY_STATUS)
        self.grpc_statuses = grpc_statuses.union(named)

    @classmethod
    def from_config(cls, cfg: RetryPolicyConfig) -> RetryPolicy:
        return cls(
            cfg.attempts,
            cfg.retry_on,
            cfg.retriable_status_codes,
            cfg.per_try_timeout_ms / 1000,
            cfg.backoff_base_ms / 1000,
            cfg.backoff_max_ms / 1000,
            cfg.grpc_statuses,
        )

    def should_retry(self, outcome: Outcome, retries_done: int) -> bool:
        """True if another try is allowed by this policy (budget and breaker not included)."""
        if retries_done >= self.attempts or not outcome.replayable:
            return False
        failure = outcome.failure
        if failure is not None:
            if failure not in self.failures:
                return False
            reached = outcome.reached_upstream and failure not in NEVER_REACHED
        elif outcome.status in self.statuses:
            reached = True
        else:
            # gRPC calls are all POSTs, so idempotency cannot come from the method: the route
            # owner listing the status is the promise, as in gRPC's own retry policy (A6).
            return outcome.grpc_status is not None and outcome.grpc_status in self.grpc_statuses
        return outcome.idempotent or not reached

    def backoff(self, retries_done: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `retries_done + 1`: full jitter, capped.

        Envoy's JitteredExponentialBackOffStrategy: uniform in [0, base * 2^n), at most the
        cap; jitter spreads the retries of many clients that failed at the same moment.
        """
        ceiling = self.backoff_base * (1 << min(retries_done, 30))
        return rng.random() * min(ceiling, self.backoff_max)


# Istio retries twice by default; plait only where the upstream provably saw nothing, so a
# 500 is neither hidden nor repeated (issue 4).
DEFAULT_RETRY_POLICY = RetryPolicy()


def may_retry(
    policy: RetryPolicy,
    outcome: Outcome,
    retries_done: int,
    budget: RetryBudget,
    breaker: CircuitBreaker,
) -> bool:
    """The whole decision: policy, then the breaker's maxRetries, then the budget.

    True means a retry slot is held: call `breaker.release_retry()` when that retry ends.
    """
    if not policy.should_retry(outcome, retries_done):
        return False
    if not breaker.try_acquire_retry():
        return False
    if not budget.withdraw():
        breaker.release_retry()
        return False
    return True
