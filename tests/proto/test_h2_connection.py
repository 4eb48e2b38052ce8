"""The HTTP/2 connection's behaviour, fed frames directly: states, flow control, control frames."""

from __future__ import annotations

import hpack
import pytest

from plait.proto.errors import ProtocolError
from plait.proto.events import (
    CHUNKED,
    END_OF_STREAM,
    LENGTH,
    NO_BODY,
    Data,
    RequestHead,
    ResponseHead,
)
from plait.proto.h2 import frames as fr
from plait.proto.h2.config import H2Config
from plait.proto.h2.connection import H2Connection
from plait.proto.h2.errors import (
    ErrorCode,
    H2ConnectionError,
    SendBufferFull,
    StreamUnavailable,
    TooManyStreams,
)
from plait.proto.h2.events import (
    GoAway,
    PingAcked,
    PingReceived,
    SettingsChanged,
    StreamReset,
    Trailers,
    WindowUpdated,
)
from plait.proto.h2.state import ENABLE_PUSH, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/up")]
OK = [(b":status", b"200")]


class Peer:
    """A hand-driven peer: writes frames with its own HPACK encoder, reads ours back."""

    def __init__(self, client: bool = True, settings: list[tuple[int, int]] | None = None) -> None:
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.preface = (fr.PREFACE if client else b"") + fr.settings_frame(settings or [])

    def headers(self, sid: int, fields, end_stream: bool = False) -> bytes:
        return fr.header_block_frames(sid, self.encoder.encode(fields), end_stream, 16384)

    @staticmethod
    def frames(data: bytes) -> list[fr.Frame]:
        return fr.FrameBuffer(1 << 24).feed(data)


def server(**kwargs) -> tuple[H2Connection, Peer]:
    conn = H2Connection(H2Config(**kwargs))
    peer = Peer()
    conn.receive_data(peer.preface)
    conn.data_to_send()
    return conn, peer


def client(**kwargs) -> tuple[H2Connection, Peer]:
    conn = H2Connection(H2Config(client=True, **kwargs))
    peer = Peer(client=False)
    conn.receive_data(peer.preface)
    conn.data_to_send()
    return conn, peer


def pair() -> tuple[H2Connection, H2Connection]:
    c, s = H2Connection(H2Config(client=True)), H2Connection(H2Config())
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    s.receive_data(c.data_to_send())
    return c, s


def types(data: bytes) -> list[int]:
    return [f[0] for f in Peer.frames(data)]


def only(events, cls):
    return [e for _, e in events if isinstance(e, cls)]


def goaway_code(data: bytes) -> int:
    (frame,) = [f for f in Peer.frames(data) if f[0] == fr.GOAWAY]
    return fr.parse_goaway(frame[3])[1]


# preface and settings ----------------------------------------------------------------------


def test_client_preface_is_magic_then_settings() -> None:
    data = H2Connection(H2Config(client=True)).data_to_send()
    assert data.startswith(fr.PREFACE)
    settings = dict(fr.parse_settings(0, Peer.frames(data[24:])[0][3]))
    assert settings[ENABLE_PUSH] == 0 and settings[0x3] == 100 and settings[0x6] == 65536


def test_bad_preface_is_a_connection_error_with_goaway() -> None:
    conn = H2Connection(H2Config())
    conn.data_to_send()
    with pytest.raises(H2ConnectionError):
        conn.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert goaway_code(conn.data_to_send()) == ErrorCode.PROTOCOL_ERROR
    assert conn.receive_data(b"more") == []  # dead: ignores the rest


def test_preface_may_arrive_byte_by_byte() -> None:
    conn = H2Connection(H2Config())
    peer = Peer()
    events = []
    for byte in peer.preface + peer.headers(1, GET, True):
        events += conn.receive_data(bytes([byte]))
    assert isinstance(events[-2][1], RequestHead) and events[-1] == (1, END_OF_STREAM)


def test_first_frame_must_be_settings() -> None:
    conn = H2Connection(H2Config())
    with pytest.raises(H2ConnectionError):
        conn.receive_data(fr.PREFACE + fr.ping_frame(b"\0" * 8))


def test_settings_are_applied_and_acknowledged() -> None:
    conn, peer = client()
    events = conn.receive_data(
        fr.settings_frame([(INITIAL_WINDOW_SIZE, 10), (MAX_FRAME_SIZE, 20000)])
    )
    assert only(events, SettingsChanged)[0].changes == {
        INITIAL_WINDOW_SIZE: 10,
        MAX_FRAME_SIZE: 20000,
    }
    assert fr.SETTINGS in types(conn.data_to_send())
    assert conn.remote_initial_window == 10 and conn.remote_max_frame_size == 20000


@pytest.mark.parametrize(
    ("setting", "code"),
    [
        ((MAX_FRAME_SIZE, 100), ErrorCode.PROTOCOL_ERROR),
        ((INITIAL_WINDOW_SIZE, 2**31), ErrorCode.FLOW_CONTROL_ERROR),
        ((ENABLE_PUSH, 1), ErrorCode.PROTOCOL_ERROR),  # a server may not offer push to us
    ],
)
def test_invalid_settings_are_connection_errors(setting, code) -> None:
    conn, _ = client()
    with pytest.raises(H2ConnectionError) as info:
        conn.receive_data(fr.settings_frame([setting]))
    assert info.value.code == code


# requests and responses ---------------------------------------------------------------------


def test_request_and_response_between_two_of_ours() -> None:
    c, s = pair()
    sid = c.send_request(
        RequestHead(
            b"POST", b"/a?b", [(b"host", b"svc:80"), (b"connection", b"x-hop"), (b"x-hop", b"1")]
        ),
    )
    c.send_data(sid, b"hello", end_stream=True)
    events = s.receive_data(c.data_to_send())
    head = events[0][1]
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.version, head.framing) == (
        b"POST",
        b"/a?b",
        b"2",
        CHUNKED,
    )
    assert head.headers == [(b"host", b"svc:80")]  # connection-specific fields dropped (8.2.2)
    assert [e for _, e in events[1:]] == [events[1][1], END_OF_STREAM]
    assert events[1][1].data == b"hello"
    s.send_response(sid, ResponseHead(200, [(b"content-length", b"2")]))
    s.send_data(sid, b"ok", end_stream=True)
    events = c.receive_data(s.data_to_send())
    resp = events[0][1]
    assert isinstance(resp, ResponseHead) and resp.status == 200 and resp.framing == LENGTH
    assert c.open_streams == 0 and s.open_streams == 0


def test_request_fields_put_authority_from_host() -> None:
    conn, peer = client()
    conn.send_request(
        RequestHead(b"GET", b"/x", [(b"host", b"h:1"), (b"te", b"gzip"), (b"accept", b"*/*")]), True
    )
    block = Peer.frames(conn.data_to_send())[0][3]
    assert peer.decoder.decode(block, raw=True) == [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", b"h:1"),
        (b":path", b"/x"),
        (b"accept", b"*/*"),
    ]


def test_informational_then_final_response_then_trailers() -> None:
    conn, peer = client()
    sid = conn.send_request(RequestHead(b"GET", b"/", [(b"host", b"a")]), True)
    wire = peer.headers(sid, [(b":status", b"103"), (b"link", b"<x>")])
    wire += peer.headers(sid, OK + [(b"grpc-encoding", b"identity")])
    wire += fr.data_frame(sid, b"body")
    wire += peer.headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    events = [e for _, e in conn.receive_data(wire)]
    assert [type(e).__name__ for e in events] == [
        "ResponseHead",
        "ResponseHead",
        "Data",
        "Trailers",
        "EndOfStream",
    ]
    assert events[0].status == 103 and events[1].status == 200
    assert events[3].headers == [(b"grpc-status", b"0")]


def test_trailers_without_end_stream_reset_the_stream() -> None:
    conn, peer = server()
    events = conn.receive_data(peer.headers(1, POST) + peer.headers(1, [(b"x-t", b"1")]))
    assert only(events, StreamReset)[0].error_code == ErrorCode.PROTOCOL_ERROR
    assert fr.RST_STREAM in types(conn.data_to_send())


def test_head_response_may_announce_a_length_it_lacks() -> None:
    conn, peer = client()
    sid = conn.send_request(RequestHead(b"HEAD", b"/", [(b"host", b"a")]), True)
    events = conn.receive_data(
        peer.headers(sid, OK + [(b"content-length", b"100")], end_stream=True)
    )
    assert events[-1] == (sid, END_OF_STREAM)
    assert only(events, ResponseHead)[0].framing == NO_BODY


@pytest.mark.parametrize("body", [b"abc", b"abcdef"])
def test_body_not_matching_content_length_resets_the_stream(body: bytes) -> None:
    conn, peer = server()
    wire = peer.headers(1, POST + [(b"content-length", b"5")]) + fr.data_frame(1, body, True)
    events = conn.receive_data(wire)
    assert only(events, StreamReset)[0].error_code == ErrorCode.PROTOCOL_ERROR
    assert END_OF_STREAM not in [e for _, e in events]


def test_continuation_frames_are_reassembled() -> None:
    conn, peer = server()
    block = peer.encoder.encode(GET + [(b"x-big", b"v" * 40_000)])
    wire = fr.frame(fr.HEADERS, fr.FLAG_END_STREAM, 1, block[:10])
    for start in range(10, len(block), 7000):
        last = start + 7000 >= len(block)
        wire += fr.continuation_frame(1, block[start : start + 7000], last)
    events = conn.receive_data(wire)
    assert only(events, RequestHead)[0].headers[-1] == (b"x-big", b"v" * 40_000)


def test_a_frame_inside_a_header_block_is_a_connection_error() -> None:
    conn, peer = server()
    block = peer.encoder.encode(GET)
    with pytest.raises(H2ConnectionError):
        conn.receive_data(fr.frame(fr.HEADERS, 0, 1, block[:2]) + fr.ping_frame(b"\0" * 8))


def test_padding_is_credited_back_at_once() -> None:
    conn, peer = server(initial_window_size=100, connection_window_size=65535)
    conn.receive_data(fr.settings_frame([]) + fr.frame(fr.SETTINGS, fr.FLAG_ACK, 0, b""))
    events = conn.receive_data(peer.headers(1, POST) + fr.data_frame(1, b"x", pad=80))
    assert only(events, Data)[0].data == b"x"
    updates = [
        f for f in Peer.frames(conn.data_to_send()) if f[0] == fr.WINDOW_UPDATE and f[2] == 1
    ]
    assert fr.parse_window_update(updates[0][3]) == 81


# stream states ------------------------------------------------------------------------------


def test_data_on_an_idle_stream_is_a_connection_error() -> None:
    conn, _ = server()
    with pytest.raises(H2ConnectionError) as info:
        conn.receive_data(fr.data_frame(5, b"x"))
    assert info.value.code == ErrorCode.PROTOCOL_ERROR


def test_even_stream_from_a_client_is_a_connection_error() -> None:
    conn, peer = server()
    with pytest.raises(H2ConnectionError):
        conn.receive_data(peer.headers(2, GET, True))


def test_data_after_end_stream_is_stream_closed() -> None:
    conn, peer = server()
    events = conn.receive_data(peer.headers(1, GET, True) + fr.data_frame(1, b"late"))
    assert only(events, StreamReset)[0].error_code == ErrorCode.STREAM_CLOSED
    assert conn.counters.stream_errors == 1


def test_frames_in_flight_after_our_reset_are_ignored() -> None:
    conn, peer = server()
    conn.receive_data(peer.headers(1, POST))
    conn.reset_stream(1)
    assert types(conn.data_to_send()) == [fr.RST_STREAM]
    assert (
        conn.receive_data(fr.data_frame(1, b"late") + peer.headers(1, [(b"x", b"y")], True)) == []
    )
    assert conn.data_to_send() == b""  # nothing more than the connection window credit: none yet


def test_peer_reset_is_reported() -> None:
    conn, peer = server()
    events = conn.receive_data(peer.headers(1, POST) + fr.rst_stream_frame(1, ErrorCode.CANCEL))
    assert (
        events[-1][0] == 1 and events[-1][1].error_code == ErrorCode.CANCEL and events[-1][1].remote
    )
    assert conn.counters.early_resets == 1 and conn.open_streams == 0


def test_sending_on_a_finished_stream_is_refused_locally() -> None:
    conn, peer = server()
    conn.receive_data(peer.headers(1, GET, True))
    conn.send_headers(1, OK, end_stream=True)
    with pytest.raises(StreamUnavailable):
        conn.send_data(1, b"more")
    with pytest.raises(StreamUnavailable):
        conn.reset_stream(7)


def test_push_promise_is_refused() -> None:
    conn, peer = client()
    conn.send_request(RequestHead(b"GET", b"/", [(b"host", b"a")]), True)
    with pytest.raises(H2ConnectionError):
        conn.receive_data(
            fr.header_block_frames(
                1, b"\0\0\0\x02" + peer.encoder.encode(GET), False, 16384, fr.PUSH_PROMISE
            )
        )


def test_unknown_frames_and_priority_are_ignored() -> None:
    conn, peer = server()
    events = conn.receive_data(
        fr.frame(0xBE, 0, 1, b"ext") + fr.priority_frame(9, 0, 15) + peer.headers(1, GET, True)
    )
    assert isinstance(events[0][1], RequestHead)


# control frames -----------------------------------------------------------------------------


def test_ping_is_answered_and_ours_acknowledged() -> None:
    conn, _ = server()
    events = conn.receive_data(fr.ping_frame(b"12345678"))
    assert only(events, PingReceived)[0].opaque == b"12345678"
    assert conn.data_to_send() == fr.ping_frame(b"12345678", ack=True)
    conn.ping(b"abcdefgh")
    assert conn.data_to_send() == fr.ping_frame(b"abcdefgh")
    assert (
        only(conn.receive_data(fr.ping_frame(b"abcdefgh", ack=True)), PingAcked)[0].opaque
        == b"abcdefgh"
    )


def test_goaway_refuses_streams_above_the_last_one() -> None:
    conn, peer = client()
    ids = [conn.send_request(RequestHead(b"GET", b"/", [(b"host", b"a")]), True) for _ in range(3)]
    events = conn.receive_data(fr.goaway_frame(ids[0], ErrorCode.NO_ERROR, b"bye"))
    assert only(events, GoAway)[0].last_stream_id == ids[0]
    refused = [(sid, e.error_code) for sid, e in events if isinstance(e, StreamReset)]
    assert refused == [(ids[1], ErrorCode.REFUSED_STREAM), (ids[2], ErrorCode.REFUSED_STREAM)]
    assert not conn.can_open_stream()
    with pytest.raises(StreamUnavailable):
        conn.send_request(RequestHead(b"GET", b"/", [(b"host", b"a")]), True)
    # The stream below the line still completes.
    events = conn.receive_data(peer.headers(ids[0], OK, True))
    assert events[-1] == (ids[0], END_OF_STREAM)


def test_our_goaway_ignores_newer_streams() -> None:
    conn, peer = server()
    conn.receive_data(peer.headers(1, GET, True))
    conn.close()
    assert fr.parse_goaway(Peer.frames(conn.data_to_send())[0][3])[:2] == (1, 0)
    assert conn.receive_data(peer.headers(3, GET, True) + fr.data_frame(3, b"x")) == []


def test_client_respects_the_peers_stream_limit() -> None:
    conn, _ = client()
    conn.receive_data(fr.settings_frame([(0x3, 2)]))
    for _ in range(2):
        conn.send_request(RequestHead(b"GET", b"/", [(b"host", b"a")]), True)
    assert not conn.can_open_stream()
    with pytest.raises(TooManyStreams):
        conn.send_request(RequestHead(b"GET", b"/", [(b"host", b"a")]), True)


# flow control -------------------------------------------------------------------------------


def test_slow_reader_slows_the_writer_and_the_queue_is_bounded() -> None:
    c, s = pair()
    sid = c.send_request(RequestHead(b"GET", b"/", [(b"host", b"a")]), True)
    s.receive_data(c.data_to_send())
    s.send_response(sid, ResponseHead(200, []))
    queued = s.send_data(sid, b"x" * 600_000)
    assert queued == 600_000 - 256 * 1024  # the stream window (our client's SETTINGS)
    assert s.send_window(sid) == 0
    received = sum(len(e.data) for e in only(c.receive_data(s.data_to_send()), Data))
    assert received == 256 * 1024
    # Not acknowledged: WINDOW_UPDATE never comes, nothing more is sent.
    assert s.receive_data(c.data_to_send()) == [] and s.data_to_send() == b""
    with pytest.raises(SendBufferFull):
        s.send_data(sid, b"y" * (1024 * 1024))
    # Consuming it lets the rest through, window by window.
    total = received
    while total < 600_000:
        c.acknowledge_received_data(sid, received)
        events = s.receive_data(c.data_to_send())
        assert only(events, WindowUpdated)
        received = sum(len(e.data) for e in only(c.receive_data(s.data_to_send()), Data))
        assert received
        total += received
    assert s.buffered_outbound(sid) == 0


def test_window_updates_wait_for_half_a_window() -> None:
    conn, peer = server(initial_window_size=1000, connection_window_size=65535)
    conn.receive_data(fr.frame(fr.SETTINGS, fr.FLAG_ACK, 0, b""))
    conn.receive_data(peer.headers(1, POST) + fr.data_frame(1, b"x" * 600))
    conn.acknowledge_received_data(1, 400)
    assert conn.data_to_send() == b""
    conn.acknowledge_received_data(1, 200)
    assert fr.parse_window_update(Peer.frames(conn.data_to_send())[0][3]) == 600


def test_data_beyond_the_stream_window_is_a_stream_error() -> None:
    conn, peer = server()
    wire = peer.headers(1, POST) + fr.data_frame(1, b"x" * 16384) * 4 + fr.data_frame(1, b"x" * 100)
    events = conn.receive_data(wire)  # 65,636 bytes against the default 65,535 before our ACK
    assert only(events, StreamReset)[0].error_code == ErrorCode.FLOW_CONTROL_ERROR


def test_eager_connection_credit_leaves_backpressure_to_the_streams() -> None:
    """A proxy's connections return connection credit on receipt: bodies nobody has read yet
    (slow readers behind five streams) hold their own stream windows, never the connection."""
    conn, peer = server(
        initial_window_size=20000, connection_window_size=65535, eager_connection_credit=True
    )
    conn.receive_data(fr.frame(fr.SETTINGS, fr.FLAG_ACK, 0, b""))
    wire = b"".join(peer.headers(i, POST) + fr.data_frame(i, b"x" * 16000) for i in (1, 3, 5, 7, 9))
    events = conn.receive_data(wire)  # 80,000 bytes, none consumed: no FLOW_CONTROL_ERROR
    assert len(only(events, Data)) == 5
    sent = Peer.frames(conn.data_to_send())
    assert [f for f in sent if f[0] == fr.WINDOW_UPDATE and f[2] == 0]  # connection credit
    assert not [f for f in sent if f[0] == fr.WINDOW_UPDATE and f[2] != 0]  # streams: none
    conn.acknowledge_received_data(1, 16000)  # consuming credits the stream only
    (update,) = [f for f in Peer.frames(conn.data_to_send()) if f[0] == fr.WINDOW_UPDATE]
    assert update[2] == 1 and fr.parse_window_update(update[3]) == 16000


def test_data_beyond_the_connection_window_is_a_connection_error() -> None:
    conn, peer = server(connection_window_size=65535)
    wire = b"".join(peer.headers(i, POST) + fr.data_frame(i, b"x" * 16000) for i in (1, 3, 5, 7, 9))
    with pytest.raises(H2ConnectionError) as info:
        conn.receive_data(wire)
    assert info.value.code == ErrorCode.FLOW_CONTROL_ERROR
    assert len(only(info.value.events, RequestHead)) == 5  # what came before, for the caller


def test_trailers_wait_behind_queued_data_and_hpack_stays_in_step() -> None:
    c, s = pair()
    s1 = c.send_request(RequestHead(b"GET", b"/1", [(b"host", b"a")]), True)
    s2 = c.send_request(RequestHead(b"GET", b"/2", [(b"host", b"a")]), True)
    s.receive_data(c.data_to_send())
    s.send_response(s1, ResponseHead(200, []))
    s.send_data(s1, b"x" * 300_000)
    s.send_trailers(s1, [(b"grpc-status", b"0"), (b"x-new", b"literal")])
    s.send_response(s2, ResponseHead(200, [(b"x-other", b"literal-2")]), end_stream=True)
    events = c.receive_data(s.data_to_send())
    assert not only(events, Trailers)
    while s.buffered_outbound(s1):
        for sid, e in events:
            if isinstance(e, Data):
                c.acknowledge_received_data(sid, len(e.data))
        s.receive_data(c.data_to_send())
        events += c.receive_data(s.data_to_send())
    assert only(events, Trailers)[0].headers == [(b"grpc-status", b"0"), (b"x-new", b"literal")]
    assert only(events, ResponseHead)[1].headers == [(b"x-other", b"literal-2")]


def test_peer_lowering_its_window_makes_ours_negative() -> None:
    conn, peer = server()
    conn.receive_data(peer.headers(1, GET, True))
    conn.send_headers(1, OK)
    conn.send_data(1, b"x" * 60_000)
    conn.receive_data(fr.settings_frame([(INITIAL_WINDOW_SIZE, 1000)]))
    assert conn.send_window(1) == 0 and conn._streams[1].send_window == 1000 - 60_000
    assert conn.send_data(1, b"y" * 10) == 10  # queued until the window is positive again


# the peer's errors, frame by frame ----------------------------------------------------------

_PEER = Peer()
_SELF_DEP = fr.frame(
    fr.HEADERS, fr.FLAG_END_HEADERS | fr.FLAG_PRIORITY | fr.FLAG_END_STREAM, 3, b"\0\0\0\x03\x10"
)
BAD_FRAMES = {
    "DATA on stream 0": (fr.data_frame(0, b"x"), "conn", ErrorCode.PROTOCOL_ERROR),
    "HEADERS on stream 0": (fr.frame(fr.HEADERS, 4, 0, b"\x82"), "conn", ErrorCode.PROTOCOL_ERROR),
    "RST_STREAM on stream 0": (fr.rst_stream_frame(0, 8), "conn", ErrorCode.PROTOCOL_ERROR),
    "PRIORITY on stream 0": (fr.priority_frame(0, 1, 1), "conn", ErrorCode.PROTOCOL_ERROR),
    "CONTINUATION alone": (
        fr.continuation_frame(1, b"\x82", True),
        "conn",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "SETTINGS on a stream": (fr.frame(fr.SETTINGS, 0, 1, b""), "conn", ErrorCode.PROTOCOL_ERROR),
    "PING on a stream": (fr.frame(fr.PING, 0, 1, b"\0" * 8), "conn", ErrorCode.PROTOCOL_ERROR),
    "GOAWAY on a stream": (fr.frame(fr.GOAWAY, 0, 1, b"\0" * 8), "conn", ErrorCode.PROTOCOL_ERROR),
    "WINDOW_UPDATE 0 on the connection": (
        fr.window_update_frame(0, 0),
        "conn",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "connection window overflow": (
        fr.window_update_frame(0, 2**31 - 1),
        "conn",
        ErrorCode.FLOW_CONTROL_ERROR,
    ),
    "WINDOW_UPDATE on an idle stream": (
        fr.window_update_frame(9, 1),
        "conn",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "RST_STREAM on an idle stream": (fr.rst_stream_frame(9, 8), "conn", ErrorCode.PROTOCOL_ERROR),
    "WINDOW_UPDATE 0 on a stream": (fr.window_update_frame(1, 0), "rst", ErrorCode.PROTOCOL_ERROR),
    "stream window overflow": (
        fr.window_update_frame(1, 2**31 - 1),
        "rst",
        ErrorCode.FLOW_CONTROL_ERROR,
    ),
    "new stream depends on itself": (_SELF_DEP, "rst", ErrorCode.PROTOCOL_ERROR),
    "bad PRIORITY length": (
        fr.frame(fr.PRIORITY, 0, 1, b"\0" * 4),
        "rst",
        ErrorCode.FRAME_SIZE_ERROR,
    ),
}


@pytest.mark.parametrize(("wire", "kind", "code"), list(BAD_FRAMES.values()), ids=list(BAD_FRAMES))
def test_peer_errors_get_the_rfc_answer(wire: bytes, kind: str, code: int) -> None:
    conn, peer = server()
    conn.receive_data(peer.headers(1, POST))
    conn.send_headers(1, OK)
    conn.data_to_send()
    if kind == "conn":
        with pytest.raises(H2ConnectionError) as info:
            conn.receive_data(wire)
        assert info.value.code == code
        assert goaway_code(conn.data_to_send()) == code
    else:
        conn.receive_data(wire)
        resets = [
            fr.parse_rst_stream(f[3])
            for f in Peer.frames(conn.data_to_send())
            if f[0] == fr.RST_STREAM
        ]
        assert resets == [code]


def test_headers_on_a_closed_stream_are_stream_closed() -> None:
    conn, peer = server()
    conn.receive_data(peer.headers(1, GET, True))
    conn.send_headers(1, OK, end_stream=True)
    conn.data_to_send()
    conn.receive_data(peer.headers(1, [(b"x", b"y")], True))
    assert [f[0] for f in Peer.frames(conn.data_to_send())] == [fr.RST_STREAM]
    assert conn.counters.stream_errors == 1


@pytest.mark.parametrize(
    "wire",
    [
        lambda p, sid: fr.data_frame(sid, b"before the head"),
        lambda p, sid: p.headers(sid, [(b":status", b"100")], end_stream=True),
        lambda p, sid: p.headers(sid, [(b":status", b"101")]),
        lambda p, sid: p.headers(sid, [(b":status", b"2000")]),
        lambda p, sid: p.headers(sid, [(b"x-no-status", b"1")]),
        lambda p, sid: p.headers(sid, [(b":status", b"200"), (b":path", b"/")]),
        lambda p, sid: p.headers(sid, [(b":status", b"200"), (b"content-length", b"x")]),
        lambda p, sid: p.headers(
            sid, [(b":status", b"200"), (b"content-length", b"1"), (b"content-length", b"2")]
        ),
    ],
    ids=[
        "data first",
        "1xx ends",
        "101",
        "4-digit status",
        "no status",
        "request pseudo",
        "bad length",
        "two lengths",
    ],
)
def test_malformed_responses_reset_the_stream_for_the_client(wire) -> None:
    conn, peer = client()
    sid = conn.send_request(RequestHead(b"GET", b"/", [(b"host", b"a")]), True)
    events = conn.receive_data(wire(peer, sid))
    assert [(s, e.error_code, e.remote) for s, e in events if isinstance(e, StreamReset)] == [
        (sid, ErrorCode.PROTOCOL_ERROR, False)
    ]
    assert conn.open_streams == 0


def test_connect_requests_use_the_authority_as_target() -> None:
    conn, peer = server()
    events = conn.receive_data(
        peer.headers(1, [(b":method", b"CONNECT"), (b":authority", b"db:5432")])
    )
    head = events[0][1]
    assert (head.method, head.target, head.headers) == (
        b"CONNECT",
        b"db:5432",
        [(b"host", b"db:5432")],
    )
    c, _ = client()
    c.send_request(RequestHead(b"CONNECT", b"db:5432", []))
    assert Peer().decoder.decode(Peer.frames(c.data_to_send())[0][3], raw=True) == [
        (b":method", b"CONNECT"),
        (b":authority", b"db:5432"),
    ]


def test_local_misuse_is_refused() -> None:
    conn, peer = client()
    with pytest.raises(StreamUnavailable):
        conn.send_headers(4, GET)  # a server's stream id
    sid = conn.send_request(RequestHead(b"POST", b"/", [(b"host", b"a")]))
    conn.send_data(sid, b"x" * 100_000)  # 65,535 go, the rest waits
    with pytest.raises(StreamUnavailable):
        conn.send_headers(sid, [(b"x-late", b"1")])
    conn.end_stream(sid)
    with pytest.raises(StreamUnavailable):
        conn.send_data(sid, b"more")
    conn.close(ErrorCode.INTERNAL_ERROR)
    with pytest.raises(StreamUnavailable):
        conn.send_request(RequestHead(b"GET", b"/", [(b"host", b"a")]))


def test_public_api_is_exactly_this() -> None:
    import plait.proto.h2 as package
    from plait.proto.h2 import errors

    assert sorted(package.__all__) == [
        "ErrorCode",
        "GoAway",
        "H2Config",
        "H2Connection",
        "H2ConnectionError",
        "H2Error",
        "H2StreamError",
        "LocalError",
        "PingAcked",
        "PingReceived",
        "SendBufferFull",
        "SettingsChanged",
        "StreamReset",
        "StreamUnavailable",
        "TooManyStreams",
        "Trailers",
        "WindowUpdated",
    ]
    assert sorted(errors.__all__) == [
        "CompressionError",
        "ErrorCode",
        "H2ConnectionError",
        "H2Error",
        "H2StreamError",
        "HeaderListTooLarge",
        "LocalError",
        "SendBufferFull",
        "StreamUnavailable",
        "TooManyStreams",
    ]
    assert issubclass(errors.H2Error, ProtocolError)
