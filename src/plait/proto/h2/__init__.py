"""The proxy's HTTP/2 codec, sans I/O: RFC 9113 framing, RFC 7541 HPACK, flow control, limits.

`H2Connection(H2Config(client=...))` takes bytes and returns (stream id, event) pairs; its
`send_*` methods queue frames for `data_to_send()`. See docs/http2.md for the map, and each
module's docstring for its part: frames, huffman, hpack, streams, headers, state, sending,
control, connection, guards, config, events, errors.
"""

from __future__ import annotations

from plait.proto.h2.config import H2Config
from plait.proto.h2.connection import H2Connection
from plait.proto.h2.errors import (
    ErrorCode,
    H2ConnectionError,
    H2Error,
    H2StreamError,
    LocalError,
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

__all__ = [
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
