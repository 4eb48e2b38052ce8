"""plait's traffic extensions as a user resource: `TrafficPolicy` (plait.dev/v1).

DestinationRule's strict model has no room for what Istio lacks, so plait's additions live in
their own kind, attached to one Service the Gateway API way (a `targetRef`, GEP-713 policy
attachment, same namespace):

    apiVersion: plait.dev/v1
    kind: TrafficPolicy
    metadata: {name: reviews, namespace: default}
    spec:
      targetRef: {kind: Service, name: reviews}
      loadBalancer: {peakEwma: {defaultRtt: 30ms, decay: 10s}}
      retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
      healthCheck: {http: {path: /healthz}, interval: 10s, timeout: 1s,
                    unhealthyThreshold: 3, healthyThreshold: 1}
      latencyBackoff: {factor: 3, minRequests: 20}
      fallback: {name: reviews-static}

Absent fields keep plait's defaults (`plait.config.traffic_policy`); durations are held as
milliseconds, like every other kind's.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from plait.config.resources import KINDS, DNSLabel, IstioDuration, ObjectMeta, StrictModel

__all__ = [
    "FallbackRef",
    "HTTPHealthCheck",
    "HealthCheckSpec",
    "LatencyBackoffSpec",
    "PeakEwmaSettings",
    "PlaitLoadBalancer",
    "PlaitTrafficPolicy",
    "PolicyTargetRef",
    "RetryBudgetSpec",
    "TCPHealthCheck",
    "TrafficPolicySpec",
]

Positive = Annotated[int, Field(ge=1)]


class PolicyTargetRef(StrictModel):
    """The Service the policy attaches to, in the policy's own namespace."""

    group: Literal[""] = ""
    kind: Literal["Service"] = "Service"
    name: DNSLabel


class PeakEwmaSettings(StrictModel):
    default_rtt: IstioDuration | None = None  # ms; Linkerd's 30 ms when absent
    decay: IstioDuration | None = None  # ms; Linkerd's 10 s when absent


class PlaitLoadBalancer(StrictModel):
    """Balancers Istio lacks; the DestinationRule's `loadBalancer` names the standard ones."""

    peak_ewma: PeakEwmaSettings


class RetryBudgetSpec(StrictModel):
    """Linkerd's `retryBudget` fields, spelled as in its ServiceProfile."""

    retry_ratio: Annotated[float, Field(ge=0, le=10)] | None = None
    min_retries_per_second: Annotated[int, Field(ge=0)] | None = None
    ttl: IstioDuration | None = None


class HTTPHealthCheck(StrictModel):
    path: str = Field(pattern=r"^/")


class TCPHealthCheck(StrictModel):
    """A connect-only check: the endpoint accepts connections."""


class HealthCheckSpec(StrictModel):
    http: HTTPHealthCheck | None = None
    tcp: TCPHealthCheck | None = None
    interval: IstioDuration | None = None
    timeout: IstioDuration | None = None
    unhealthy_threshold: Positive | None = None
    healthy_threshold: Positive | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> HealthCheckSpec:
        if (self.http is None) == (self.tcp is None):
            raise ValueError("set exactly one of http and tcp")
        return self


class LatencyBackoffSpec(StrictModel):
    factor: Annotated[float, Field(gt=1)] | None = None
    min_requests: Positive | None = None


class FallbackRef(StrictModel):
    name: DNSLabel
    namespace: DNSLabel | None = None  # default: the policy's namespace


class TrafficPolicySpec(StrictModel):
    target_ref: PolicyTargetRef
    load_balancer: PlaitLoadBalancer | None = None
    retry_budget: RetryBudgetSpec | None = None
    health_check: HealthCheckSpec | None = None
    latency_backoff: LatencyBackoffSpec | None = None
    fallback: FallbackRef | None = None


class PlaitTrafficPolicy(StrictModel):
    """The `TrafficPolicy` kind; named so it is not confused with DestinationRule's field."""

    api_version: Literal["plait.dev/v1"]
    kind: Literal["TrafficPolicy"]
    metadata: ObjectMeta
    spec: TrafficPolicySpec


KINDS[("plait.dev/v1", "TrafficPolicy")] = PlaitTrafficPolicy  # type: ignore[assignment]
