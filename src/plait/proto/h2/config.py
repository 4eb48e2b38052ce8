"""What one HTTP/2 connection allows its peer: our SETTINGS and the safety limits (issue 8.7).

Built once per listener or pool and shared by its connections; every default says why.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_CLIENT", "DEFAULT_SERVER", "H2Config"]


@dataclass(frozen=True, slots=True)
class H2Config:
    """Settings we advertise and limits we enforce; `client` picks the role."""

    client: bool = False
    # SETTINGS_MAX_CONCURRENT_STREAMS: 100, RFC 9113 section 6.5.2's recommended minimum and
    # the common server default; streams beyond it get RST_STREAM(REFUSED_STREAM).
    max_concurrent_streams: int = 100
    # SETTINGS_INITIAL_WINDOW_SIZE: 256 KiB per stream keeps a fast peer busy over a LAN.
    initial_window_size: int = 256 * 1024
    # The connection receive window: the most unacknowledged body bytes one connection can
    # make us hold, whatever its stream count (RFC 9113 section 6.9).
    connection_window_size: int = 1024 * 1024
    # SETTINGS_MAX_FRAME_SIZE: the RFC default; larger frames only batch bigger writes.
    max_frame_size: int = 16384
    # SETTINGS_HEADER_TABLE_SIZE: the RFC default; also caps the table our encoder keeps.
    header_table_size: int = 4096
    # SETTINGS_MAX_HEADER_LIST_SIZE: 64 KiB decoded (Envoy's 60 KiB head limit, rounded up);
    # over it, a request gets a 431 and a response a reset (RFC 9113 section 10.5.1).
    max_header_list_size: int = 64 * 1024
    # A header block (HEADERS + CONTINUATION, compressed) over this closes the connection:
    # the CONTINUATION flood (CVE-2024-27316) would otherwise grow it without end.
    max_header_block_size: int = 128 * 1024
    # Give the connection window back as DATA arrives, leaving backpressure to the stream
    # windows (as Envoy does). A proxy needs it: with credit returned only when a body is
    # consumed, a few streams with slow readers behind them would use up the connection
    # window and stall every other stream on the connection. The bound on what one
    # connection makes us hold becomes max_concurrent_streams x initial_window_size.
    eager_connection_credit: bool = False
    # Per stream, body bytes queued behind flow control before send_data refuses more.
    max_send_buffer: int = 1024 * 1024
    # Rapid reset (CVE-2023-44487): over the last `rapid_reset_window` streams the peer
    # opened, more than `max_early_resets` cancelled before our response was complete (or
    # refused) gets GOAWAY(ENHANCE_YOUR_CALM). A majority of a window, never a busy client.
    rapid_reset_window: int = 200
    max_early_resets: int = 100
    # Consecutive DATA/HEADERS/CONTINUATION frames carrying nothing (CVE-2019-9518).
    max_empty_frames: int = 10
    # PING and SETTINGS floods (CVE-2019-9512, -9515): at most this many per window. PINGs
    # that follow other traffic are free, as gRPC's BDP probes are (grpc-core's ping policy).
    max_pings_per_window: int = 100
    max_settings_per_window: int = 100
    flood_window_seconds: float = 10.0
    # Streams we reset whose in-flight frames we still recognise and drop quietly.
    remembered_resets: int = 1024
    # Check received header fields as RFC 9113 section 8.2 requires (off only for benches).
    validate_headers: bool = True
    # Huffman-code header strings we send (RFC 7541 section 5.2 makes it optional). The
    # proxy turns it off: a per-request literal (x-request-id) costs ~7 us to encode and as
    # much to decode in pure Python, to save ten bytes on a local link.
    huffman: bool = True


DEFAULT_CLIENT = H2Config(client=True)
DEFAULT_SERVER = H2Config(client=False)
