"""The send path of an HTTP/2 connection, and flow control on what we send (RFC 9113 6.9).

DATA goes out as far as both of the peer's windows allow; the rest waits on its stream (at
most `max_send_buffer` bytes) and moves when WINDOW_UPDATE or SETTINGS grow the windows,
blocked streams served oldest first and sent to the back after each turn. `send_data`
returns what is still queued, so the caller pauses its source above its high-water mark and
resumes after WindowUpdated events: a slow reader slows the writer.

Header blocks are encoded when they go on the wire, never earlier: HPACK state is shared by
all streams, so a trailer section queued behind data is kept as fields until it is sent.
"""

from __future__ import annotations

from plait.proto.events import RequestHead, ResponseHead
from plait.proto.h2 import headers as hdrs
from plait.proto.h2.errors import ErrorCode, SendBufferFull, StreamUnavailable, TooManyStreams
from plait.proto.h2.frames import (
    data_frame,
    goaway_frame,
    header_block_frames,
    ping_frame,
    rst_stream_frame,
    window_update_frame,
)
from plait.proto.h2.state import ConnectionState, Fields
from plait.proto.h2.streams import (
    CLOSED,
    HALF_CLOSED_LOCAL,
    OPEN,
    SEND_DATA,
    SEND_END_STREAM,
    SEND_HEADERS,
    Stream,
    next_state,
)

__all__ = ["Sender"]


class Sender(ConnectionState):
    """Sending: heads, bodies, trailers, resets, PING and GOAWAY; credit for received data."""

    __slots__ = ()

    def acknowledge_received_data(self, stream_id: int, size: int) -> None:
        """The application consumed `size` body bytes of the stream: let the peer send more.

        Every Data byte must be acknowledged once, even after its stream ended or was reset,
        or the connection window shrinks for good (as with the h2 library).
        """
        if size <= 0 or self._dead:
            return
        if not self.config.eager_connection_credit:
            self._credit_connection(size)
        stream = self._streams.get(stream_id)
        if stream is None or stream.state not in (OPEN, HALF_CLOSED_LOCAL):
            return  # the peer sends no more on it: only the connection window matters
        stream.recv_unacked += size
        if stream.recv_unacked * 2 >= self._local_initial_window:
            self._out.append(window_update_frame(stream_id, stream.recv_unacked))
            stream.recv_window += stream.recv_unacked
            stream.recv_unacked = 0

    def send_request(
        self, head: RequestHead, end_stream: bool = False, scheme: bytes = b"http"
    ) -> int:
        """Open a stream with this request head; returns its id (client only)."""
        stream_id = self._next_id
        self.send_headers(stream_id, hdrs.request_fields(head, scheme), end_stream)
        if head.method == b"HEAD":
            self._streams[stream_id].head_request = True
        return stream_id

    def send_response(self, stream_id: int, head: ResponseHead, end_stream: bool = False) -> None:
        """A response head (1xx or final) on a peer's stream (server only)."""
        self.send_headers(stream_id, hdrs.response_fields(head), end_stream)

    def send_headers(self, stream_id: int, fields: Fields, end_stream: bool = False) -> None:
        """A header block as given (pseudo-header fields first); opens an idle local stream."""
        stream = self._streams.get(stream_id)
        if stream is None:
            stream = self._open_local_stream(stream_id)
        elif stream.end_queued or stream.queued:
            raise StreamUnavailable(f"stream {stream_id} has queued data or has ended")
        self._emit_headers(stream, fields, end_stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> int:
        """Send body bytes as far as flow control allows; returns the bytes still queued."""
        stream = self._sendable(stream_id, SEND_DATA)
        if stream.queued:
            if stream.queued + len(data) > self.config.max_send_buffer:
                raise SendBufferFull(
                    f"stream {stream_id}: over {self.config.max_send_buffer} queued"
                )
            if data:
                stream.queue.append(data)
                stream.queued += len(data)
            stream.end_queued = end_stream
            return stream.queued
        window = min(stream.send_window, self._send_window)
        if len(data) - max(window, 0) > self.config.max_send_buffer:
            raise SendBufferFull(f"stream {stream_id}: over {self.config.max_send_buffer} queued")
        sent = self._emit_data(stream, data, window, end_stream)
        if sent < len(data):
            stream.queue.append(data[sent:] if sent else data)
            stream.queued = len(data) - sent
            stream.end_queued = end_stream
            self._blocked[stream_id] = None
        return stream.queued

    def send_trailers(self, stream_id: int, fields: Fields) -> None:
        """A trailer section, ending the stream; it waits for queued data (section 8.1)."""
        stream = self._sendable(stream_id, SEND_HEADERS)
        if stream.queued:
            stream.trailers = fields
            stream.end_queued = True
            return
        self._emit_headers(stream, fields, True)

    def end_stream(self, stream_id: int) -> None:
        """END_STREAM without more data (after queued data, if any)."""
        self.send_data(stream_id, b"", True)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None:
        """RST_STREAM: abandon the stream and its queued output (section 6.4)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._seen(stream_id):
                return  # already closed: nothing to reset
            raise StreamUnavailable(f"stream {stream_id} is idle")
        self._out.append(rst_stream_frame(stream_id, error_code))
        self._close(stream, False)
        self._remember_reset(stream_id)

    def ping(self, opaque: bytes = b"\0" * 8) -> None:
        """PING the peer (8 opaque bytes); PingAcked comes back (section 6.7)."""
        self._out.append(ping_frame(opaque))

    def close(self, error_code: int = ErrorCode.NO_ERROR, debug: bytes = b"") -> None:
        """GOAWAY: no new streams from the peer; open ones may finish (section 6.8)."""
        self._goaway_sent = self._last_peer_id
        self._out.append(goaway_frame(self._last_peer_id, error_code, debug))
        if error_code != ErrorCode.NO_ERROR:
            self._dead = True

    # internals ----------------------------------------------------------------------------

    def _open_local_stream(self, stream_id: int) -> Stream:
        if not self.client:  # section 8.4: a server opens streams only by push, which we never do
            raise StreamUnavailable(f"stream {stream_id} was never opened by the client")
        if self._dead or self._goaway_received >= 0:
            raise StreamUnavailable("connection is closing")
        if stream_id < self._next_id or (stream_id - self._next_id) % 2:
            raise StreamUnavailable(f"stream {stream_id} cannot be opened by this side")
        if self._open_local >= self.remote_max_concurrent_streams:
            raise TooManyStreams(f"peer allows {self.remote_max_concurrent_streams} streams")
        stream = Stream(stream_id, self.remote_initial_window, self._local_initial_window)
        stream.app_knows = True
        self._streams[stream_id] = stream
        self._open_local += 1
        self._next_id = stream_id + 2
        return stream

    def _sendable(self, stream_id: int, event: int) -> Stream:
        stream = self._streams.get(stream_id)
        if stream is None or stream.end_queued or next_state(stream.state, event) < 0:
            raise StreamUnavailable(f"stream {stream_id} cannot send now")
        return stream

    def _emit_headers(self, stream: Stream, fields: Fields, end_stream: bool) -> None:
        new = next_state(stream.state, SEND_HEADERS)
        if new < 0:
            raise StreamUnavailable(f"stream {stream.id} cannot send headers now")
        block = self._encoder.encode(fields, self.config.huffman)
        self._out.append(
            header_block_frames(stream.id, block, end_stream, self.remote_max_frame_size)
        )
        stream.state = new
        if end_stream:
            self._sent_end(stream)

    def _emit_block(self, stream_id: int, fields: Fields, end_stream: bool) -> None:
        """A header block for a stream we do not track (a local reply we make ourselves)."""
        block = self._encoder.encode(fields, self.config.huffman)
        self._out.append(
            header_block_frames(stream_id, block, end_stream, self.remote_max_frame_size)
        )

    def _emit_data(self, stream: Stream, data: bytes, window: int, end_stream: bool) -> int:
        """DATA frames for as much of `data` as `window` allows; returns the bytes sent."""
        size = len(data)
        n = size if size <= window else max(window, 0)
        fin = end_stream and n == size
        if n == 0 and not fin:
            return 0
        max_frame = self.remote_max_frame_size
        if n <= max_frame:
            self._out.append(data_frame(stream.id, data if n == size else data[:n], fin))
        else:
            for start in range(0, n, max_frame):
                stop = min(start + max_frame, n)
                self._out.append(data_frame(stream.id, data[start:stop], fin and stop == n))
        stream.send_window -= n
        self._send_window -= n
        if fin:
            self._sent_end(stream)
        return n

    def _sent_end(self, stream: Stream) -> None:
        stream.state = next_state(stream.state, SEND_END_STREAM)
        if stream.state == CLOSED:
            self._close(stream, False)

    def _flush(self) -> None:
        """Move queued output now that windows grew, oldest blocked stream first."""
        for stream_id in list(self._blocked):
            if self._send_window <= 0:
                return
            stream = self._streams.get(stream_id)
            if stream is not None:
                self._flush_stream(stream)

    def _flush_stream(self, stream: Stream) -> None:
        queue = stream.queue
        while queue:
            window = min(stream.send_window, self._send_window)
            if window <= 0:
                break
            chunk = queue[0]
            if len(chunk) <= window:
                del queue[0]
            else:
                queue[0] = chunk[window:]
                chunk = chunk[:window]
            stream.queued -= len(chunk)
            fin = not queue and stream.end_queued and stream.trailers is None
            self._emit_data(stream, chunk, window, fin)
        if stream.state == CLOSED:
            return
        self._blocked.pop(stream.id, None)
        if queue:
            self._blocked[stream.id] = None  # to the back of the line: fair shares
        elif stream.trailers is not None:
            trailers, stream.trailers = stream.trailers, None
            self._emit_headers(stream, trailers, True)
