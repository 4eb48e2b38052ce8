"""Refused HTTP/2 streams are retried whatever the method (RFC 9113 section 8.7; issue 8).

Three layers of one decision: the retry policy says a refused stream never reached the
upstream (so a POST may go again); the HTTP/2 upstream glue marks a stream refused only
for REFUSED_STREAM or a GOAWAY that leaves it unprocessed, before any response byte (fed
real frames from the `h2` library); and `Stream.on_upstream_closed` turns such a close into
a scheduled retry, or into the old 503 UC when the body is no longer held for replay.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import h2.config
import h2.connection
import h2.errors
import pytest

from plait.config.snapshot import Endpoint
from plait.proto.events import LENGTH, RequestHead
from plait.proxy.downstream import Stream
from plait.proxy.h2_upstream import H2UpstreamConnection
from plait.proxy.resilience import (
    DEFAULT_RETRY_POLICY,
    REFUSED_STREAM,
    CircuitBreaker,
    Outcome,
    RetryBudget,
    RetryPolicy,
    may_retry,
)
from plait.proxy.upstream import Host

# Fakes stand in for the stream and its cluster (tests/conftest.py).
pytestmark = pytest.mark.python_core

REFUSED = Outcome(failure=REFUSED_STREAM, reached_upstream=False)


# --- the policy ---------------------------------------------------------------------------


def test_a_refused_post_may_go_again_under_the_default_policy() -> None:
    assert may_retry(DEFAULT_RETRY_POLICY, REFUSED, 0, RetryBudget(), CircuitBreaker())


def test_a_refused_stream_is_retried_only_within_the_policy() -> None:
    assert not DEFAULT_RETRY_POLICY.should_retry(REFUSED, DEFAULT_RETRY_POLICY.attempts)
    assert not RetryPolicy(retry_on=("retriable-status-codes",)).should_retry(REFUSED, 0)
    assert RetryPolicy(retry_on=("5xx",)).should_retry(REFUSED, 0)
    body_gone = Outcome(failure=REFUSED_STREAM, reached_upstream=False, replayable=False)
    assert not DEFAULT_RETRY_POLICY.should_retry(body_gone, 0)


# --- the HTTP/2 upstream glue, fed frames from a real h2 server ----------------------------


class Transport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.out += data

    def take(self) -> bytes:
        data, self.out = bytes(self.out), bytearray()
        return data

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def close(self) -> None:
        self.closed = True

    abort = close


class Recorder:
    """Stands where a downstream.Stream would: records what the connection tells it."""

    def __init__(self) -> None:
        self.closed: list[tuple[bool, bool]] = []  # (refused, got_bytes) per close
        self.events: list[object] = []

    def on_upstream_closed(self, handle: Any) -> None:
        self.closed.append((handle.reused, handle.got_bytes))

    def on_upstream_event(self, handle: Any, event: object) -> None:
        self.events.append(event)

    def upstream_buffer_full(self) -> None:
        pass

    def upstream_buffer_drained(self) -> None:
        pass


def _exchange(server_acts: Any) -> Recorder:
    """Open one POST stream to an h2 server, let `server_acts(server, sid)` answer it, and
    feed the answer back to plait's upstream connection."""

    async def go() -> Recorder:
        host = Host(Endpoint("127.0.0.1", 1))
        conn = H2UpstreamConnection(host)
        transport = Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        server.initiate_connection()
        conn.data_received(server.data_to_send())
        recorder = Recorder()
        head = RequestHead(b"POST", b"/orders", [(b"host", b"shop")])
        handle = conn.open_stream(recorder, head, False, b"http")  # type: ignore[arg-type]
        assert handle is not None
        handle.write(b"one coffee")
        conn.flush_out()
        server.receive_data(transport.take())
        server_acts(server, handle.sid)
        conn.data_received(server.data_to_send())
        return recorder

    return asyncio.run(go())


def test_refused_stream_marks_the_stream_unprocessed() -> None:
    recorder = _exchange(lambda s, sid: s.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM))
    assert recorder.closed == [(True, False)]


def test_a_stream_above_the_goaways_last_stream_id_is_unprocessed() -> None:
    recorder = _exchange(lambda s, sid: s.close_connection(last_stream_id=0))
    assert recorder.closed == [(True, False)]


def test_a_stream_the_goaway_covers_is_still_running() -> None:
    recorder = _exchange(lambda s, sid: s.close_connection(last_stream_id=sid))
    assert recorder.closed == []  # it may still be answered: nothing to retry yet


@pytest.mark.parametrize("code", [h2.errors.ErrorCodes.CANCEL, h2.errors.ErrorCodes.INTERNAL_ERROR])
def test_other_resets_may_have_been_processed(code: int) -> None:
    recorder = _exchange(lambda s, sid: s.reset_stream(sid, code))
    assert recorder.closed == [(False, False)]


def test_a_refusal_after_the_response_began_is_not_unprocessed() -> None:
    def acts(server: Any, sid: int) -> None:
        server.send_headers(sid, [(":status", "200")])
        server.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)

    recorder = _exchange(acts)
    assert recorder.closed == [(False, True)]


# --- Stream.on_upstream_closed ------------------------------------------------------------


class Loop:
    def __init__(self) -> None:
        self.later: list[tuple[float, Any]] = []

    def call_later(self, delay: float, callback: Any, *args: Any) -> Any:
        self.later.append((delay, callback))
        return SimpleNamespace(cancel=lambda: None)

    def time(self) -> float:
        return 0.0


class Down:
    """The downstream side a Stream talks to: collects what is written to the client."""

    def __init__(self) -> None:
        self.ctx = SimpleNamespace(
            stats=SimpleNamespace(upstream_rq_retry=0),
            metrics=None,
            loop=Loop(),
            draining=False,
            record=lambda stream: None,
        )
        self.written = b""
        self.closed = False
        self.write_paused = False
        self.pause_bits = 0
        self.done: list[bool] = []

    def write(self, data: bytes) -> None:
        self.written += data

    def stream_done(self, stream: Stream, keep_alive: bool) -> None:
        self.done.append(keep_alive)

    def pause_reading(self, bit: int) -> None:
        self.pause_bits |= bit

    def resume_reading(self, bit: int) -> None:
        self.pause_bits &= ~bit

    def close(self) -> None:
        pass


class Balancer:
    def __init__(self) -> None:
        self.finished: list[object] = []

    def on_finish(self, host: object, latency: float | None, now: float) -> None:
        self.finished.append(host)


def _refused_stream(method: bytes, replay: list[bytes] | None) -> tuple[Stream, Down, Any]:
    """A Stream whose HTTP/2 try was just refused (the handle the glue hands over)."""
    down = Down()
    stream = Stream(down, RequestHead(method, b"/orders", [(b"host", b"shop")], framing=LENGTH))  # type: ignore[arg-type]
    host = SimpleNamespace(active=1)
    stream.cluster = SimpleNamespace(  # type: ignore[assignment]
        name="shop",
        breaker=CircuitBreaker(),
        budget=RetryBudget(),
        balancer=Balancer(),
    )
    stream.host = host  # type: ignore[assignment]
    stream.try_started = 1.0
    stream.up_h2 = True
    stream.replay = replay
    stream.request_complete = True
    handle = SimpleNamespace(reused=True, got_bytes=False)
    stream.upstream = handle  # type: ignore[assignment]
    return stream, down, handle


def test_a_refused_post_is_scheduled_again_with_its_body() -> None:
    stream, down, handle = _refused_stream(b"POST", [b"one ", b"coffee"])
    host: Any = stream.host
    stream.on_upstream_closed(handle)
    assert not stream.finished and down.written == b""
    assert stream.retries_done == 1 and down.ctx.stats.upstream_rq_retry == 1
    assert [cb for _, cb in down.ctx.loop.later] == [stream._retry]
    assert stream.pending_body == [b"one ", b"coffee"]
    assert stream.host is None and host.active == 0  # the refused try is over
    assert stream.cluster.balancer.finished == [host]  # type: ignore[union-attr]


def test_a_refused_post_whose_body_is_gone_is_answered_as_before() -> None:
    stream, down, handle = _refused_stream(b"POST", None)
    stream.on_upstream_closed(handle)
    assert stream.finished and stream.status == 503 and stream.flags == "UC"
    assert down.written.startswith(b"HTTP/1.1 503")
    assert stream.retries_done == 0 and not down.ctx.loop.later


def test_a_refused_post_past_its_attempts_is_answered_as_before() -> None:
    stream, down, handle = _refused_stream(b"POST", [b"x"])
    stream.retries_done = DEFAULT_RETRY_POLICY.attempts
    stream.on_upstream_closed(handle)
    assert stream.finished and stream.status == 503 and stream.flags == "UC"


def test_a_refused_get_past_its_attempts_is_answered_too() -> None:
    """No transparent retry beyond the policy: a server that refuses every stream would
    otherwise get a new connection and stream for ever."""
    stream, down, handle = _refused_stream(b"GET", [])
    stream.retries_done = DEFAULT_RETRY_POLICY.attempts
    stream.on_upstream_closed(handle)
    assert stream.finished and stream.status == 503 and stream.flags == "UC"


def test_a_reset_that_may_have_been_processed_is_not_retried_for_a_post() -> None:
    stream, down, handle = _refused_stream(b"POST", [b"x"])
    handle.reused = False  # e.g. RST_STREAM(INTERNAL_ERROR), or the connection dropped
    stream.on_upstream_closed(handle)
    assert stream.finished and stream.status == 503 and not down.ctx.loop.later


def test_a_stale_pooled_connection_retry_ends_the_try_for_the_balancer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A GET on a pooled HTTP/1.1 connection the peer had closed goes again on a new one;
    the failed try must end for the balancer too, or PeakEWMA's pending count for the host
    grows by one each time and steers traffic away from it."""
    stream, down, handle = _refused_stream(b"GET", [])
    stream.up_h2 = False
    host: Any = stream.host
    again: list[bool] = []
    monkeypatch.setattr(Stream, "pick_and_send", lambda self, fresh=False: again.append(fresh))
    stream.on_upstream_closed(handle)
    assert again == [True] and host.active == 0
    assert stream.cluster.balancer.finished == [host]  # type: ignore[union-attr]
