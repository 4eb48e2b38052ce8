"""Fault injection (Istio's HTTPFaultInjection, from an HTTPFault ExtensionRef): pure decisions.

Per request, delay and abort are drawn independently, each on its own percentage, from an
injected `random.Random`, so tests are exact with a seed. The data path waits `delay_ms` first
(response flag `DI`), then sends the abort reply if there is one (flag `FI`) instead of
forwarding, as Envoy's fault filter does. A gRPC abort is a trailers-only response: HTTP 200
with `grpc-status`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from plait.config.snapshot import Fault
from plait.proxy.filters.route_filters import LocalReply

__all__ = ["FaultAction", "abort_reply"]

_BODY = b"fault filter abort"  # Envoy's text, so existing checks and habits carry over


def abort_reply(fault: Fault) -> LocalReply | None:
    """The local reply an abort sends, or None if the fault has no abort."""
    if fault.abort_grpc_status is not None:
        headers = (
            (b"content-type", b"application/grpc"),
            (b"grpc-status", str(fault.abort_grpc_status).encode()),
            (b"grpc-message", _BODY),
        )
        return LocalReply(200, "FI", headers)
    if fault.abort_http_status is not None:
        return LocalReply(fault.abort_http_status, "FI", (), _BODY)
    return None


@dataclass(frozen=True, slots=True)
class FaultAction:
    """One HTTPFault prepared for the hot path: the abort reply is built once."""

    delay_ms: int
    delay_percent: float
    abort: LocalReply | None
    abort_percent: float

    @classmethod
    def of(cls, fault: Fault) -> FaultAction:
        return cls(fault.delay_ms, fault.delay_percent, abort_reply(fault), fault.abort_percent)

    def decide(self, rng: random.Random) -> tuple[int, LocalReply | None]:
        """(milliseconds to delay, abort reply or None) for one request."""
        delay = 0
        if self.delay_ms and rng.random() * 100.0 < self.delay_percent:
            delay = self.delay_ms
        abort = None
        if self.abort is not None and rng.random() * 100.0 < self.abort_percent:
            abort = self.abort
        return delay, abort
