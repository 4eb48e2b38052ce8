"""Resilience cores: retry decisions, retry budgets and circuit breakers. Pure, no I/O.

The data path (the lead's `downstream`/`upstream`) owns the timers and sockets; these objects
only count and decide, in O(1), and never wait. See `docs/traffic-management.md`.
"""

from plait.proxy.resilience.breaker import (
    OVERFLOW_FLAG,
    OVERFLOW_STATUS,
    OVERLOADED_HEADER,
    CircuitBreaker,
)
from plait.proxy.resilience.budget import RetryBudget
from plait.proxy.resilience.retry import (
    CONNECT_FAILURE,
    DEFAULT_RETRY_POLICY,
    REFUSED_STREAM,
    RESET,
    TIMEOUT,
    Outcome,
    RetryPolicy,
    may_retry,
)

__all__ = [
    "CONNECT_FAILURE",
    "DEFAULT_RETRY_POLICY",
    "OVERFLOW_FLAG",
    "OVERFLOW_STATUS",
    "OVERLOADED_HEADER",
    "REFUSED_STREAM",
    "RESET",
    "TIMEOUT",
    "CircuitBreaker",
    "Outcome",
    "RetryBudget",
    "RetryPolicy",
    "may_retry",
]
