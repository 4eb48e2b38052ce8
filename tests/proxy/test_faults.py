"""Fault decisions: percentages drawn from an injected, seeded random source."""

from __future__ import annotations

import random

from plait.config.snapshot import Fault
from plait.proxy.filters.faults import FaultAction, abort_reply


def _count(fault: Fault, n: int = 10_000, seed: int = 1) -> tuple[int, int]:
    action, rng = FaultAction.of(fault), random.Random(seed)
    delays = aborts = 0
    for _ in range(n):
        delay, abort = action.decide(rng)
        delays += delay > 0
        aborts += abort is not None
    return delays, aborts


def test_full_delay_always_and_zero_never() -> None:
    assert FaultAction.of(Fault(delay_ms=7000, delay_percent=100)).decide(random.Random()) == (
        7000,
        None,
    )
    assert _count(Fault(delay_ms=7000, delay_percent=0)) == (0, 0)


def test_percentages_hold_statistically_and_independently() -> None:
    fault = Fault(delay_ms=10, delay_percent=30, abort_http_status=503, abort_percent=10)
    delays, aborts = _count(fault)  # fixed seed: the same counts every run
    assert 2_850 < delays < 3_150
    assert 900 < aborts < 1_100


def test_http_abort_reply() -> None:
    reply = abort_reply(Fault(abort_http_status=503, abort_percent=100))
    assert reply is not None
    assert (reply.status, reply.flag, reply.headers, reply.body) == (
        503,
        "FI",
        (),
        b"fault filter abort",
    )


def test_grpc_abort_is_a_trailers_only_response() -> None:
    reply = abort_reply(Fault(abort_grpc_status=14, abort_percent=100))
    assert reply is not None and (reply.status, reply.flag) == (200, "FI")
    assert (b"grpc-status", b"14") in reply.headers
    assert (b"content-type", b"application/grpc") in reply.headers


def test_delay_only_fault_never_aborts() -> None:
    assert abort_reply(Fault(delay_ms=5, delay_percent=100)) is None
    assert _count(Fault(delay_ms=5, delay_percent=100), n=100) == (100, 0)
