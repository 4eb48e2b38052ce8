"""One HTTP/2 connection, sans I/O: bytes in, (stream id, event) pairs out; calls in, bytes out.

Theory of operation
-------------------
`receive_data(bytes)` cuts frames (frames.FrameBuffer), checks each against the connection's
state and returns the events they complete, in wire order, as (stream id, event) pairs: the
protocol-neutral RequestHead / ResponseHead / Data / END_OF_STREAM, plus the HTTP/2 events of
`plait.proto.h2.events`. The `send_*` methods queue frames; `data_to_send()` takes them.
Nothing here reads a socket or a clock (except the PING/SETTINGS rate limits' injected one).

Errors follow RFC 9113 section 5.4. A connection error queues GOAWAY and raises
H2ConnectionError (the connection is dead; flush `data_to_send()` and close). A stream error
queues RST_STREAM and, if the application had seen the stream, reports StreamReset(remote=
False); the other streams carry on. Stream states live in `streams.py`.

Flow control (section 5.2) runs both ways. Received DATA is counted against our windows and
handed out; the application calls `acknowledge_received_data(stream, n)` as it consumes
bytes, and WINDOW_UPDATE goes out once half a window is consumed. So a slow reader stops the
peer, and we never hold more than our connection window of unconsumed body. The send side is
in `sending.py`, connection-level frames in `control.py`, shared state in `state.py`.
"""

from __future__ import annotations

from typing import Final

from plait.proto.events import END_OF_STREAM, Data
from plait.proto.h2 import headers as hdrs
from plait.proto.h2.control import ControlFrames
from plait.proto.h2.errors import ErrorCode, H2ConnectionError, H2StreamError, HeaderListTooLarge
from plait.proto.h2.events import StreamReset, Trailers
from plait.proto.h2.frames import (
    CONTINUATION,
    DATA,
    FLAG_ACK,
    FLAG_END_HEADERS,
    FLAG_END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    PRIORITY,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    goaway_frame,
    parse_data,
    parse_headers,
    parse_priority,
    parse_rst_stream,
    rst_stream_frame,
)
from plait.proto.h2.state import Fields, StreamEvent
from plait.proto.h2.streams import (
    CLOSED,
    HALF_CLOSED_LOCAL,
    OPEN,
    RECV_DATA,
    RECV_END_STREAM,
    RECV_HEADERS,
    Stream,
    next_state,
)

__all__ = ["H2Connection", "StreamEvent"]

_STATUS_431: Final = [(b":status", b"431")]


class H2Connection(ControlFrames):
    """One end of one HTTP/2 connection (client or server per `config.client`).

    The owner feeds it every received byte and writes every byte of `data_to_send()`;
    it owns nothing else and needs no closing beyond dropping it.
    """

    __slots__ = ()

    def receive_data(self, data: bytes) -> list[StreamEvent]:
        """The events completed by `data`. Raises H2ConnectionError (GOAWAY queued)."""
        if self._dead:
            return []
        events: list[StreamEvent] = []
        self._events = events
        try:
            if self._preface:
                data = self._read_preface(data)
            for ftype, flags, stream_id, payload in self._frames.feed(data):
                try:
                    self._frame(ftype, flags, stream_id, payload)
                except H2StreamError as exc:
                    self._stream_error(exc)
        except H2ConnectionError as exc:
            self._fail(exc)
            exc.events = list(events)
            raise
        return events

    # frames -------------------------------------------------------------------------------

    def _read_preface(self, data: bytes) -> bytes:
        """Section 3.4: the client's magic string, possibly split across reads."""
        want = self._preface
        n = min(len(want), len(data))
        if data[:n] != want[:n]:
            raise H2ConnectionError("invalid connection preface")
        self._preface = want[n:]
        return data[n:]

    def _frame(self, ftype: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._cont_stream:
            if ftype != CONTINUATION or stream_id != self._cont_stream:
                raise H2ConnectionError("header block interrupted (section 6.10)")
            self._on_continuation(flags, payload)
        elif not self._settings_received and (ftype != SETTINGS or flags & FLAG_ACK):
            raise H2ConnectionError("the peer's preface must start with SETTINGS (3.4)")
        elif ftype == DATA:
            self._on_data(flags, stream_id, payload)
        elif ftype == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif ftype > CONTINUATION:
            return  # section 5.5: unknown frame types are ignored
        elif ftype == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif ftype == RST_STREAM:
            self._on_rst_stream(stream_id, payload)
        elif stream_id == 0 and ftype in (PRIORITY, CONTINUATION, PUSH_PROMISE):
            raise H2ConnectionError(f"frame type {ftype} on stream 0")
        elif stream_id != 0 and ftype in (SETTINGS, PING, GOAWAY):
            raise H2ConnectionError(f"frame type {ftype} on stream {stream_id}")
        elif ftype == SETTINGS:
            self._on_settings(flags, payload)
        elif ftype == PING:
            self._on_ping(flags, payload)
        elif ftype == GOAWAY:
            self._on_goaway(payload)
        elif ftype == PRIORITY:
            parse_priority(stream_id, payload)  # checked, then ignored (section 5.3.2)
        elif ftype == PUSH_PROMISE:
            raise H2ConnectionError("PUSH_PROMISE but push is disabled (section 8.4)")
        else:  # CONTINUATION without an open block
            raise H2ConnectionError("CONTINUATION without HEADERS (section 6.10)")

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ConnectionError("DATA on stream 0")
        data, pad = parse_data(flags, payload)
        size = len(payload)  # section 6.9.1: padding counts against the windows too
        if size > self._recv_window:
            raise H2ConnectionError(
                "DATA beyond the connection window", ErrorCode.FLOW_CONTROL_ERROR
            )
        self._recv_window -= size
        end = flags & FLAG_END_STREAM
        if data or end:
            self._empty_run = 0
        else:
            self._empty_frame()
        self._activity = True
        stream = self._streams.get(stream_id)
        if stream is None or next_state(stream.state, RECV_DATA) < 0 or not stream.head_done:
            self._credit_connection(size)  # nobody will consume these bytes
            if stream is None:
                self._frame_on_absent_stream(stream_id)
                return
            if not stream.head_done:  # section 8.1: the head comes first
                raise H2StreamError("DATA before the response head", stream_id)
            raise H2StreamError("DATA after END_STREAM", stream_id, ErrorCode.STREAM_CLOSED)
        if size > stream.recv_window:
            self._credit_connection(size)
            raise H2StreamError(
                "DATA beyond the stream window", stream_id, ErrorCode.FLOW_CONTROL_ERROR
            )
        stream.recv_window -= size
        if stream.expected_length >= 0:
            stream.expected_length -= len(data)
            if stream.expected_length < 0:
                self._credit_connection(size)
                raise H2StreamError("body longer than content-length", stream_id)
        if self.config.eager_connection_credit:
            self._credit_connection(size)
        if pad:
            self.acknowledge_received_data(stream_id, pad)  # padding is nobody's to consume
        if data:
            self._events.append((stream_id, Data(data)))
        if end:
            self._received_end(stream)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ConnectionError("HEADERS on stream 0")
        block, dep = parse_headers(flags, payload)
        self._activity = True
        if flags & FLAG_END_HEADERS:
            self._empty_run = 0
            self._header_block(flags, stream_id, block, dep)
            return
        if block or flags & FLAG_END_STREAM:
            self._empty_run = 0
        else:
            self._empty_frame()
        self._cont_stream = stream_id
        self._cont_block = bytearray(block)
        self._cont_flags = flags
        self._cont_dep = dep

    def _on_continuation(self, flags: int, payload: bytes) -> None:
        if len(self._cont_block) + len(payload) > self.config.max_header_block_size:
            self.counters.continuation_flood += 1
            raise H2ConnectionError(
                f"header block over {self.config.max_header_block_size} bytes",
                ErrorCode.ENHANCE_YOUR_CALM,
            )
        self._cont_block += payload  # one buffer: many tiny frames cost no more than one
        if not flags & FLAG_END_HEADERS:
            if payload:
                self._empty_run = 0
            else:
                self._empty_frame()
            return
        self._empty_run = 0
        stream_id, self._cont_stream = self._cont_stream, 0
        block = bytes(self._cont_block)
        self._cont_block = bytearray()
        self._header_block(self._cont_flags, stream_id, block, self._cont_dep)

    def _header_block(self, flags: int, stream_id: int, block: bytes, dep: int) -> None:
        """A complete header block: always through HPACK first (section 4.3), then judged."""
        error: H2StreamError | None = None
        fields: Fields = []
        try:
            fields = self._decoder.decode(block)
        except H2StreamError as exc:  # the block was decoded whole: only the stream suffers
            error = exc
            error.stream_id = stream_id
            if isinstance(exc, HeaderListTooLarge):
                self.counters.headers_too_large += 1
        end_stream = bool(flags & FLAG_END_STREAM)
        stream = self._streams.get(stream_id)
        if stream is None:
            self._new_peer_stream(stream_id, fields, end_stream, dep, error)
            return
        if error is not None:
            raise error
        if next_state(stream.state, RECV_HEADERS) < 0:
            raise H2StreamError("HEADERS after END_STREAM", stream_id, ErrorCode.STREAM_CLOSED)
        if dep == stream_id:
            raise H2StreamError("stream depends on itself (section 5.3.1)", stream_id)
        event: object
        try:
            if stream.head_done:  # section 8.1: a trailer section, which ends the stream
                if not end_stream:
                    raise H2StreamError("trailers without END_STREAM", stream_id)
                event = Trailers(hdrs.trailer_fields(fields))
            else:  # a response to our request: 1xx heads, then the final one (8.1)
                head, length = hdrs.response_head(fields, end_stream)
                if head.status < 200:
                    if end_stream:
                        raise H2StreamError("1xx response with END_STREAM", stream_id)
                else:
                    stream.head_done = True
                    # Section 8.1.1: HEAD and 304 responses announce a length they lack.
                    if not stream.head_request and head.status != 304:
                        stream.expected_length = length
                event = head
        except H2StreamError as exc:
            exc.stream_id = stream_id
            raise
        stream.state = next_state(stream.state, RECV_HEADERS)
        stream.app_knows = True
        self._events.append((stream_id, event))
        if end_stream:
            self._received_end(stream)

    def _new_peer_stream(
        self,
        stream_id: int,
        fields: Fields,
        end_stream: bool,
        dep: int,
        error: H2StreamError | None,
    ) -> None:
        """HEADERS on a stream we do not hold: a new request, or a late or bad frame."""
        if self.client or stream_id % 2 == 0 or stream_id <= self._last_peer_id:
            if self._seen(stream_id):  # a stream that closed: section 5.1 "closed"
                if stream_id in self._reset_ids:
                    return  # in flight when we reset it: ignore
                raise H2StreamError(
                    "HEADERS on a closed stream", stream_id, ErrorCode.STREAM_CLOSED
                )
            raise H2ConnectionError(f"HEADERS on stream {stream_id} we cannot accept (5.1.1)")
        self._last_peer_id = stream_id
        if 0 <= self._goaway_sent < stream_id:
            self._remember_reset(stream_id)  # section 6.8: opened after our GOAWAY; ignored
            return
        if isinstance(error, HeaderListTooLarge):  # section 10.5.1: 431, stop the request body
            self._emit_block(stream_id, _STATUS_431, True)
            if not end_stream:
                self._out.append(rst_stream_frame(stream_id, ErrorCode.NO_ERROR))
                self._remember_reset(stream_id)
            self._peer_stream_ended(True)
            return
        if self._open_peer >= self.config.max_concurrent_streams:  # section 5.1.2
            self.counters.refused_streams += 1
            self._refuse(stream_id, ErrorCode.REFUSED_STREAM)
            return
        try:
            if error is not None:
                raise error
            if dep == stream_id:
                raise H2StreamError("stream depends on itself (section 5.3.1)", stream_id)
            head, length = hdrs.request_head(fields, end_stream)
        except H2StreamError as exc:
            self.counters.stream_errors += 1
            self._refuse(stream_id, exc.code)
            return
        stream = Stream(stream_id, self.remote_initial_window, self._local_initial_window)
        stream.state = OPEN
        stream.head_done = stream.app_knows = True
        stream.expected_length = length
        self._streams[stream_id] = stream
        self._open_peer += 1
        self._events.append((stream_id, head))
        if end_stream:
            self._received_end(stream)

    def _refuse(self, stream_id: int, code: int) -> None:
        """Reset a peer's new stream before the application saw it."""
        self._out.append(rst_stream_frame(stream_id, code))
        self._remember_reset(stream_id)
        self._peer_stream_ended(True)

    def _received_end(self, stream: Stream) -> None:
        if stream.expected_length > 0:
            raise H2StreamError("body shorter than content-length", stream.id)
        stream.state = next_state(stream.state, RECV_END_STREAM)
        self._events.append((stream.id, END_OF_STREAM))
        if stream.state == CLOSED:
            self._close(stream, False)

    def _on_rst_stream(self, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise H2ConnectionError("RST_STREAM on stream 0")
        code = parse_rst_stream(payload)
        stream = self._streams.get(stream_id)
        if stream is None:
            self._frame_on_absent_stream(stream_id, tolerated=True)
            return
        # Rapid reset (CVE-2023-44487): a peer's stream reset before our END_STREAM.
        early = stream.state != HALF_CLOSED_LOCAL and self._is_peer_stream(stream_id)
        if early:
            self.counters.early_resets += 1
        self._events.append((stream_id, StreamReset(code, True)))
        self._close(stream, early)

    # errors -------------------------------------------------------------------------------

    def _stream_error(self, exc: H2StreamError) -> None:
        """Section 5.4.2: reset the stream; tell the application if it knew the stream."""
        stream_id = exc.stream_id
        self.counters.stream_errors += 1
        self._out.append(rst_stream_frame(stream_id, exc.code))
        self._remember_reset(stream_id)
        stream = self._streams.get(stream_id)
        if stream is not None:
            if stream.app_knows:
                self._events.append((stream_id, StreamReset(exc.code, False)))
            self._close(stream, True)

    def _empty_frame(self) -> None:
        """CVE-2019-9518: frames that carry nothing, back to back."""
        self._empty_run += 1
        if self._empty_run > self.config.max_empty_frames:
            self.counters.empty_frame_flood += 1
            raise H2ConnectionError("flood of empty frames", ErrorCode.ENHANCE_YOUR_CALM)

    def _fail(self, exc: H2ConnectionError) -> None:
        """Section 5.4.1: GOAWAY with the error, then nothing more."""
        self.counters.connection_errors += 1
        self._out.append(goaway_frame(self._last_peer_id, exc.code, exc.reason.encode()[:128]))
        self._dead = True
