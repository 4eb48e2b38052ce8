"""DestinationRules and plait TrafficPolicies compiled into per-Service ClusterPolicies."""

from __future__ import annotations

import pytest
import yaml

from plait.config.resources import parse_resources
from plait.config.traffic_policy import (
    UNLIMITED,
    BudgetPolicy,
    ClusterPolicy,
    HealthCheckPolicy,
    LatencyBackoff,
    LbPolicy,
    OutlierPolicy,
    ServiceRef,
)
from plait.config.traffic_resources import PlaitTrafficPolicy
from plait.control.traffic_compiler import TrafficCompileError, compile_traffic_policies

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews}
spec: {selector: {app: reviews}, ports: [{port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews-v1}
spec: {selector: {app: reviews, version: v1}, ports: [{port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews-v2}
spec: {selector: {app: reviews, version: v2}, ports: [{port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: ratings}
spec: {selector: {app: ratings}, ports: [{port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: ratings, namespace: prod}
spec: {selector: {app: ratings}, ports: [{port: 9080}]}
"""


def load(text: str) -> list[object]:
    """Resources from YAML; TrafficPolicy through its own model (the lead registers it)."""
    out: list[object] = []
    for doc in text.split("\n---\n"):
        data = yaml.safe_load(doc)
        if data and data.get("kind") == "TrafficPolicy":
            out.append(PlaitTrafficPolicy.model_validate(data))
        elif data:
            out += parse_resources(doc, "test.yaml")
    return out


def compile_(extra: str, **kw) -> dict[tuple[str, str], ClusterPolicy]:
    return compile_traffic_policies(load(SERVICES + "\n---\n" + extra), **kw)


def dr(
    host: str, policy: str = "", namespace: str = "default", name: str = "dr", extra: str = ""
) -> str:
    return (
        f"apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f'spec:\n  host: "{host}"\n{extra}' + (f"  trafficPolicy: {policy}\n" if policy else "")
    )


ROUND_ROBIN = "{loadBalancer: {simple: ROUND_ROBIN}}"


# --- hosts and precedence ----------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["reviews", "reviews.default", "reviews.default.svc", "reviews.default.svc.cluster.local"],
)
def test_host_forms(host: str) -> None:
    out = compile_(dr(host, ROUND_ROBIN))
    assert set(out) == {("default", "reviews")}
    assert out["default", "reviews"].load_balancer.kind == "ROUND_ROBIN"


def test_short_names_resolve_in_the_rules_namespace() -> None:
    out = compile_(dr("ratings", ROUND_ROBIN, namespace="prod"))
    assert set(out) == {("prod", "ratings")}
    assert compile_(dr("ratings.prod", ROUND_ROBIN)).keys() == {("prod", "ratings")}
    assert compile_(dr("api.example.com", ROUND_ROBIN)) == {}


def test_wildcards_and_specificity() -> None:
    out = compile_(
        dr("*.local", "{loadBalancer: {simple: RANDOM}}", name="all")
        + "---\n"
        + dr("*.prod.svc.cluster.local", ROUND_ROBIN, name="prod")
        + "---\n"
        + dr("reviews", "{loadBalancer: {simple: LEAST_REQUEST}}", name="exact")
    )
    kinds = {key: p.load_balancer.kind for key, p in out.items()}
    assert kinds[("prod", "ratings")] == "ROUND_ROBIN"  # the longer wildcard
    assert kinds[("default", "ratings")] == "RANDOM"
    assert kinds[("default", "reviews")] == "LEAST_REQUEST"  # exact beats any wildcard
    assert compile_(dr("*", ROUND_ROBIN)).keys() >= {("prod", "ratings"), ("default", "reviews")}


def test_client_namespace_rule_wins_then_service_namespace() -> None:
    rules = (
        dr("ratings.prod", ROUND_ROBIN, namespace="prod", name="own")
        + "---\n"
        + dr("ratings.prod", "{loadBalancer: {simple: RANDOM}}", namespace="default", name="mine")
    )
    assert compile_(rules)["prod", "ratings"].load_balancer.kind == "RANDOM"
    other = compile_(rules, client_namespace="other")
    assert other["prod", "ratings"].load_balancer.kind == "ROUND_ROBIN"


def test_export_to_and_workload_selector() -> None:
    private = dr("ratings", ROUND_ROBIN, namespace="prod", extra='  exportTo: ["."]\n')
    assert compile_(private, client_namespace="default") == {}
    assert compile_(private, client_namespace="prod").keys() == {("prod", "ratings")}
    named = dr("ratings.prod", ROUND_ROBIN, extra="  exportTo: [team-a]\n")
    assert compile_(named, client_namespace="team-a") and not compile_(named)
    selected = dr(
        "reviews", ROUND_ROBIN, extra="  workloadSelector: {matchLabels: {app: productpage}}\n"
    )
    assert compile_(selected, client_labels={"app": "productpage"})
    assert compile_(selected, client_labels={"app": "details"}) == {}


# --- sections ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lb", "expected"),
    [
        ("{simple: LEAST_CONN}", LbPolicy("LEAST_REQUEST")),
        ("{simple: UNSPECIFIED}", LbPolicy("LEAST_REQUEST")),
        ("{consistentHash: {httpHeaderName: X-User}}", LbPolicy("RING_HASH", "header", "x-user")),
        ("{consistentHash: {httpCookie: {name: sid}}}", LbPolicy("RING_HASH", "cookie", "sid")),
        ("{consistentHash: {useSourceIp: true}}", LbPolicy("RING_HASH", "source_ip")),
        (
            "{consistentHash: {httpQueryParameterName: u, ringHash: {minimumRingSize: 4096}}}",
            LbPolicy("RING_HASH", "query_parameter", "u", minimum_ring_size=4096),
        ),
    ],
)
def test_load_balancer(lb: str, expected: LbPolicy) -> None:
    assert (
        compile_(dr("reviews", f"{{loadBalancer: {lb}}}"))["default", "reviews"].load_balancer
        == expected
    )


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            "{loadBalancer: {simple: PASSTHROUGH}}",
            r"loadBalancer\.simple: PASSTHROUGH is not supported",
        ),
        ("{loadBalancer: {consistentHash: {maglev: {}}}}", r"consistentHash\.maglev"),
        ("{loadBalancer: {consistentHash: {}}}", "set exactly one of httpHeaderName"),
        (
            "{loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 0s}}}}",
            "generating the cookie",
        ),
        ("{loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}", "not both"),
        ("{connectionPool: {tcp: {maxConnectionDuration: 1s}}}", r"tcp\.maxConnectionDuration"),
        ("{connectionPool: {http: {useClientProtocol: true}}}", "useClientProtocol"),
        ("{connectionPool: {http: {maxConcurrentStreams: 10}}}", "maxConcurrentStreams"),
        ("{tls: {mode: MUTUAL}}", r"tls\.mode: MUTUAL"),
        ("{tls: {mode: SIMPLE, credentialName: x}}", r"tls\.credentialName"),
        ("{tls: {mode: SIMPLE, insecureSkipVerify: true}}", "skipping verification"),
        ("{tls: {mode: ISTIO_MUTUAL, sni: x}}", "apply to mode SIMPLE only"),
        (
            "{outlierDetection: {interval: 0s}}",
            "policy for Service default/reviews: outlier.interval_ms",
        ),
    ],
)
def test_unsupported_fields_are_errors_that_name_the_field(policy: str, message: str) -> None:
    with pytest.raises(TrafficCompileError, match=message) as err:
        compile_(dr("reviews", policy))
    if "policy for" not in message:
        assert str(err.value).startswith("DestinationRule default/dr: spec.trafficPolicy.")


def test_connection_pool() -> None:
    policy = (
        "{connectionPool: {tcp: {maxConnections: 1, connectTimeout: 250ms, idleTimeout: 1h},"
        " http: {http1MaxPendingRequests: 2, http2MaxRequests: 3, maxRequestsPerConnection: 4,"
        " maxRetries: 5, h2UpgradePolicy: DO_NOT_UPGRADE}}}"
    )
    pool = compile_(dr("reviews", policy))["default", "reviews"].connection_pool
    assert (pool.max_connections, pool.max_pending_requests, pool.max_requests) == (1, 2, 3)
    assert (pool.max_requests_per_connection, pool.max_retries) == (4, 5)
    assert (pool.connect_timeout_ms, pool.idle_timeout_ms) == (250, 3_600_000)
    assert pool.h2_upgrade_policy == "DO_NOT_UPGRADE"
    upgrade = compile_(dr("reviews", "{connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}"))
    assert upgrade["default", "reviews"].connection_pool.h2_upgrade_policy == "UPGRADE"
    http_only = compile_(dr("reviews", "{connectionPool: {http: {idleTimeout: 5s}}}"))
    pool = http_only["default", "reviews"].connection_pool
    assert pool.idle_timeout_ms == 5000 and pool.max_connections == UNLIMITED


def test_outlier_detection_defaults_and_min_health_percent() -> None:
    out = compile_(
        dr("reviews", "{outlierDetection: {consecutiveGatewayErrors: 3, baseEjectionTime: 1m}}")
        + "---\n"
        + dr("ratings", "{outlierDetection: {minHealthPercent: 30}}", name="r")
    )
    reviews = out["default", "reviews"]
    assert reviews.outlier == OutlierPolicy(consecutive_gateway_errors=3, base_ejection_ms=60_000)
    assert reviews.panic_threshold_percent == 50  # Envoy's default when unset
    assert out["default", "ratings"].panic_threshold_percent == 30


def test_tls_simple() -> None:
    policy = "{tls: {mode: SIMPLE, caCertificates: /ca.pem, sni: api.x, subjectAltNames: [api.x]}}"
    p = compile_(dr("reviews", policy))["default", "reviews"]
    assert (p.tls_mode, p.ca_file, p.sni, p.subject_alt_names) == (
        "SIMPLE",
        "/ca.pem",
        "api.x",
        ("api.x",),
    )
    assert (
        compile_(dr("reviews", "{tls: {mode: DISABLE}}"))["default", "reviews"].tls_mode
        == "DISABLE"
    )


# --- subsets -----------------------------------------------------------------------------


SUBSETS = """  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
  - name: v9
    labels: {version: v9}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
"""


def test_subsets_apply_to_the_version_services() -> None:
    policy = "{loadBalancer: {simple: ROUND_ROBIN}, connectionPool: {tcp: {maxConnections: 7}}}"
    out = compile_(dr("reviews", policy, extra=SUBSETS))
    assert set(out) == {
        ("default", "reviews"),
        ("default", "reviews-v1"),
        ("default", "reviews-v2"),
    }
    v1, v2 = out["default", "reviews-v1"], out["default", "reviews-v2"]
    assert v1 == out["default", "reviews"]  # a subset without its own policy inherits
    assert v2.load_balancer.kind == "RANDOM"  # the subset's section replaces the top-level one
    assert v2.connection_pool.max_connections == 7  # sections it does not set are inherited


def test_a_rule_for_the_version_service_itself_wins_over_the_subset() -> None:
    out = compile_(
        dr("reviews", ROUND_ROBIN, extra=SUBSETS)
        + "---\n"
        + dr("reviews-v2", "{loadBalancer: {simple: LEAST_REQUEST}}", name="v2")
    )
    assert out["default", "reviews-v2"].load_balancer.kind == "LEAST_REQUEST"


def test_subset_errors_name_the_subset() -> None:
    bad = "  subsets:\n  - name: v2\n    labels: {version: v2}\n    trafficPolicy: {tls: {mode: MUTUAL}}\n"
    with pytest.raises(TrafficCompileError, match=r"spec\.subsets\[0\]\.trafficPolicy\.tls\.mode"):
        compile_(dr("reviews", extra=bad))


# --- plait's TrafficPolicy ---------------------------------------------------------------


def tp(spec: str, name: str = "tp", target: str = "reviews") -> str:
    return (
        f"apiVersion: plait.dev/v1\nkind: TrafficPolicy\nmetadata: {{name: {name}}}\n"
        f"spec:\n  targetRef: {{kind: Service, name: {target}}}\n{spec}"
    )


def test_traffic_policy_extensions() -> None:
    spec = (
        "  loadBalancer: {peakEwma: {defaultRtt: 50ms}}\n"
        "  retryBudget: {retryRatio: 0.1, ttl: 5s}\n"
        "  healthCheck: {http: {path: /healthz}, interval: 5s, unhealthyThreshold: 2}\n"
        "  latencyBackoff: {factor: 4}\n"
        "  fallback: {name: ratings, namespace: prod}\n"
    )
    p = compile_(tp(spec))["default", "reviews"]
    assert p.load_balancer == LbPolicy("PEAK_EWMA", ewma_default_rtt_ms=50.0)
    assert p.retry_budget == BudgetPolicy(0.1, 10, 5000)
    assert p.health_check == HealthCheckPolicy("http", "/healthz", 5000, 1000, 2, 1)
    # Without outlierDetection only latency ejects.
    assert p.outlier == OutlierPolicy(0, 0, latency=LatencyBackoff(4.0, 20))
    assert p.fallback == ServiceRef("ratings", "prod")


def test_traffic_policy_adds_to_the_destination_rule() -> None:
    out = compile_(
        dr("reviews", "{outlierDetection: {consecutive5xxErrors: 2}}")
        + "---\n"
        + tp("  latencyBackoff: {}\n  healthCheck: {tcp: {}}\n")
    )
    p = out["default", "reviews"]
    assert p.outlier == OutlierPolicy(consecutive_5xx=2, latency=LatencyBackoff())
    assert p.health_check == HealthCheckPolicy()


def test_traffic_policy_conflicts_and_references() -> None:
    with pytest.raises(TrafficCompileError, match="already sets loadBalancer"):
        compile_(dr("reviews", ROUND_ROBIN) + "---\n" + tp("  loadBalancer: {peakEwma: {}}\n"))
    with pytest.raises(
        TrafficCompileError,
        match=r"TrafficPolicy default/tp: spec\.fallback: no Service default/nope",
    ):
        compile_(tp("  fallback: {name: nope}\n"))
    with pytest.raises(TrafficCompileError, match="its own fallback"):
        compile_(tp("  fallback: {name: reviews}\n"))
    assert compile_(tp("  latencyBackoff: {}\n", target="ghost")) == {}
    first = tp("  retryBudget: {retryRatio: 0.5}\n", name="a")
    second = tp("  retryBudget: {retryRatio: 0.9}\n", name="b")
    assert compile_(second + "---\n" + first)["default", "reviews"].retry_budget.retry_ratio == 0.5


def test_output_survives_the_proxys_reader() -> None:
    out = compile_(
        dr("reviews", "{loadBalancer: {consistentHash: {useSourceIp: true}}}", extra=SUBSETS)
        + "---\n"
        + tp("  healthCheck: {tcp: {}}\n  fallback: {name: ratings}\n")
    )
    for policy in out.values():
        assert ClusterPolicy.from_dict(policy.to_dict(), "p") == policy
