"""Retry decisions, retry budgets and circuit breakers: pure, with injected clocks and rngs."""

from __future__ import annotations

import random

import pytest

from plait.config.traffic_policy import PoolLimits, RetryPolicyConfig
from plait.proxy.resilience import (
    CONNECT_FAILURE,
    DEFAULT_RETRY_POLICY,
    OVERFLOW_FLAG,
    OVERFLOW_STATUS,
    OVERLOADED_HEADER,
    REFUSED_STREAM,
    RESET,
    TIMEOUT,
    CircuitBreaker,
    Outcome,
    RetryBudget,
    RetryPolicy,
    may_retry,
)


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


GET = {"idempotent": True}
POST = {"idempotent": False}


def policy(*retry_on: str, codes: tuple[int, ...] = (), attempts: int = 2) -> RetryPolicy:
    return RetryPolicy(attempts, retry_on, codes)


# --- retry policy ------------------------------------------------------------------------


def test_default_policy_retries_only_what_never_reached_the_upstream() -> None:
    p = DEFAULT_RETRY_POLICY
    assert p.attempts == 2
    for failure in (CONNECT_FAILURE, REFUSED_STREAM):
        assert p.should_retry(Outcome(failure=failure, **POST), 0)
    assert not p.should_retry(Outcome(status=500, **GET), 0)  # a 500 is not hidden
    assert not p.should_retry(Outcome(status=503, **GET), 0)
    assert not p.should_retry(Outcome(failure=RESET, **GET), 0)


def test_attempts_count_retries_after_the_first_try() -> None:
    p = policy("connect-failure", attempts=2)
    o = Outcome(failure=CONNECT_FAILURE, **GET)
    assert p.should_retry(o, 0) and p.should_retry(o, 1) and not p.should_retry(o, 2)
    assert not policy("connect-failure", attempts=0).should_retry(o, 0)


def test_5xx_covers_every_5xx_and_every_missing_response() -> None:
    p = policy("5xx")
    assert p.should_retry(Outcome(status=500, **GET), 0)
    assert p.should_retry(Outcome(status=599, **GET), 0)
    assert not p.should_retry(Outcome(status=404, **GET), 0)
    for failure in (CONNECT_FAILURE, REFUSED_STREAM, RESET, TIMEOUT):
        assert p.should_retry(Outcome(failure=failure, **GET), 0)


def test_gateway_error_is_502_503_504() -> None:
    p = policy("gateway-error")
    assert [p.should_retry(Outcome(status=s, **GET), 0) for s in (500, 502, 503, 504)] == [
        False,
        True,
        True,
        True,
    ]
    assert p.should_retry(Outcome(failure=RESET, **GET), 0)


def test_reset_and_connect_failure_and_refused_stream() -> None:
    assert policy("reset").should_retry(Outcome(failure=TIMEOUT, **GET), 0)
    assert not policy("reset").should_retry(Outcome(status=503, **GET), 0)
    assert not policy("connect-failure").should_retry(Outcome(failure=RESET, **GET), 0)
    assert not policy("refused-stream").should_retry(Outcome(failure=CONNECT_FAILURE, **GET), 0)


def test_retriable_4xx_and_status_codes() -> None:
    assert policy("retriable-4xx").should_retry(Outcome(status=409, **GET), 0)
    assert not policy("retriable-4xx").should_retry(Outcome(status=429, **GET), 0)
    p = policy("retriable-status-codes", codes=(429, 503))
    assert p.should_retry(Outcome(status=429, **GET), 0)
    assert not p.should_retry(Outcome(status=502, **GET), 0)
    assert policy(codes=(503,)).statuses == frozenset()  # codes need the condition


def test_grpc_conditions_read_grpc_status() -> None:
    p = policy("unavailable", "cancelled", "deadline-exceeded", "resource-exhausted", "internal")
    for code in (1, 4, 8, 13, 14):
        assert p.should_retry(Outcome(status=200, grpc_status=code, **GET), 0)
    assert not p.should_retry(Outcome(status=200, grpc_status=2, **GET), 0)  # UNKNOWN


def test_listed_grpc_statuses_are_retried_for_post_calls() -> None:
    """Every gRPC call is a POST: the listed status, not the method, says it is safe."""
    p = RetryPolicy(grpc_statuses=frozenset({14}))
    assert p.grpc_statuses == frozenset({14})
    assert p.should_retry(Outcome(status=200, grpc_status=14, **POST), 0)
    assert not p.should_retry(Outcome(status=200, grpc_status=14, **POST), 2)  # attempts spent
    assert not p.should_retry(Outcome(status=200, grpc_status=4, **POST), 0)
    assert not p.should_retry(Outcome(status=200, **POST), 0)  # no grpc-status at all
    big = Outcome(status=200, grpc_status=14, replayable=False, **POST)
    assert not p.should_retry(big, 0)  # the body is gone: nothing to replay


def test_grpc_statuses_come_from_the_config_and_from_condition_names() -> None:
    cfg = RetryPolicyConfig(retry_on=("5xx", "cancelled"), grpc_statuses=frozenset({14, 8}))
    p = RetryPolicy.from_config(cfg)
    assert p.grpc_statuses == frozenset({1, 8, 14})
    assert p.statuses == frozenset(range(500, 600))
    assert DEFAULT_RETRY_POLICY.grpc_statuses == frozenset()


def test_retry_config_grpc_statuses_round_trip_and_are_checked() -> None:
    cfg = RetryPolicyConfig(grpc_statuses=frozenset({14, 1}))
    data = cfg.to_dict()
    assert data["grpc_statuses"] == [1, 14]  # sorted: equal policies are equal dicts
    assert RetryPolicyConfig.from_dict(data, "r") == cfg
    assert RetryPolicyConfig.from_dict({}, "r").grpc_statuses == frozenset()
    for bad, message in (
        ([0], r"r\.grpc_statuses: 0 is not a gRPC error status"),
        ([17], r"r\.grpc_statuses: 17 is not"),
        (["14"], r"r\.grpc_statuses\[0\]: expected int"),
        (14, r"r\.grpc_statuses: expected a list"),
    ):
        with pytest.raises(ValueError, match=message):
            RetryPolicyConfig.from_dict({"grpc_statuses": bad}, "r")


def test_non_idempotent_requests_are_retried_only_when_unseen() -> None:
    p = policy("5xx")
    assert not p.should_retry(Outcome(status=503, **POST), 0)
    assert not p.should_retry(Outcome(failure=RESET, **POST), 0)
    assert not p.should_retry(Outcome(failure=TIMEOUT, **POST), 0)
    assert p.should_retry(Outcome(failure=CONNECT_FAILURE, **POST), 0)
    assert p.should_retry(Outcome(failure=REFUSED_STREAM, **POST), 0)
    # A reset before a single byte was written is provably unseen too.
    assert p.should_retry(Outcome(failure=RESET, reached_upstream=False, **POST), 0)


def test_a_body_too_large_to_replay_is_never_retried() -> None:
    p = policy("5xx")
    assert not p.should_retry(Outcome(failure=CONNECT_FAILURE, replayable=False, **GET), 0)


def test_from_config() -> None:
    cfg = RetryPolicyConfig(
        attempts=3,
        per_try_timeout_ms=1500,
        retry_on=("gateway-error", "retriable-status-codes"),
        retriable_status_codes=(429,),
    )
    p = RetryPolicy.from_config(cfg)
    assert p.attempts == 3 and p.per_try_timeout == 1.5
    assert p.statuses == frozenset({429, 502, 503, 504})


def test_backoff_is_exponential_full_jitter_capped() -> None:
    p = DEFAULT_RETRY_POLICY
    rng = random.Random(1)
    for n, ceiling in enumerate((0.025, 0.050, 0.100, 0.200, 0.250, 0.250, 0.250)):
        waits = [p.backoff(n, rng) for _ in range(2000)]
        assert min(waits) >= 0 and max(waits) < ceiling
        assert ceiling * 0.45 < sum(waits) / len(waits) < ceiling * 0.55  # uniform: mean ~ half
    assert p.backoff(1000, rng) < 0.250  # no overflow on absurd counts


# --- retry budget ------------------------------------------------------------------------


def test_retry_budget_caps_retries_when_everything_fails() -> None:
    clock = Clock()
    budget = RetryBudget(clock=clock)
    p = RetryPolicy(attempts=2, retry_on=("5xx",))
    breaker = CircuitBreaker()
    rate, seconds = 100, 60
    requests = attempts = 0
    for _ in range(rate * seconds):
        clock.now += 1 / rate
        budget.deposit()
        requests += 1
        attempts += 1
        retries = 0
        while may_retry(p, Outcome(status=503, idempotent=True), retries, budget, breaker):
            breaker.release_retry()
            retries += 1
            attempts += 1
    # Linkerd's bound: retries <= 20 % of requests + 10/s (the reserve spans one ttl more).
    assert attempts <= 1.2 * requests + 10 * (seconds + 10)
    assert attempts >= 1.2 * requests  # and the budget does allow what it promises
    assert attempts < 2 * requests  # against 3x without a budget
    assert budget.refused > 0 and breaker.retries == 0


def test_retry_budget_reserve_lets_a_quiet_service_retry() -> None:
    clock = Clock()
    budget = RetryBudget(retry_ratio=0.2, min_retries_per_second=10, ttl=10.0, clock=clock)
    assert sum(budget.withdraw() for _ in range(150)) == 100  # 10/s x 10 s
    assert budget.balance < 1
    clock.now += 10.5  # the withdrawals left the window
    assert budget.withdraw()


def test_retry_budget_deposits_expire_after_ttl() -> None:
    clock = Clock()
    budget = RetryBudget(retry_ratio=0.5, min_retries_per_second=0, ttl=10.0, clock=clock)
    for _ in range(10):
        budget.deposit()
    assert budget.balance == 5
    clock.now += 5
    assert budget.balance == 5
    clock.now += 6
    assert budget.balance == 0 and not budget.withdraw()
    for _ in range(4):
        budget.deposit()
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()


def test_retry_budget_from_policy() -> None:
    from plait.config.traffic_policy import BudgetPolicy

    clock = Clock()
    budget = RetryBudget.from_policy(BudgetPolicy(0.1, 1, 2000), clock)
    assert budget.balance == 2  # 1/s x 2 s


# --- circuit breaker ---------------------------------------------------------------------


def test_breaker_overflow_is_immediate_and_counted() -> None:
    b = CircuitBreaker(PoolLimits(max_connections=1))
    assert b.try_acquire_connection()
    assert not b.try_acquire_connection()  # at once: no waiting, no queue
    assert b.cx_overflow == 1
    b.release_connection()
    assert b.try_acquire_connection()
    assert (OVERFLOW_STATUS, OVERFLOW_FLAG, OVERLOADED_HEADER) == (
        503,
        "UO",
        (b"x-plait-overloaded", b"true"),
    )


@pytest.mark.parametrize(
    ("limit", "acquire", "release", "counter"),
    [
        ("max_pending_requests", "try_acquire_pending", "release_pending", "rq_pending_overflow"),
        ("max_requests", "try_acquire_request", "release_request", "rq_overflow"),
        ("max_retries", "try_acquire_retry", "release_retry", "rq_retry_overflow"),
    ],
)
def test_breaker_limits(limit: str, acquire: str, release: str, counter: str) -> None:
    b = CircuitBreaker(PoolLimits(**{limit: 2}))
    assert getattr(b, acquire)() and getattr(b, acquire)()
    assert not getattr(b, acquire)()
    assert getattr(b, counter) == 1
    getattr(b, release)()
    assert getattr(b, acquire)()
    for _ in range(3):
        getattr(b, release)()
    assert b.underflow == 1  # one release too many: a caller bug, counted, never negative


def test_breaker_defaults_are_unlimited_and_connection_reuse() -> None:
    b = CircuitBreaker()
    assert all(b.try_acquire_request() for _ in range(10_000))
    assert b.reuse_connection(10**9)
    capped = CircuitBreaker(PoolLimits(max_requests_per_connection=2))
    assert capped.reuse_connection(1) and not capped.reuse_connection(2)
    assert set(capped.stats()) >= {"connections", "rq_overflow", "rq_retry_overflow"}


def test_may_retry_holds_a_retry_slot_and_gives_it_back_when_the_budget_refuses() -> None:
    clock = Clock()
    o = Outcome(failure=CONNECT_FAILURE, idempotent=True)
    breaker = CircuitBreaker(PoolLimits(max_retries=1))
    budget = RetryBudget(clock=clock)
    assert may_retry(DEFAULT_RETRY_POLICY, o, 0, budget, breaker)
    assert breaker.retries == 1
    assert not may_retry(DEFAULT_RETRY_POLICY, o, 0, budget, breaker)  # maxRetries reached
    breaker.release_retry()
    empty = RetryBudget(retry_ratio=0, min_retries_per_second=0, clock=clock)
    assert not may_retry(DEFAULT_RETRY_POLICY, o, 0, empty, breaker)
    assert breaker.retries == 0
    assert not may_retry(DEFAULT_RETRY_POLICY, Outcome(status=500), 0, budget, breaker)
