"""HTTPFault (plait.dev/v1): Istio's fault injection as an HTTPRoute ExtensionRef filter.

An HTTPRoute rule (or backendRef) names it in the Gateway API's extension slot:

    filters:
      - type: ExtensionRef
        extensionRef: {group: plait.dev, kind: HTTPFault, name: ratings-delay}

Its spec is Istio's HTTPFaultInjection, so VirtualService `fault:` blocks carry over:
`delay.fixedDelay` and `abort.httpStatus` or `abort.grpcStatus` (a code name, as Istio), each
with `percentage.value`. Unlike Istio, `percentage` is required: a fault that silently never
fires is a trap. The reference is local: the fault lives in the route's namespace.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from plait.config.resources import KINDS, IstioDuration, ObjectMeta, StrictModel

__all__ = ["FAULT_GROUP", "GRPC_CODES", "FaultAbort", "FaultDelay", "HTTPFault", "Percentage"]

FAULT_GROUP = "plait.dev"
# gRPC status codes by name, 0 to 16, in order (grpc/doc/statuscodes.md).
_GRPC_NAMES = (
    "OK CANCELLED UNKNOWN INVALID_ARGUMENT DEADLINE_EXCEEDED NOT_FOUND ALREADY_EXISTS "
    "PERMISSION_DENIED RESOURCE_EXHAUSTED FAILED_PRECONDITION ABORTED OUT_OF_RANGE "
    "UNIMPLEMENTED INTERNAL UNAVAILABLE DATA_LOSS UNAUTHENTICATED"
)
GRPC_CODES = {name: code for code, name in enumerate(_GRPC_NAMES.split())}


class Percentage(StrictModel):
    value: Annotated[float, Field(ge=0, le=100)]


class FaultDelay(StrictModel):
    fixed_delay: IstioDuration  # ms
    percentage: Percentage

    @model_validator(mode="after")
    def _positive(self) -> FaultDelay:
        if self.fixed_delay <= 0:
            raise ValueError("fixedDelay must be at least 1ms")
        return self


class FaultAbort(StrictModel):
    http_status: Annotated[int, Field(ge=200, le=599)] | None = None
    grpc_status: str | None = None  # a code name: UNAVAILABLE, DEADLINE_EXCEEDED, ...
    percentage: Percentage

    @model_validator(mode="after")
    def _one_status(self) -> FaultAbort:
        if (self.http_status is None) == (self.grpc_status is None):
            raise ValueError("set exactly one of httpStatus and grpcStatus")
        if self.grpc_status is not None and self.grpc_status not in GRPC_CODES:
            raise ValueError(f"grpcStatus must be one of {', '.join(GRPC_CODES)}")
        return self


class HTTPFaultSpec(StrictModel):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None

    @model_validator(mode="after")
    def _something(self) -> HTTPFaultSpec:
        if self.delay is None and self.abort is None:
            raise ValueError("set delay, abort or both")
        return self


class HTTPFault(StrictModel):
    """Delay and/or abort requests that match the rule referring to it."""

    api_version: Literal["plait.dev/v1"]
    kind: Literal["HTTPFault"]
    metadata: ObjectMeta
    spec: HTTPFaultSpec


KINDS[("plait.dev/v1", "HTTPFault")] = HTTPFault  # type: ignore[assignment]
