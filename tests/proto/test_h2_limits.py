"""HTTP/2 safety limits (issue 8.7): hostile peers get refused or GOAWAY, memory stays bounded."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proto.events import END_OF_STREAM, RequestHead, ResponseHead
from plait.proto.h2 import frames as fr
from plait.proto.h2.config import H2Config
from plait.proto.h2.connection import H2Connection
from plait.proto.h2.errors import ErrorCode, H2ConnectionError
from plait.proto.h2.events import StreamReset

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/")]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def server(clock: Clock | None = None, **kwargs) -> tuple[H2Connection, hpack.Encoder]:
    conn = H2Connection(H2Config(**kwargs), clock=clock or Clock())
    conn.receive_data(fr.PREFACE + fr.settings_frame([]))
    conn.data_to_send()
    return conn, hpack.Encoder()


def headers(enc: hpack.Encoder, sid: int, fields, end_stream: bool = True) -> bytes:
    return fr.header_block_frames(sid, enc.encode(fields), end_stream, 16384)


def rst_codes(data: bytes) -> list[int]:
    return [fr.parse_rst_stream(f[3]) for f in fr.FrameBuffer().feed(data) if f[0] == fr.RST_STREAM]


def goaway_code(data: bytes) -> int:
    (frame,) = [f for f in fr.FrameBuffer().feed(data) if f[0] == fr.GOAWAY]
    return fr.parse_goaway(frame[3])[1]


def calm(conn: H2Connection, wire: bytes) -> H2ConnectionError:
    """Feed `wire`; it must end in GOAWAY(ENHANCE_YOUR_CALM)."""
    with pytest.raises(H2ConnectionError) as info:
        conn.receive_data(wire)
    assert info.value.code == ErrorCode.ENHANCE_YOUR_CALM
    assert goaway_code(conn.data_to_send()) == ErrorCode.ENHANCE_YOUR_CALM
    assert conn.counters.connection_errors == 1
    return info.value


def test_streams_over_the_limit_are_refused_and_retry_safe() -> None:
    conn, enc = server()
    wire = b"".join(headers(enc, 1 + 2 * i, GET, end_stream=False) for i in range(101))
    events = conn.receive_data(wire)
    assert len([e for _, e in events if isinstance(e, RequestHead)]) == 100
    assert rst_codes(conn.data_to_send()) == [ErrorCode.REFUSED_STREAM]
    assert conn.counters.refused_streams == 1
    # One finishes; the next new stream fits again.
    conn.send_headers(1, [(b":status", b"200")], end_stream=True)
    conn.receive_data(fr.data_frame(1, b"", end_stream=True))
    events = conn.receive_data(headers(enc, 205, GET))
    assert isinstance(events[0][1], RequestHead)


def test_oversized_header_list_gets_431_and_the_connection_lives() -> None:
    conn, enc = server()
    big = GET + [(b"x-big-%d" % i, b"v" * 4000) for i in range(20)]  # ~80 KiB decoded
    assert conn.receive_data(headers(enc, 1, big, end_stream=False)) == []
    reply = fr.FrameBuffer().feed(conn.data_to_send())
    assert hpack.Decoder().decode(reply[0][3], raw=True) == [(b":status", b"431")]
    assert rst_codes(b"".join(fr.frame(*f[:3], f[3]) for f in reply)) == [ErrorCode.NO_ERROR]
    assert conn.counters.headers_too_large == 1
    # The HPACK table stayed in step: indexed fields of the big block still resolve.
    events = conn.receive_data(headers(enc, 3, GET + [(b"x-big-0", b"v" * 4000)]))
    assert events[0][1].headers[-1] == (b"x-big-0", b"v" * 4000)
    assert conn.receive_data(fr.data_frame(1, b"late")) == []  # in flight after our reset


def test_oversized_response_head_resets_the_stream_for_the_client() -> None:
    conn = H2Connection(H2Config(client=True, max_header_list_size=1000))
    conn.receive_data(fr.settings_frame([]))
    sid = conn.send_request(RequestHead(b"GET", b"/", [(b"host", b"a")]), True)
    conn.data_to_send()
    events = conn.receive_data(
        headers(hpack.Encoder(), sid, [(b":status", b"200"), (b"x", b"v" * 2000)])
    )
    assert [(s, e.error_code, e.remote) for s, e in events if isinstance(e, StreamReset)] == [
        (sid, ErrorCode.PROTOCOL_ERROR, False)
    ]


def test_rapid_reset_closes_the_connection() -> None:
    conn, enc = server()
    wire = b"".join(
        headers(enc, sid, GET, end_stream=False) + fr.rst_stream_frame(sid, ErrorCode.CANCEL)
        for sid in range(1, 2 * 150, 2)
    )
    error = calm(conn, wire)
    assert conn.counters.rapid_reset == 1
    assert conn.counters.early_resets == 101
    assert len([e for _, e in error.events if isinstance(e, StreamReset)]) == 101


def test_a_client_that_cancels_some_requests_is_left_alone() -> None:
    conn, enc = server()
    for sid in range(1, 2 * 1000, 2):
        events = conn.receive_data(headers(enc, sid, GET, end_stream=False))
        assert isinstance(events[0][1], RequestHead)
        if sid % 5 == 1:  # two in five cancelled
            conn.receive_data(fr.rst_stream_frame(sid, ErrorCode.CANCEL))
        else:
            conn.receive_data(fr.data_frame(sid, b"", end_stream=True))
            conn.send_response(sid, ResponseHead(204, []), end_stream=True)
    assert conn.counters.early_resets == 200 and conn.counters.rapid_reset == 0


def test_refusing_a_flood_of_streams_counts_as_rapid_reset() -> None:
    conn, enc = server(max_concurrent_streams=1)
    wire = b"".join(headers(enc, sid, GET, end_stream=False) for sid in range(1, 2 * 150, 2))
    calm(conn, wire)
    assert conn.counters.refused_streams == 101


def test_continuation_flood_is_bounded() -> None:
    conn, enc = server()
    block = enc.encode(GET)
    wire = fr.frame(fr.HEADERS, 0, 1, block) + fr.continuation_frame(1, b"\x00" * 16384, False) * 8
    wire += fr.continuation_frame(1, b"\x00" * 16384, False)  # past 128 KiB
    calm(conn, wire)
    assert conn.counters.continuation_flood == 1


def test_empty_continuation_flood_is_refused() -> None:
    conn, enc = server()
    wire = fr.frame(fr.HEADERS, 0, 1, enc.encode(GET)) + fr.continuation_frame(1, b"", False) * 11
    calm(conn, wire)
    assert conn.counters.empty_frame_flood == 1


def test_empty_data_flood_is_refused_but_a_few_are_fine() -> None:
    conn, enc = server()
    conn.receive_data(
        headers(enc, 1, GET, end_stream=False) + fr.data_frame(1, b"") * 10 + fr.data_frame(1, b"x")
    )
    calm(conn, fr.data_frame(1, b"") * 11)
    assert conn.counters.empty_frame_flood == 1


def test_settings_flood_is_rate_limited() -> None:
    clock = Clock()
    conn, _ = server(clock)  # the preface's SETTINGS was one
    conn.receive_data(fr.settings_frame([]) * 99)
    clock.now = 10.0  # a window later, the budget is back
    conn.receive_data(fr.settings_frame([]) * 100)
    calm(conn, fr.settings_frame([]))
    assert conn.counters.settings_flood == 1


def test_idle_ping_flood_is_rate_limited_but_pings_with_traffic_are_free() -> None:
    clock = Clock()
    conn, enc = server(clock)
    for sid in range(1, 2 * 300, 2):  # a ping after each request: BDP probes, keepalives
        conn.receive_data(headers(enc, sid, GET) + fr.ping_frame(b"\0" * 8))
        conn.send_response(sid, ResponseHead(204, []), end_stream=True)
    conn.data_to_send()
    calm(conn, fr.ping_frame(b"\0" * 8) * 102)
    assert conn.counters.ping_flood == 1


def test_frame_claiming_a_huge_length_is_refused_before_buffering() -> None:
    conn, _ = server()
    with pytest.raises(H2ConnectionError) as info:
        conn.receive_data(b"\xff\xff\xff\x00\x00\x00\x00\x00\x01" + b"x" * 100)
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR


def test_buffered_input_never_exceeds_one_frame() -> None:
    conn, enc = server()
    conn.receive_data(headers(enc, 1, GET, end_stream=False))
    wire = fr.data_frame(1, b"x" * 16384) * 3
    for start in range(0, len(wire), 1000):
        conn.receive_data(wire[start : start + 1000])
        assert len(conn._frames) < 16384 + 9


def test_remembered_resets_are_bounded() -> None:
    conn, enc = server(remembered_resets=10, rapid_reset_window=10_000, max_early_resets=10_000)
    for sid in range(1, 2 * 50, 2):
        conn.receive_data(headers(enc, sid, GET))
        conn.reset_stream(sid)
    assert len(conn._reset_ids) == 10


def test_error_events_before_the_bad_frame_are_kept() -> None:
    conn, enc = server()
    with pytest.raises(H2ConnectionError) as info:
        conn.receive_data(headers(enc, 1, GET) + fr.data_frame(9, b"x"))
    assert [e for _, e in info.value.events][-1] is END_OF_STREAM


@given(
    st.lists(
        st.tuples(
            st.integers(0, 12), st.integers(0, 255), st.integers(0, 7), st.binary(max_size=64)
        ),
        max_size=20,
    )
)
@settings(max_examples=300, deadline=None)
def test_any_frames_give_events_or_a_connection_error_never_a_crash(frames) -> None:
    conn, enc = server()
    wire = headers(enc, 1, GET, end_stream=False) + b"".join(fr.frame(*f) for f in frames)
    try:
        conn.receive_data(wire)
    except H2ConnectionError:
        assert conn.receive_data(b"\0" * 100) == []


@given(st.binary(max_size=3000))
@settings(max_examples=300, deadline=None)
def test_any_bytes_give_events_or_a_connection_error_never_a_crash(data: bytes) -> None:
    conn, _ = server()
    try:
        conn.receive_data(data)
    except H2ConnectionError as exc:
        assert exc.code in iter(ErrorCode)
