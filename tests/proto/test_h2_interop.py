"""Our HTTP/2 connection against the `h2` library, the reference: same bytes, same meaning.

Each property runs one generated exchange (header lists with repeated names and Huffman-worthy
values, bodies cut at random points, trailers, resets, streams interleaved) twice, with one
side swapped between h2 and ours, and compares what comes out, normalised to one shape:
per stream, a list of ("head", ...), ("data", bytes), ("trailers", ...), ("end",), ("reset",).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
import hyperframe.exceptions
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plait.proto.events import END_OF_STREAM, Data, RequestHead, ResponseHead
from plait.proto.h2 import frames as fr
from plait.proto.h2.config import H2Config
from plait.proto.h2.connection import H2Connection
from plait.proto.h2.errors import H2ConnectionError
from plait.proto.h2.events import StreamReset, Trailers
from plait.proto.h2.frames import RST_STREAM, FrameBuffer, parse_rst_stream

Fields = list[tuple[bytes, bytes]]
Normal = dict[int, list[tuple]]

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference(client: bool, validate: bool = True) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(
        client_side=client,
        header_encoding=None,
        validate_outbound_headers=validate,
        normalize_outbound_headers=validate,
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    return conn


# generated exchanges -----------------------------------------------------------------------

TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789-"
VISIBLE = "".join(map(chr, range(0x21, 0x7F)))
names = st.sampled_from(
    [b"accept", b"user-agent", b"x-trace", b"cookie", b"x-b3-spanid"]
) | st.text(TOKEN, min_size=1, max_size=12).map(lambda s: b"x-" + s.encode())
values = (
    st.text(TOKEN + "/.=; ", max_size=60).map(str.encode)  # Huffman-worthy
    | st.text(VISIBLE + " ", max_size=40).map(str.encode)
).map(lambda v: v.strip(b" "))
# Empty cookies are left out: h2 joins them into "; " and then refuses its own result.
fields = st.tuples(names, values).map(lambda f: (f[0], f[1] or b"c") if f[0] == b"cookie" else f)
header_lists = st.lists(fields, max_size=6)
bodies = st.lists(st.binary(min_size=1, max_size=3000), max_size=4)
codes = st.sampled_from([0x8, 0x2, 0x0])  # CANCEL, INTERNAL_ERROR, NO_ERROR


@dataclass
class Message:
    """One side of one stream: a head, a body in pieces, maybe trailers, maybe a reset."""

    head: Fields
    chunks: list[bytes]
    trailers: Fields | None
    reset: int | None  # RST_STREAM code, sent after `reset_at` body ops
    reset_at: int = 0
    informational: bool = False

    def ops(self) -> list[tuple]:
        body: list[tuple] = [("data", c) for c in self.chunks]
        if self.trailers is not None:
            body.append(("trailers", self.trailers))
        elif self.chunks:
            body.append(("end",))
        if self.reset is not None:  # in place of whatever would have ended the stream
            body = body[: min(self.reset_at, max(len(body) - 1, 0))] + [("reset", self.reset)]
        return [("head", self.head, not body), *body]


@st.composite
def requests(draw: st.DrawFn) -> Message:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT"]))
    path = b"/" + draw(st.text(TOKEN + "/?=&", max_size=30)).encode()
    chunks = draw(bodies)
    extra = draw(header_lists)
    reset = draw(st.none() | codes)
    if reset is None and chunks and draw(st.booleans()):
        extra.append((b"content-length", b"%d" % sum(map(len, chunks))))
    head = [
        (b":method", method),
        (b":scheme", b"http"),
        (b":authority", b"svc.ns:8080"),
        (b":path", path),
    ]
    trailers = draw(st.none() | st.lists(fields, min_size=1, max_size=3))
    return Message(head + extra, chunks, trailers, reset, draw(st.integers(0, 5)))


@st.composite
def responses(draw: st.DrawFn) -> Message:
    status = draw(st.sampled_from([200, 201, 404, 500, 503]))
    chunks = draw(bodies)
    extra = draw(header_lists)
    trailers = draw(st.none() | st.lists(fields, min_size=1, max_size=3))
    reset = draw(st.none() | codes)
    head = [(b":status", b"%d" % status)] + extra
    return Message(head, chunks, trailers, reset, draw(st.integers(0, 5)), draw(st.booleans()))


@st.composite
def schedules(
    draw: st.DrawFn, messages: st.SearchStrategy[Message]
) -> tuple[list[Message], list[int]]:
    """Messages and an interleaving of their ops (each stream keeps its own order)."""
    msgs = draw(st.lists(messages, min_size=1, max_size=4))
    labels = [i for i, m in enumerate(msgs) for _ in m.ops()]
    return msgs, draw(st.permutations(labels))


cuts = st.lists(st.integers(0, 200_000), max_size=6)


def chunked(data: bytes, at: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in at}) + [len(data)]
    out, start = [], 0
    for p in points:
        out.append(data[start:p])
        start = p
    return out


# drivers: one API over h2 and ours ----------------------------------------------------------


class OursSide:
    def __init__(self, client: bool) -> None:
        self.conn = H2Connection(H2Config(client=client))

    def open(self, fields: Fields, end: bool) -> int:
        sid = self.conn.next_stream_id
        self.conn.send_headers(sid, fields, end)
        return sid

    def head(self, sid: int, fields: Fields, end: bool) -> None:
        self.conn.send_headers(sid, fields, end)

    def data(self, sid: int, chunk: bytes) -> None:
        self.conn.send_data(sid, chunk)

    def trailers(self, sid: int, fields: Fields) -> None:
        self.conn.send_trailers(sid, fields)

    def end(self, sid: int) -> None:
        self.conn.end_stream(sid)

    def reset(self, sid: int, code: int) -> None:
        self.conn.reset_stream(sid, code)

    def out(self) -> bytes:
        return self.conn.data_to_send()

    def feed(self, data: bytes, normal: Normal) -> None:
        for sid, event in self.conn.receive_data(data):
            if isinstance(event, Data):
                self.conn.acknowledge_received_data(sid, len(event.data))
            note(normal, sid, ours_event(event))


class H2Side:
    def __init__(self, client: bool, validate: bool = True) -> None:
        self.conn = reference(client, validate)

    def open(self, fields: Fields, end: bool) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, fields, end_stream=end)
        return sid

    def head(self, sid: int, fields: Fields, end: bool) -> None:
        self.conn.send_headers(sid, fields, end_stream=end)

    def data(self, sid: int, chunk: bytes) -> None:
        self.conn.send_data(sid, chunk)

    def trailers(self, sid: int, fields: Fields) -> None:
        self.conn.send_headers(sid, fields, end_stream=True)

    def end(self, sid: int) -> None:
        self.conn.end_stream(sid)

    def reset(self, sid: int, code: int) -> None:
        self.conn.reset_stream(sid, code)

    def out(self) -> bytes:
        return self.conn.data_to_send()

    def feed(self, data: bytes, normal: Normal) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            sid = getattr(event, "stream_id", 0)
            note(normal, sid, h2_event(event))


def note(normal: Normal, sid: int, item: tuple | None) -> None:
    if item is None:
        return
    seq = normal.setdefault(sid, [])
    if item[0] == "data":
        if not item[1]:
            return
        if seq and seq[-1][0] == "data":
            seq[-1] = ("data", seq[-1][1] + item[1])
            return
    seq.append(item)


def ours_event(event: object) -> tuple | None:
    if isinstance(event, RequestHead):
        return ("head", event.method, event.target, event.headers)
    if isinstance(event, ResponseHead):
        return ("head", event.status, event.headers)
    if isinstance(event, Data):
        return ("data", event.data)
    if isinstance(event, Trailers):
        return ("trailers", event.headers)
    if event is END_OF_STREAM:
        return ("end",)
    if isinstance(event, StreamReset):
        return ("reset", event.error_code)
    return None


def h2_event(event: h2.events.Event) -> tuple | None:
    if isinstance(event, h2.events.RequestReceived):
        return request_like_ours(event.headers)
    if isinstance(event, h2.events.ResponseReceived | h2.events.InformationalResponseReceived):
        fields = [tuple(map(bytes, f)) for f in event.headers]
        return ("head", int(fields[0][1]), fields[1:])
    if isinstance(event, h2.events.DataReceived):
        return ("data", event.data)
    if isinstance(event, h2.events.TrailersReceived):
        return ("trailers", [tuple(map(bytes, f)) for f in event.headers])
    if isinstance(event, h2.events.StreamEnded):
        return ("end",)
    if isinstance(event, h2.events.StreamReset):
        return ("reset", int(event.error_code))
    return None


def request_like_ours(headers: list) -> tuple:
    """h2's raw list as our RequestHead has it: pseudo-header fields out, host from :authority."""
    pseudo = {bytes(n): bytes(v) for n, v in headers if n.startswith(b":")}
    regular = [(bytes(n), bytes(v)) for n, v in headers if not n.startswith(b":")]
    if b":authority" in pseudo and not any(n == b"host" for n, _ in regular):
        regular.insert(0, (b"host", pseudo[b":authority"]))
    return ("head", pseudo[b":method"], pseudo[b":path"], regular)


# exchanges --------------------------------------------------------------------------------


@dataclass
class Run:
    wire: bytes = b""
    ids: list[int] = field(default_factory=list)


def play(
    side: H2Side | OursSide, msgs: list[Message], order: list[int], ids: list[int] | None
) -> Run:
    """Perform the interleaved ops; `ids` given means the streams exist (a server replying)."""
    run = Run(ids=list(ids) if ids else [0] * len(msgs))
    ops = [m.ops() for m in msgs]
    wire = []
    for label in order:
        op = ops[label].pop(0)
        if op[0] == "head":
            if ids is None:
                run.ids[label] = side.open(op[1], op[2])
            else:
                if msgs[label].informational:
                    side.head(run.ids[label], [(b":status", b"103"), (b"link", b"</a.css>")], False)
                side.head(run.ids[label], op[1], op[2])
        elif op[0] == "data":
            side.data(run.ids[label], op[1])
        elif op[0] == "trailers":
            side.trailers(run.ids[label], op[1])
        elif op[0] == "end":
            side.end(run.ids[label])
        else:
            side.reset(run.ids[label], op[1])
        wire.append(side.out())
    run.wire = b"".join(wire)
    return run


def receive(side: H2Side | OursSide, wire: bytes, at: list[int]) -> Normal:
    normal: Normal = {}
    for piece in chunked(wire, at):
        side.feed(piece, normal)
    return normal


def simple_gets(n: int) -> list[Fields]:
    return [
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/%d" % i)]
        for i in range(n)
    ]


# properties -------------------------------------------------------------------------------


@given(schedules(requests()), cuts)
@SETTINGS
def test_requests_from_h2_read_the_same_by_both_servers(schedule, at) -> None:
    msgs, order = schedule
    wire = play(H2Side(client=True), msgs, order, None).wire
    assert receive(OursSide(client=False), wire, at) == receive(H2Side(client=False), wire, at)


@given(schedules(requests()), cuts)
@SETTINGS
def test_requests_we_send_read_by_h2_as_h2s_own(schedule, at) -> None:
    msgs, order = schedule
    ours = play(OursSide(client=True), msgs, order, None).wire
    theirs = play(H2Side(client=True), msgs, order, None).wire
    assert receive(H2Side(client=False), ours, at) == receive(H2Side(client=False), theirs, at)


def open_streams(client: H2Side | OursSide, server: H2Side | OursSide, n: int) -> list[int]:
    ids = [client.open(fields, True) for fields in simple_gets(n)]
    server.feed(client.out(), {})
    return ids


@given(schedules(responses()), cuts)
@SETTINGS
def test_responses_from_h2_read_the_same_by_both_clients(schedule, at) -> None:
    msgs, order = schedule
    ref_client, our_client, server = (
        H2Side(client=True),
        OursSide(client=True),
        H2Side(client=False),
    )
    ids = open_streams(ref_client, server, len(msgs))
    assert open_streams(our_client, H2Side(client=False), len(msgs)) == ids
    wire = server.out() + play(server, msgs, order, ids).wire
    assert receive(our_client, wire, at) == receive(ref_client, wire, at)


@given(schedules(responses()), cuts)
@SETTINGS
def test_responses_we_send_read_by_h2_as_h2s_own(schedule, at) -> None:
    msgs, order = schedule
    normals = []
    for server in (OursSide(client=False), H2Side(client=False)):
        client = H2Side(client=True)
        ids = open_streams(client, server, len(msgs))
        wire = server.out() + play(server, msgs, order, ids).wire
        normals.append(receive(client, wire, at))
    assert normals[0] == normals[1]


# malformed requests: both refuse ----------------------------------------------------------

GOOD = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
MALFORMED = {
    "uppercase name": GOOD + [(b"X-Upper", b"v")],
    "connection header": GOOD + [(b"connection", b"keep-alive")],
    "transfer-encoding": GOOD + [(b"transfer-encoding", b"chunked")],
    "te other than trailers": GOOD + [(b"te", b"gzip")],
    "CRLF in value": GOOD + [(b"x-a", b"a\r\nb: c")],
    "NUL in value": GOOD + [(b"x-a", b"a\x00b")],
    "leading space": GOOD + [(b"x-a", b" a")],
    "colon in name": GOOD + [(b"x:a", b"v")],
    "no :method": GOOD[1:],
    "no :path": GOOD[:3],
    "empty :path": GOOD[:3] + [(b":path", b"")],
    "no :scheme": [GOOD[0]] + GOOD[2:],
    "duplicate :path": GOOD + [(b":path", b"/x")],
    "pseudo after regular": GOOD[:3] + [(b"x-a", b"v"), GOOD[3]],
    "unknown pseudo": GOOD + [(b":foo", b"v")],
    ":status in request": GOOD + [(b":status", b"200")],
    "host differs from :authority": GOOD + [(b"host", b"b")],
    "no authority or host": GOOD[:2] + GOOD[3:],
}


@pytest.mark.parametrize("fields", list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_requests_are_refused_by_both(fields: Fields) -> None:
    client = H2Side(client=True, validate=False)
    client.open(fields, True)
    wire = client.out()
    with pytest.raises(h2.exceptions.ProtocolError):
        reference(client=False).receive_data(wire)
    # Ours refuses only the stream (RFC 9113 section 8.1.1): RST_STREAM(PROTOCOL_ERROR),
    # no event, and the connection lives on.
    ours = H2Connection(H2Config())
    events = ours.receive_data(wire)
    assert not [e for _, e in events if isinstance(e, RequestHead)]
    resets = [
        parse_rst_stream(f[3])
        for f in FrameBuffer().feed(ours.data_to_send())
        if f[0] == RST_STREAM
    ]
    assert resets == [0x1]
    client.open(GOOD, True)
    assert isinstance(ours.receive_data(client.out())[0][1], RequestHead)


def test_te_trailers_and_split_cookies_are_accepted_by_both() -> None:
    fields = GOOD + [(b"te", b"trailers"), (b"cookie", b"a=1"), (b"x-a", b"v"), (b"cookie", b"b=2")]
    client = H2Side(client=True, validate=False)
    client.open(fields, True)
    wire = client.out()
    assert receive(OursSide(client=False), wire, []) == receive(H2Side(client=False), wire, [])
    (head,) = [
        e for _, e in H2Connection(H2Config()).receive_data(wire) if isinstance(e, RequestHead)
    ]
    assert head.headers[-1] == (b"cookie", b"a=1; b=2")  # section 8.2.3


# hypothesis-generated frames ----------------------------------------------------------------

FRAME_FLAGS = st.sets(st.sampled_from([0x1, 0x4, 0x8, 0x20]), max_size=4).map(sum)
STREAMS = st.sampled_from([1, 1, 3, 3, 5])


@st.composite
def good_frame(draw: st.DrawFn, encoder: hpack.Encoder, opened: list[int]) -> bytes:
    """A well-formed frame, mostly on a stream already opened; allowed now or not."""
    kind = draw(st.sampled_from(["head", "head", "trailers", "data", "data", "control"]))
    sid = draw(st.sampled_from(opened or [1])) if kind != "head" or draw(st.booleans()) else 0
    end = draw(st.booleans())
    if kind == "head":
        if not sid:
            sid = opened[-1] + 2 if opened else 1
            opened.append(sid)
        fields = draw(st.sampled_from([GOOD, GOOD + [(b"x-a", b"1"), (b"cookie", b"a=b")]]))
        return fr.header_block_frames(
            sid, encoder.encode(fields), end, draw(st.sampled_from([16384, 5]))
        )
    if kind == "trailers":
        return fr.header_block_frames(sid, encoder.encode([(b"x-t", b"v")]), end, 16384)
    if kind == "data":
        return fr.data_frame(
            sid, draw(st.binary(max_size=40)), end, draw(st.sampled_from([-1, -1, 3]))
        )
    return draw(
        st.sampled_from(
            [
                fr.window_update_frame(0, 1000),
                fr.window_update_frame(sid, 1000),
                fr.ping_frame(b"12345678"),
                fr.settings_frame([(4, 100_000), (1, 0)]),
                fr.rst_stream_frame(sid, 8),
                fr.priority_frame(sid, 0, 16),
                fr.frame(0xA0, 0, sid, b"ext"),
            ]
        )
    )


@st.composite
def bad_frame(draw: st.DrawFn, encoder: hpack.Encoder) -> bytes:
    """A frame with any type, flags and stream, and a payload of a plausible size or not."""
    ftype = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
    sid = draw(st.sampled_from([0, 1, 3, 2]))
    flags = draw(FRAME_FLAGS)
    if ftype in (1, 9):
        payload = encoder.encode(GOOD[1:])  # also a malformed request
    else:
        size = {2: 5, 3: 4, 6: 8, 7: 8, 8: 4}.get(ftype, 3)
        payload = draw(st.binary(min_size=size, max_size=size) | st.binary(max_size=10))
    return fr.frame(ftype, flags, sid, payload)


@st.composite
def frame_sequences(draw: st.DrawFn) -> list[bytes]:
    encoder, opened = hpack.Encoder(), []
    frames = [draw(good_frame(encoder, opened)) for _ in range(draw(st.integers(1, 14)))]
    if draw(st.booleans()):  # at most one frame of any shape, anywhere
        frames.insert(draw(st.integers(0, len(frames))), draw(bad_frame(encoder)))
    # The closing PING settles a header block left open (h2 judges it only when complete).
    return [*frames, fr.ping_frame(b"finally!")]


def outcome(side: H2Side | OursSide, wire: list[bytes]) -> tuple[Normal, str | None]:
    """Normalised events, and why the connection died (None if it lives)."""
    normal: Normal = {}
    try:
        for piece in wire:
            side.feed(piece, normal)
    except (
        H2ConnectionError,
        h2.exceptions.ProtocolError,
        hyperframe.exceptions.HyperframeError,
    ) as exc:
        return normal, str(exc) or type(exc).__name__
    return normal, None


# Where RFC 9113 requires a connection error that h2 lets pass: a frame other than HEADERS
# or PRIORITY on an idle stream (section 5.1), PUSH_PROMISE sent to a server (8.4), and
# CONTINUATION after a complete header block (6.10).
STRICTER_THAN_H2 = ("frame on idle stream", "PUSH_PROMISE", "CONTINUATION without HEADERS")


@given(frame_sequences())
@settings(max_examples=300, deadline=None)
def test_generated_frames_mean_the_same_to_both(frames: list[bytes]) -> None:
    preface = H2Side(client=True).out()
    ours, theirs = OursSide(client=False), H2Side(client=False)
    ours_events, ours_death = outcome(ours, [preface, *frames])
    theirs_events, theirs_death = outcome(theirs, [preface, *frames])
    refused = {f[2] for f in FrameBuffer(1 << 24).feed(ours.out()) if f[0] == RST_STREAM}
    if ours_death is None and theirs_death is None:
        # Where h2 goes on, so do we, with the same meaning, except on streams we reset for
        # an error h2 tolerates (we check stricter, as RFC 9113 section 8.1.1 asks).
        for sid in set(ours_events) | set(theirs_events):
            if sid not in refused:
                assert ours_events.get(sid) == theirs_events.get(sid)
    if ours_death is not None and theirs_death is None:
        assert ours_death.startswith(STRICTER_THAN_H2)  # else we closed what h2 keeps
