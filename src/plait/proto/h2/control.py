"""Connection-level control frames: SETTINGS, PING, GOAWAY, WINDOW_UPDATE (RFC 9113 6.5-6.9).

The peer's SETTINGS apply at once and are acknowledged; ours apply when the peer acknowledges
them (section 6.5.3). PING and SETTINGS floods are rate-limited (guards.RateLimit): a PING
that follows DATA or HEADERS is free, as gRPC's BDP probes are, so only idle pinging counts.
"""

from __future__ import annotations

from plait.proto.h2.errors import ErrorCode, H2ConnectionError, H2StreamError
from plait.proto.h2.events import (
    GoAway,
    PingAcked,
    PingReceived,
    SettingsChanged,
    StreamReset,
    WindowUpdated,
)
from plait.proto.h2.frames import (
    FLAG_ACK,
    parse_goaway,
    parse_ping,
    parse_settings,
    parse_window_update,
    ping_frame,
    settings_ack_frame,
)
from plait.proto.h2.sending import Sender
from plait.proto.h2.state import (
    ENABLE_PUSH,
    HEADER_TABLE_SIZE,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    MAX_WINDOW,
)

__all__ = ["ControlFrames"]


class ControlFrames(Sender):
    """Receiving the frames that concern the whole connection (and WINDOW_UPDATE)."""

    __slots__ = ()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        increment = parse_window_update(payload)
        if stream_id == 0:
            if increment == 0:
                raise H2ConnectionError("WINDOW_UPDATE of 0 (section 6.9)")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise H2ConnectionError(
                    "connection window over 2^31-1", ErrorCode.FLOW_CONTROL_ERROR
                )
            self._events.append((0, WindowUpdated(increment)))
            if self._blocked:
                self._flush()
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            self._frame_on_absent_stream(stream_id, tolerated=True)
            return
        if increment == 0:
            raise H2StreamError("WINDOW_UPDATE of 0 (section 6.9)", stream_id)
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            raise H2StreamError(
                "stream window over 2^31-1", stream_id, ErrorCode.FLOW_CONTROL_ERROR
            )
        self._events.append((stream_id, WindowUpdated(increment)))
        if stream.queued or stream.trailers is not None:
            self._flush_stream(stream)

    def _on_settings(self, flags: int, payload: bytes) -> None:
        pairs = parse_settings(flags, payload)
        if flags & FLAG_ACK:
            if self._settings_unacked:
                self._settings_unacked -= 1
                self._apply_local_window(self.config.initial_window_size)
            return
        if self._settings_rate.exceeded():
            self.counters.settings_flood += 1
            raise H2ConnectionError("SETTINGS flood", ErrorCode.ENHANCE_YOUR_CALM)
        self._settings_received = True
        changes: dict[int, int] = {}
        for key, value in pairs:
            self._apply_remote_setting(key, value)
            changes[key] = value
        self._out.append(settings_ack_frame())
        self._events.append((0, SettingsChanged(changes)))
        if self._blocked and INITIAL_WINDOW_SIZE in changes:
            self._flush()

    def _apply_remote_setting(self, key: int, value: int) -> None:
        """Section 6.5.2; unknown identifiers are ignored."""
        if key == HEADER_TABLE_SIZE:
            self._encoder.set_max_table_size(value)
        elif key == ENABLE_PUSH:
            if value > 1 or (self.client and value == 1):
                raise H2ConnectionError(f"invalid SETTINGS_ENABLE_PUSH {value}")
        elif key == MAX_CONCURRENT_STREAMS:
            self.remote_max_concurrent_streams = value
        elif key == INITIAL_WINDOW_SIZE:
            if value > MAX_WINDOW:
                raise H2ConnectionError("initial window over 2^31-1", ErrorCode.FLOW_CONTROL_ERROR)
            delta = value - self.remote_initial_window
            self.remote_initial_window = value
            for stream in self._streams.values():  # section 6.9.2: windows shift by the delta
                stream.send_window += delta
                if stream.send_window > MAX_WINDOW:
                    raise H2ConnectionError(
                        "stream window over 2^31-1", ErrorCode.FLOW_CONTROL_ERROR
                    )
        elif key == MAX_FRAME_SIZE:
            if not 16384 <= value <= 16777215:
                raise H2ConnectionError(f"invalid SETTINGS_MAX_FRAME_SIZE {value}")
            self.remote_max_frame_size = value
        elif key == MAX_HEADER_LIST_SIZE:
            self.remote_max_header_list_size = value

    def _apply_local_window(self, size: int) -> None:
        """Our SETTINGS_INITIAL_WINDOW_SIZE took effect: shift receive windows (6.9.2)."""
        delta = size - self._local_initial_window
        self._local_initial_window = size
        if delta:
            for stream in self._streams.values():
                stream.recv_window += delta

    def _on_ping(self, flags: int, payload: bytes) -> None:
        opaque = parse_ping(payload)
        if flags & FLAG_ACK:
            self._events.append((0, PingAcked(opaque)))
            return
        if not self._activity and self._ping_rate.exceeded():
            self.counters.ping_flood += 1
            raise H2ConnectionError("PING flood", ErrorCode.ENHANCE_YOUR_CALM)
        self._activity = False
        self._out.append(ping_frame(opaque, True))
        self._events.append((0, PingReceived(opaque)))

    def _on_goaway(self, payload: bytes) -> None:
        last, code, debug = parse_goaway(payload)
        previous = self._goaway_received
        self._goaway_received = last if previous < 0 else min(previous, last)
        self._events.append((0, GoAway(last, code, debug)))
        # Section 6.8: our streams above `last` were never processed; safe to retry.
        for stream in list(self._streams.values()):
            if stream.id > last and not self._is_peer_stream(stream.id):
                self._events.append((stream.id, StreamReset(ErrorCode.REFUSED_STREAM, True)))
                self._close(stream, False)
