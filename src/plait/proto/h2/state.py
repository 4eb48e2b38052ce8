"""Shared state of one HTTP/2 connection, and the bookkeeping both directions rely on.

The connection is layered by concern, each layer a subclass of the one before:
`state.ConnectionState` (fields, stream table, window credit) -> `sending.Sender` (send
path, outbound flow control) -> `control.ControlFrames` (SETTINGS, PING, GOAWAY,
WINDOW_UPDATE) -> `connection.H2Connection` (the receive loop and stream frames).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from plait.proto.h2.config import DEFAULT_SERVER, H2Config
from plait.proto.h2.errors import ErrorCode, H2ConnectionError, H2StreamError
from plait.proto.h2.frames import PREFACE, FrameBuffer, settings_frame, window_update_frame
from plait.proto.h2.guards import Counters, RapidResetGuard, RateLimit
from plait.proto.h2.hpack import Decoder, Encoder
from plait.proto.h2.streams import CLOSED, Stream

__all__ = [
    "ENABLE_PUSH",
    "HEADER_TABLE_SIZE",
    "INITIAL_WINDOW_SIZE",
    "MAX_CONCURRENT_STREAMS",
    "MAX_FRAME_SIZE",
    "MAX_HEADER_LIST_SIZE",
    "ConnectionState",
    "Fields",
    "StreamEvent",
]

StreamEvent = tuple[int, object]
Fields = list[tuple[bytes, bytes]]

# SETTINGS identifiers (RFC 9113 section 6.5.2).
HEADER_TABLE_SIZE: Final = 0x1
ENABLE_PUSH: Final = 0x2
MAX_CONCURRENT_STREAMS: Final = 0x3
INITIAL_WINDOW_SIZE: Final = 0x4
MAX_FRAME_SIZE: Final = 0x5
MAX_HEADER_LIST_SIZE: Final = 0x6

MAX_WINDOW: Final = 2**31 - 1  # section 6.9.1
DEFAULT_WINDOW: Final = 65535  # section 6.9.2, until SETTINGS say otherwise
_UNLIMITED: Final = 2**31 - 1
_ENCODER_TABLE_CAP: Final = 4096  # our memory bound for the table a peer lets us keep


class ConnectionState:
    """Everything one connection knows; the methods here keep it consistent."""

    __slots__ = (
        "config",
        "client",
        "counters",
        "remote_max_concurrent_streams",
        "remote_initial_window",
        "remote_max_frame_size",
        "remote_max_header_list_size",
        "_out",
        "_events",
        "_frames",
        "_decoder",
        "_encoder",
        "_streams",
        "_blocked",
        "_reset_ids",
        "_next_id",
        "_last_peer_id",
        "_open_local",
        "_open_peer",
        "_send_window",
        "_recv_window",
        "_recv_unacked",
        "_local_initial_window",
        "_settings_unacked",
        "_preface",
        "_settings_received",
        "_cont_stream",
        "_cont_block",
        "_cont_flags",
        "_cont_dep",
        "_empty_run",
        "_activity",
        "_ping_rate",
        "_settings_rate",
        "_rapid_resets",
        "_goaway_sent",
        "_goaway_received",
        "_dead",
    )

    def __init__(
        self, config: H2Config = DEFAULT_SERVER, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.config = config
        self.client = config.client
        self.counters = Counters()
        # The peer's settings, RFC defaults until its SETTINGS frame (section 6.5.2).
        self.remote_max_concurrent_streams = _UNLIMITED
        self.remote_initial_window = DEFAULT_WINDOW
        self.remote_max_frame_size = 16384
        self.remote_max_header_list_size = _UNLIMITED
        self._out: list[bytes] = []
        self._events: list[StreamEvent] = []
        self._frames = FrameBuffer(config.max_frame_size)
        self._decoder = Decoder(
            config.header_table_size, config.max_header_list_size, config.validate_headers
        )
        self._encoder = Encoder()
        self._encoder.table_size_cap = _ENCODER_TABLE_CAP
        self._streams: dict[int, Stream] = {}
        self._blocked: dict[int, None] = {}  # streams with queued output, oldest first
        self._reset_ids: dict[int, None] = {}  # streams we reset recently (bounded)
        self._next_id = 1 if config.client else 2  # section 5.1.1; servers never push
        self._last_peer_id = 0
        self._open_local = 0
        self._open_peer = 0
        self._send_window = DEFAULT_WINDOW
        self._recv_window = max(config.connection_window_size, DEFAULT_WINDOW)
        self._recv_unacked = 0
        self._local_initial_window = DEFAULT_WINDOW  # ours apply once acknowledged (6.5.3)
        self._settings_unacked = 1
        self._preface = b"" if config.client else PREFACE  # what we still expect to read
        self._settings_received = False
        self._cont_stream = 0  # a header block is open on this stream (section 6.10)
        self._cont_block = bytearray()
        self._cont_flags = 0
        self._cont_dep = -1
        self._empty_run = 0
        self._activity = True
        window = config.flood_window_seconds
        self._ping_rate = RateLimit(config.max_pings_per_window, window, clock)
        self._settings_rate = RateLimit(config.max_settings_per_window, window, clock)
        self._rapid_resets = RapidResetGuard(config.rapid_reset_window, config.max_early_resets)
        self._goaway_sent = -1  # last stream id we promised to process, -1: no GOAWAY yet
        self._goaway_received = -1
        self._dead = False
        self._queue_preface()

    def _queue_preface(self) -> None:
        """Section 3.4: (client magic,) SETTINGS, and our larger connection window."""
        cfg = self.config
        settings = [
            (MAX_CONCURRENT_STREAMS, cfg.max_concurrent_streams),
            (INITIAL_WINDOW_SIZE, cfg.initial_window_size),
            (MAX_HEADER_LIST_SIZE, cfg.max_header_list_size),
        ]
        if cfg.client:
            settings.insert(0, (ENABLE_PUSH, 0))  # section 8.4: we never want pushes
        if cfg.header_table_size != 4096:
            settings.append((HEADER_TABLE_SIZE, cfg.header_table_size))
        if cfg.max_frame_size != 16384:
            settings.append((MAX_FRAME_SIZE, cfg.max_frame_size))
        if cfg.client:
            self._out.append(PREFACE)
        self._out.append(settings_frame(settings))
        if cfg.connection_window_size > DEFAULT_WINDOW:
            self._out.append(window_update_frame(0, cfg.connection_window_size - DEFAULT_WINDOW))

    # public: state ------------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams open or half-closed, either side's (section 5.1.2)."""
        return self._open_local + self._open_peer

    @property
    def next_stream_id(self) -> int:
        return self._next_id

    def can_open_stream(self) -> bool:
        """Whether a new request fits the peer's limits and no GOAWAY was received."""
        return (
            not self._dead
            and self._goaway_received < 0
            and self._open_local < self.remote_max_concurrent_streams
        )

    def buffered_outbound(self, stream_id: int) -> int:
        """Body bytes queued on the stream behind flow control."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else stream.queued

    def send_window(self, stream_id: int) -> int:
        """Bytes the peer lets us send now on the stream (both windows, section 6.9)."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else max(0, min(stream.send_window, self._send_window))

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    # bookkeeping --------------------------------------------------------------------------

    def _is_peer_stream(self, stream_id: int) -> bool:
        return (stream_id % 2 == 0) == self.client

    def _seen(self, stream_id: int) -> bool:
        """Whether the stream id was ever used (so a stream not held is closed, not idle)."""
        if self._is_peer_stream(stream_id):
            return stream_id <= self._last_peer_id
        return stream_id < self._next_id

    def _frame_on_absent_stream(self, stream_id: int, tolerated: bool = False) -> None:
        """Section 5.1: a frame for a stream we do not hold."""
        if not self._seen(stream_id):
            raise H2ConnectionError(f"frame on idle stream {stream_id}")
        if tolerated or stream_id in self._reset_ids:
            return  # WINDOW_UPDATE, RST_STREAM, or in flight when we reset it
        raise H2StreamError("frame on a closed stream", stream_id, ErrorCode.STREAM_CLOSED)

    def _close(self, stream: Stream, early_reset: bool) -> None:
        """Forget a closed stream; peer streams feed the rapid-reset guard."""
        if self._streams.pop(stream.id, None) is None:
            return
        stream.state = CLOSED
        stream.queue = []
        self._blocked.pop(stream.id, None)
        if self._is_peer_stream(stream.id):
            self._open_peer -= 1
            self._peer_stream_ended(early_reset)
        else:
            self._open_local -= 1

    def _peer_stream_ended(self, failed: bool) -> None:
        if self._rapid_resets.record(failed):
            self.counters.rapid_reset += 1
            raise H2ConnectionError("too many streams reset early", ErrorCode.ENHANCE_YOUR_CALM)

    def _remember_reset(self, stream_id: int) -> None:
        ids = self._reset_ids
        ids[stream_id] = None
        if len(ids) > self.config.remembered_resets:
            del ids[next(iter(ids))]

    def _credit_connection(self, size: int) -> None:
        """Give `size` bytes back to the connection window, batched (section 6.9)."""
        self._recv_unacked += size
        if self._recv_unacked * 2 >= self.config.connection_window_size:
            self._out.append(window_update_frame(0, self._recv_unacked))
            self._recv_window += self._recv_unacked
            self._recv_unacked = 0
