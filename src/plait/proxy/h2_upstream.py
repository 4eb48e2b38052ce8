"""HTTP/2 upstream: one multiplexed connection per host carrying many `Stream`s (issue 8.1-2).

A `Host` keeps its HTTP/2 connections in `host.h2`; a stream takes the first one that can open
another stream (the peer's SETTINGS_MAX_CONCURRENT_STREAMS, no GOAWAY), or a new one is
connected. Each request gets an `H2UpStream` handle that the protocol-neutral
`downstream.Stream` uses where the HTTP/1.1 path uses a pooled `UpstreamConnection`: `write`
(request body), `end`, `pause_reading` / `resume_reading` (withhold or give back the response
stream's flow-control credit: a slow downstream slows the upstream), `abort`, `finish`.

Between proxies it runs over mTLS with ALPN `h2`; to apps that speak it, over h2c.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING, Final, cast

from plait.proto.events import Data, Headers, RequestHead
from plait.proto.h2 import (
    ErrorCode,
    GoAway,
    H2Config,
    H2Connection,
    H2ConnectionError,
    LocalError,
    SettingsChanged,
    StreamReset,
    WindowUpdated,
)
from plait.proxy import batching
from plait.proxy.sides import Upstream
from plait.proxy.upstream import WRITE_HIGH_WATER

if TYPE_CHECKING:
    from plait.proxy.certificates import CertificateManager
    from plait.proxy.downstream import Stream
    from plait.proxy.resilience import CircuitBreaker
    from plait.proxy.upstream import Host

__all__ = [
    "CLIENT_CONFIG",
    "H2UpStream",
    "H2UpstreamConnection",
    "h2_client_context",
]

# Header strings go out without Huffman coding (optional, RFC 7541 section 5.2): in pure
# Python it costs more CPU per request than the bytes it saves on a local link are worth.
CLIENT_CONFIG: Final = H2Config(client=True, huffman=False, eager_connection_credit=True)
_LOW_WATER: Final = WRITE_HIGH_WATER // 2


def h2_client_context(
    certs: CertificateManager | None, tls: ssl.SSLContext | None
) -> ssl.SSLContext | None:
    """The mesh's mTLS client context offering ALPN `h2` instead of `http/1.1`."""
    if tls is None or certs is None or certs.identity is None:
        return tls
    if tls is certs.client_context():
        return certs.identity.client_context(alpn=("h2",))
    return tls


class H2UpStream(Upstream):
    """One request stream on a multiplexed upstream connection, as a `Stream` sees it."""

    def __init__(self, conn: H2UpstreamConnection, sid: int, stream: Stream) -> None:
        self.conn = conn
        self.sid = sid
        self.stream: Stream | None = stream
        self.paused = False
        self.withheld = 0  # response bytes received while paused, acknowledged on resume
        # For Stream.on_upstream_closed: a stream the peer refused unprocessed (REFUSED_STREAM
        # or above a GOAWAY's last id) is safe to retry, like a stale pooled connection.
        self.reused = False
        self.got_bytes = False
        self.full = False  # our queued request body paused the downstream
        self.done = False
        self.ended = False  # the request's END_STREAM is sent (on its HEADERS, for a GET)

    def write(self, data: bytes) -> None:
        """Request body bytes."""
        if self.done:
            return
        conn = self.conn
        try:
            queued = conn.codec.send_data(self.sid, data)
        except LocalError:
            return  # the stream is gone; its reset event tells the Stream
        if queued > WRITE_HIGH_WATER and not self.full and self.stream is not None:
            self.full = True
            conn.full[self.sid] = self
            self.stream.upstream_buffer_full()
        conn.kick()

    def end(self, trailers: Headers | None = None) -> None:
        """The request is complete: END_STREAM, on its trailer section if it has one."""
        if self.done or self.ended:
            return  # (a bodiless request ended with its head: no exception from the codec)
        self.ended = True
        try:
            if trailers:
                self.conn.codec.send_trailers(self.sid, trailers)
            else:
                self.conn.codec.end_stream(self.sid)
        except LocalError:
            return
        self.conn.kick(True)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if not self.paused:
            return
        self.paused = False
        if self.withheld and not self.done:
            withheld, self.withheld = self.withheld, 0
            self.conn.codec.acknowledge_received_data(self.sid, withheld)
            self.conn.kick()

    def abort(self) -> None:
        """Cancel the exchange (timeout, retry, downstream gone): RST_STREAM(CANCEL)."""
        if self.done:
            return
        conn = self.conn
        with contextlib.suppress(LocalError):
            conn.codec.reset_stream(self.sid, ErrorCode.CANCEL)
        conn.forget(self)
        conn.kick(True)

    def close(self) -> None:
        self.abort()

    def finish(self, request_complete: bool) -> None:
        """The response is complete; the stream closes with it unless we still send."""
        if request_complete:
            self.conn.forget(self)
        else:
            self.abort()


class H2UpstreamConnection(batching.MultiplexedWriter):
    """One HTTP/2 connection to a host; many streams at once."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.codec = H2Connection(CLIENT_CONFIG)
        self.streams: dict[int, H2UpStream] = {}
        self.full: dict[int, H2UpStream] = {}
        self.closed = False
        self.breaker: CircuitBreaker | None = None  # whose maxConnections slot it holds
        self.idle_since = 0.0
        self.loop = asyncio.get_running_loop()
        self.scheduled = False
        self.streams_unsent = 0
        self.served = 0
        self.opened = 0  # streams opened on it (maxRequestsPerConnection)

    def available(self) -> bool:
        return not self.closed and self.codec.can_open_stream() and not self.exhausted()

    def exhausted(self) -> bool:
        """Whether it has carried its cluster's maxRequestsPerConnection streams (as Envoy,
        the limit applies to HTTP/2 connections too: a rotated certificate or a rebalanced
        endpoint set reaches long-lived multiplexed connections as well)."""
        breaker = self.breaker
        return breaker is not None and not breaker.reuse_connection(self.opened)

    def open_stream(
        self, stream: Stream, head: RequestHead, end: bool, scheme: bytes
    ) -> H2UpStream | None:
        """Send a request head on a new stream; None if the connection cannot take it."""
        try:
            sid = self.codec.send_request(head, end, scheme)
        except LocalError:
            return None
        handle = H2UpStream(self, sid, stream)
        handle.ended = end
        self.streams[sid] = handle
        self.opened += 1
        self.kick(end)
        return handle

    def forget(self, handle: H2UpStream) -> None:
        handle.done = True
        handle.stream = None
        if self.streams.pop(handle.sid, None) is None:
            return
        self.full.pop(handle.sid, None)
        if handle.withheld:
            withheld, handle.withheld = handle.withheld, 0
            self.codec.acknowledge_received_data(handle.sid, withheld)
        self.served += 1
        if not self.streams:
            self.idle_since = self.loop.time()
            if not self.codec.can_open_stream() or self.exhausted():
                self.close()  # GOAWAY received, dead or used up: nothing more will run on it

    # asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER)  # type: ignore[union-attr]
        self.flush_out()  # preface and SETTINGS

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
            self.close()
            return
        self._dispatch(events)
        self.kick()

    def _dispatch(self, events: list[tuple[int, object]]) -> None:
        codec = self.codec
        streams = self.streams
        for sid, event in events:
            handle = streams.get(sid)
            kind = type(event)
            if handle is None or handle.stream is None:
                if kind is Data:
                    codec.acknowledge_received_data(sid, len(cast(Data, event).data))
                elif kind is WindowUpdated or kind is SettingsChanged:
                    self._drained(sid)
                elif kind is GoAway and not streams:
                    self.close()
                continue
            stream = handle.stream
            if kind is Data:
                n = len(cast(Data, event).data)
                handle.got_bytes = True
                stream.on_upstream_event(handle, event)
                if handle.paused and not handle.done:
                    handle.withheld += n
                else:
                    codec.acknowledge_received_data(sid, n)
            elif kind is StreamReset:
                refused = event.error_code == ErrorCode.REFUSED_STREAM  # type: ignore[attr-defined]
                handle.reused = refused and not handle.got_bytes
                self.forget(handle)
                stream.on_upstream_closed(handle)
            elif kind is WindowUpdated:
                self._drained(sid)
            else:  # ResponseHead, Trailers, END_OF_STREAM
                handle.got_bytes = True
                stream.on_upstream_event(handle, event)

    def _drained(self, sid: int) -> None:
        full = self.full
        if not full:
            return
        handles = list(full.values()) if sid == 0 else [full[sid]] if sid in full else []
        for handle in handles:
            if self.codec.buffered_outbound(handle.sid) <= _LOW_WATER:
                del full[handle.sid]
                handle.full = False
                if handle.stream is not None:
                    handle.stream.upstream_buffer_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        breaker, self.breaker = self.breaker, None
        if breaker is not None:
            breaker.release_connection()
        self.host.forget_h2(self)
        for handle in list(self.streams.values()):
            stream = handle.stream
            self.forget(handle)
            if stream is not None:
                stream.on_upstream_closed(handle)

    def pause_writing(self) -> None:
        for handle in list(self.streams.values()):
            if handle.stream is not None:
                handle.stream.upstream_buffer_full()

    def resume_writing(self) -> None:
        for handle in list(self.streams.values()):
            if handle.stream is not None and not handle.full:
                handle.stream.upstream_buffer_drained()

    # output (kick, flush_out: batching.MultiplexedWriter) --------------------------------
    def close(self) -> None:
        """GOAWAY and close; streams still on it fail as a closed connection does."""
        if not self.closed and self.transport is not None:
            self.codec.close()
            self.flush_out()
            self.closed = True
            self.transport.close()
        self.host.forget_h2(self)

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()
        self.host.forget_h2(self)
