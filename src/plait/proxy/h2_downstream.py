"""HTTP/2 downstream: one client connection multiplexing many `Stream`s (issue 8 items 1, 7).

`H2DownstreamConnection` is an asyncio Protocol around the sans-I/O codec
(`plait.proto.h2.H2Connection`); each request stream gets an `H2DownStream` handle, which the
protocol-neutral `downstream.Stream` uses where the HTTP/1.1 path uses the connection itself
(`write`, `pause_reading`, `close`, `stream_done`), plus `send_head`, `send_end` and
`local_reply`. h2c with prior knowledge and `h2` over ALPN both end up here.

Flow control both ways, with bounded buffering:
- request bodies: received DATA is acknowledged (WINDOW_UPDATE) only while the stream can pass
  it on; while its upstream is full or still connecting the credit is withheld, so the client
  stops after its stream window (and all streams together after the connection window).
- responses: DATA waits in the codec behind the client's windows; above WRITE_HIGH_WATER queued
  on a stream its upstream stops being read until WINDOW_UPDATEs drain it below half.

Limits (max concurrent streams, header list size, rapid reset, CONTINUATION, empty-frame,
SETTINGS and PING floods) are the codec's (`proto/h2/guards.py`); a connection error sends
GOAWAY and closes, and the codec's counters add up in the listener's stats (`h2_*` events).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final, cast

from plait.proto.events import END_OF_STREAM, Data, Headers, RequestHead, ResponseHead, Trailers
from plait.proto.h2 import (
    ErrorCode,
    H2Config,
    H2Connection,
    H2ConnectionError,
    LocalError,
    SettingsChanged,
    StreamReset,
    WindowUpdated,
)
from plait.proto.h2.headers import response_fields
from plait.proxy import batching
from plait.proxy.downstream import Stream
from plait.proxy.local_reply import local_reply_fields
from plait.proxy.sides import Downstream
from plait.proxy.upstream import WRITE_HIGH_WATER

if TYPE_CHECKING:
    from plait.proxy.listener import ListenerContext

__all__ = ["H2DownStream", "H2DownstreamConnection", "SERVER_CONFIG"]

# No Huffman coding of the header strings we send (see h2_upstream.CLIENT_CONFIG).
SERVER_CONFIG: Final = H2Config(client=False, huffman=False, eager_connection_credit=True)
_LOW_WATER: Final = WRITE_HIGH_WATER // 2


class H2DownStream(Downstream):
    """One request stream of an HTTP/2 client connection, as a `Stream` sees its downstream."""

    def __init__(self, conn: H2DownstreamConnection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        self.ctx = conn.ctx
        self.peer = conn.peer
        self.peer_id = conn.peer_id
        self.original_dst = conn.original_dst
        self.transport = conn.transport  # the connection's (the capture lookup reads it)
        self.stream: Stream | None = None
        self.pause_bits = 0  # reasons to withhold request-body credit (downstream.PAUSE_*)
        self.withheld = 0  # request-body bytes received but not yet acknowledged
        self.write_paused = conn.write_paused
        self.closed = False  # reset (by either side)
        self.ended = False  # our END_STREAM is queued

    # what Stream calls ---------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Response body bytes."""
        if self.ended or self.closed:
            return
        conn = self.conn
        try:
            queued = conn.codec.send_data(self.sid, data)
        except LocalError:
            self.closed = True
            return
        if queued > WRITE_HIGH_WATER and self.sid not in conn.full:
            conn.full[self.sid] = self
            self.write_paused = True
            stream = self.stream
            if stream is not None and stream.upstream is not None:
                stream.upstream.pause_reading()
        conn.kick()

    def send_head(self, status: int, headers: Headers, end: bool) -> None:
        if self.closed:
            return
        try:
            self.conn.codec.send_headers(
                self.sid, response_fields(ResponseHead(status, headers)), end
            )
        except LocalError:
            self.closed = True
            return
        self.ended = end
        self.conn.kick(end)

    def send_end(self, trailers: Headers | None) -> None:
        if self.ended or self.closed:
            return
        self.ended = True
        codec = self.conn.codec
        try:
            if trailers:
                codec.send_trailers(self.sid, trailers)
            else:
                codec.end_stream(self.sid)
        except LocalError:
            self.closed = True
            return
        self.conn.kick(True)

    def local_reply(
        self, status: int, flags: str, detail: bytes | None, extra: bytes, is_grpc: bool
    ) -> None:
        if self.closed or self.ended:
            return
        fields, body = local_reply_fields(status, flags, detail, extra, is_grpc)
        codec = self.conn.codec
        self.ended = True
        try:
            codec.send_headers(self.sid, fields, not body)
            if body:
                codec.send_data(self.sid, body, True)
        except LocalError:
            self.closed = True
        self.conn.kick(True)

    def pause_reading(self, bit: int) -> None:
        self.pause_bits |= bit

    def resume_reading(self, bit: int) -> None:
        if not self.pause_bits & bit:
            return
        self.pause_bits &= ~bit
        if not self.pause_bits and self.withheld:
            withheld, self.withheld = self.withheld, 0
            self.conn.codec.acknowledge_received_data(self.sid, withheld)
            self.conn.kick()

    def close(self) -> None:
        """The response cannot complete (upstream reset, timeout mid-body): reset the stream."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(LocalError):
            self.conn.codec.reset_stream(self.sid, ErrorCode.INTERNAL_ERROR)
        self.conn.kick(True)

    def stream_done(self, stream: Stream, keep_alive: bool) -> None:
        self.conn.stream_done(self, stream)


class H2DownstreamConnection(batching.MultiplexedWriter):
    """One HTTP/2 client connection on a listener; each stream is a `Stream`."""

    def __init__(self, ctx: ListenerContext) -> None:
        self.ctx = ctx
        self.loop = ctx.loop
        self.transport: asyncio.Transport | None = None
        self.codec = H2Connection(SERVER_CONFIG)
        self.streams: dict[int, H2DownStream] = {}
        self.full: dict[int, H2DownStream] = {}  # streams whose queued response paused upstream
        self.closed = False
        self.peer = ""
        self.peer_id = ""  # set before connection_made when an HTTP/1.1 protocol hands over
        self.deadline = 0.0
        self.deadline_kind = 0
        self.write_paused = False
        self.scheduled = False
        self.streams_unsent = 0
        self.original_dst = b""  # "vip:port" before an iptables redirect (transparent capture)

    @property
    def stream(self) -> H2DownStream | None:
        """A stream in flight, if any (the drain loop waits while there is one)."""
        for handle in self.streams.values():
            return handle
        return None

    # asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER)  # type: ignore[union-attr]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        ctx = self.ctx
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and not self.peer_id:
            peer_id = ctx.peer_identity(ssl_object)
            if peer_id is None:
                self.closed = True
                self.transport.abort()  # type: ignore[union-attr]
                return
            self.peer_id = peer_id
        ctx.connections.add(self)
        ctx.stats.cx_total += 1
        ctx.stats.events["h2_cx_total"] = ctx.stats.events.get("h2_cx_total", 0) + 1
        self.deadline = ctx.loop.time() + ctx.settings.header_timeout
        self.deadline_kind = 1
        if ctx.draining:
            self.codec.close()
        self.flush_out()  # our SETTINGS

    def data_received(self, data: bytes) -> None:
        started = batching.begin()
        try:
            self._received(data)
        finally:
            if started:
                batching.end()

    def _received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.codec.receive_data(data)
        except H2ConnectionError as exc:
            self._dispatch(exc.events)  # type: ignore[arg-type]
            self.ctx.stats.downstream_protocol_errors += 1
            self.ctx.stats.events["h2_goaway_sent"] = (
                self.ctx.stats.events.get("h2_goaway_sent", 0) + 1
            )
            self.close()
            return
        self._dispatch(events)
        self.kick()

    def _dispatch(self, events: list[tuple[int, object]]) -> None:
        codec = self.codec
        streams = self.streams
        for sid, event in events:
            kind = type(event)
            if kind is Data:
                data = cast(Data, event).data
                handle = streams.get(sid)
                if handle is None or handle.stream is None:
                    codec.acknowledge_received_data(sid, len(data))
                    continue
                handle.stream.request_data(data)
                if handle.pause_bits and not handle.stream.finished:
                    handle.withheld += len(data)
                else:
                    codec.acknowledge_received_data(sid, len(data))
            elif kind is RequestHead:
                handle = H2DownStream(self, sid)
                streams[sid] = handle
                self.deadline_kind = 0
                stream = handle.stream = Stream(handle, event)  # type: ignore[arg-type]
                stream.start()
            elif event is END_OF_STREAM:
                handle = streams.get(sid)
                if handle is not None and handle.stream is not None:
                    handle.stream.request_end()
            elif kind is StreamReset:
                handle = streams.get(sid)
                if handle is not None:
                    handle.closed = True
                    if handle.stream is not None:
                        handle.stream.downstream_closed()
                    self._forget(handle)
            elif kind is WindowUpdated or kind is SettingsChanged:
                self._drained(sid)
            elif kind is Trailers:  # END_OF_STREAM follows: the request sends them then
                handle = streams.get(sid)
                if handle is not None and handle.stream is not None:
                    handle.stream.request_trailers(cast(Trailers, event).headers)
            if self.closed:
                return

    def _drained(self, sid: int) -> None:
        """Windows grew: resume the upstreams of streams whose queue fell below low water."""
        full = self.full
        if not full:
            return
        handles = list(full.values()) if sid == 0 else [full[sid]] if sid in full else []
        codec = self.codec
        for handle in handles:
            if codec.buffered_outbound(handle.sid) <= _LOW_WATER:
                del full[handle.sid]
                if self.write_paused:
                    continue
                handle.write_paused = False
                stream = handle.stream
                if stream is not None and stream.upstream is not None:
                    stream.upstream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        ctx = self.ctx
        ctx.connections.discard(self)
        events = ctx.stats.events
        for name, count in self.codec.counters.as_dict().items():
            if count:
                key = "h2_" + name
                events[key] = events.get(key, 0) + count
        for handle in list(self.streams.values()):
            handle.closed = True
            if handle.stream is not None:
                handle.stream.downstream_closed()
            handle.stream = None
        self.streams.clear()
        self.full.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        for handle in self.streams.values():
            handle.write_paused = True
            stream = handle.stream
            if stream is not None and stream.upstream is not None:
                stream.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        for handle in self.streams.values():
            if handle.sid in self.full:
                continue
            handle.write_paused = False
            stream = handle.stream
            if stream is not None and stream.upstream is not None:
                stream.upstream.resume_reading()

    # streams ---------------------------------------------------------------------------
    def stream_done(self, handle: H2DownStream, stream: Stream) -> None:
        """The Stream has answered (or failed); the codec closes the HTTP/2 stream."""
        codec = self.codec
        if not handle.closed:
            if not handle.ended:
                handle.closed = True  # never answered: tell the client
                with contextlib.suppress(LocalError):
                    codec.reset_stream(handle.sid, ErrorCode.CANCEL)
            elif not stream.request_complete:
                # RFC 9113 section 8.1: a complete response before the request ended; the
                # rest of the request body is not wanted.
                with contextlib.suppress(LocalError):
                    codec.reset_stream(handle.sid, ErrorCode.NO_ERROR)
        self._forget(handle)
        self.kick()

    def _forget(self, handle: H2DownStream) -> None:
        # The handle and its Stream point at each other: break the cycle here, so both are
        # freed at once by reference counting. Left to the cyclic collector, every request
        # left ~11 objects behind and the server-side proxy ran a collection every ~120
        # requests, a full one (7 ms) every few thousand: the tail of its latency.
        handle.stream = None
        if self.streams.pop(handle.sid, None) is None:
            return
        self.full.pop(handle.sid, None)
        if handle.withheld:
            withheld, handle.withheld = handle.withheld, 0
            self.codec.acknowledge_received_data(handle.sid, withheld)
        if not self.streams and not self.closed:
            ctx = self.ctx
            if ctx.draining:
                self.codec.close()
                self.close()
                return
            self.deadline = ctx.loop.time() + ctx.settings.idle_timeout
            self.deadline_kind = 2

    # lifecycle (output: kick, flush_out from batching.MultiplexedWriter) ----------------
    def drain(self) -> None:
        """Drain: GOAWAY now; streams in flight finish, then the connection closes."""
        if self.closed:
            return
        self.codec.close()
        if not self.streams:
            self.close()
        else:
            self.kick()

    def on_deadline(self, now: float) -> None:
        """No preface/request in time, or idle too long: GOAWAY and close."""
        if self.deadline_kind == 1:
            self.ctx.stats.downstream_rq_timeout += 1
        self.codec.close()
        self.close()

    def close(self) -> None:
        if not self.closed and self.transport is not None:
            self.flush_out()
            self.closed = True
            self.transport.close()
