"""The proxy-side traffic policy: defaults, round trips, errors that name the field."""

from __future__ import annotations

import copy

import pytest

from plait.config.traffic_policy import (
    UNLIMITED,
    ClusterPolicy,
    HealthCheckPolicy,
    LatencyBackoff,
    LbPolicy,
    OutlierPolicy,
    RetryPolicyConfig,
    ServiceRef,
    TrafficPolicyError,
    parse_retry_on,
)

FULL = ClusterPolicy(
    load_balancer=LbPolicy(kind="RING_HASH", hash_on="header", hash_name="x-user"),
    outlier=OutlierPolicy(consecutive_gateway_errors=3, latency=LatencyBackoff()),
    health_check=HealthCheckPolicy(kind="http", path="/healthz"),
    fallback=ServiceRef("static", "prod"),
    tls_mode="SIMPLE",
    ca_file="/etc/ca.pem",
    sni="api.example.com",
    subject_alt_names=("api.example.com",),
)


def test_defaults_follow_istio() -> None:
    p = ClusterPolicy()
    assert p.load_balancer.kind == "LEAST_REQUEST"
    assert p.connection_pool.max_connections == UNLIMITED
    assert p.connection_pool.max_requests_per_connection == 0
    assert p.outlier is None and p.health_check is None and p.fallback is None
    assert (p.retry_budget.retry_ratio, p.retry_budget.min_retries_per_second) == (0.2, 10)
    assert p.panic_threshold_percent == 50 and p.tls_mode == "AUTO"
    o = OutlierPolicy()
    assert (o.consecutive_5xx, o.interval_ms, o.base_ejection_ms, o.max_ejection_percent) == (
        5,
        10_000,
        30_000,
        10,
    )


@pytest.mark.parametrize("policy", [ClusterPolicy(), FULL])
def test_round_trip(policy: ClusterPolicy) -> None:
    data = policy.to_dict()
    assert ClusterPolicy.from_dict(copy.deepcopy(data), "policy") == policy
    assert isinstance(data["subject_alt_names"], list)


def test_missing_and_null_fields_take_defaults() -> None:
    assert ClusterPolicy.from_dict({}, "p") == ClusterPolicy()
    assert ClusterPolicy.from_dict({"outlier": None, "tls_mode": None}, "p") == ClusterPolicy()
    assert LatencyBackoff.from_dict({"factor": 4}, "x").factor == 4.0  # ints are fine for floats


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(colour=1), "policy.colour: unknown field"),
        (lambda d: d.update(load_balancer=[]), "policy.load_balancer: expected a mapping"),
        (
            lambda d: d["load_balancer"].update(kind="MAGLEV"),
            "policy.load_balancer.kind: must be one of",
        ),
        (
            lambda d: d["load_balancer"].update(hash_name="X-User"),
            "load_balancer.hash_name: header names",
        ),
        (
            lambda d: d["load_balancer"].update(kind="RANDOM"),
            "policy.load_balancer.hash_on: only RING_HASH",
        ),
        (
            lambda d: d["connection_pool"].update(max_connections=-1),
            "connection_pool.max_connections: must be >= 0",
        ),
        (
            lambda d: d["connection_pool"].update(max_connections="1"),
            "max_connections: expected int, got str",
        ),
        (
            lambda d: d["connection_pool"].update(max_retries=True),
            "max_retries: expected int, got a boolean",
        ),
        (lambda d: d["outlier"].update(interval_ms=0), "policy.outlier.interval_ms: must be >= 1"),
        (
            lambda d: d["outlier"].update(max_ejection_percent=101),
            "max_ejection_percent: must be a percentage",
        ),
        (
            lambda d: d["outlier"]["latency"].update(factor=1),
            "policy.outlier.latency.factor: must be > 1",
        ),
        (
            lambda d: d["health_check"].update(path="healthz"),
            "policy.health_check.path: an http check",
        ),
        (
            lambda d: d["health_check"].update(kind="tcp"),
            "policy.health_check.path: a tcp check has no path",
        ),
        (
            lambda d: d["retry_budget"].update(ttl_ms=100),
            "policy.retry_budget.ttl_ms: must be between",
        ),
        (
            lambda d: d["retry_budget"].update(retry_ratio=-0.1),
            "retry_budget.retry_ratio: must be >= 0",
        ),
        (lambda d: d["fallback"].update(name=""), "policy.fallback.name: must not be empty"),
        (lambda d: d["fallback"].pop("name"), "policy.fallback.name: required field is missing"),
        (lambda d: d.update(tls_mode="MUTUAL"), "policy.tls_mode: must be one of"),
        (lambda d: d.update(tls_mode="AUTO"), "policy.ca_file: only tls_mode SIMPLE"),
        (lambda d: d.update(subject_alt_names="x"), "policy.subject_alt_names: expected a list"),
        (lambda d: d.update(panic_threshold_percent=150), "policy.panic_threshold_percent"),
    ],
)
def test_errors_name_the_field(mutate, message: str) -> None:
    data = FULL.to_dict()
    mutate(data)
    with pytest.raises(TrafficPolicyError, match=message.replace("[", r"\[").replace(".", r"\.")):
        ClusterPolicy.from_dict(data, "policy")


def test_retry_config_round_trip_and_checks() -> None:
    cfg = RetryPolicyConfig(
        attempts=3, retry_on=("5xx", "retriable-status-codes"), retriable_status_codes=(429,)
    )
    assert RetryPolicyConfig.from_dict(cfg.to_dict(), "r") == cfg
    assert RetryPolicyConfig().retry_on == ("connect-failure", "refused-stream")
    bad = [
        ({"retry_on": ["sometimes"]}, r"r\.retry_on\[0\]: unknown condition 'sometimes'"),
        ({"retriable_status_codes": [429]}, "needs retry_on retriable-status-codes"),
        ({"retry_on": ["retriable-status-codes"], "retriable_status_codes": [42]}, r"codes\[0\]"),
        ({"attempts": -1}, r"r\.attempts: must be >= 0"),
        ({"backoff_max_ms": 10}, r"r\.backoff_max_ms: must be >= backoff_base_ms"),
    ]
    for data, message in bad:
        with pytest.raises(TrafficPolicyError, match=message):
            RetryPolicyConfig.from_dict(data, "r")


def test_parse_retry_on_accepts_istio_strings() -> None:
    assert parse_retry_on("5xx,connect-failure") == (("5xx", "connect-failure"), ())
    assert parse_retry_on(" gateway-error, 503 ,429,503, unavailable") == (
        ("gateway-error", "retriable-status-codes", "unavailable"),
        (503, 429),
    )
    assert parse_retry_on("") == ((), ())
    with pytest.raises(ValueError, match="unknown retry condition 'retriable-headers'"):
        parse_retry_on("retriable-headers")
    with pytest.raises(ValueError, match="not an HTTP status code"):
        parse_retry_on("5xx,999")
