"""HTTP/2 errors: what a peer did wrong (and the RFC 9113 section 7 code to answer with).

    plait.proto.errors.ProtocolError   bad bytes from a peer
    └── H2Error                        an HTTP/2 violation; `code` is the RFC 9113 error code
        ├── H2ConnectionError          the connection is dead; GOAWAY(code) is queued to send
        │   └── CompressionError       HPACK state is unusable (COMPRESSION_ERROR)
        └── H2StreamError              one stream is dead; RST_STREAM(code) is queued to send
            └── HeaderListTooLarge     decoded header list over the limit (431)

    LocalError                         our own caller asked for something the protocol forbids
    ├── StreamUnavailable              no such stream, or it cannot send that now
    ├── TooManyStreams                 the peer's SETTINGS_MAX_CONCURRENT_STREAMS is reached
    └── SendBufferFull                 the caller ignored backpressure (`buffered_outbound`)

Connection errors surface as exceptions from `receive_data` (carrying the events completed
before the bad frame in `.events`); stream errors never do: the connection resets the stream
and reports a `StreamReset` event, so one bad stream cannot take its neighbours down.
"""

from __future__ import annotations

from enum import IntEnum

from plait.proto.errors import ProtocolError

__all__ = [
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


class ErrorCode(IntEnum):
    """RFC 9113 section 7 error codes (RST_STREAM and GOAWAY)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class H2Error(ProtocolError):
    """An HTTP/2 violation by the peer; `code` is the error code we answer with."""

    def __init__(self, reason: str, code: int = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(reason)
        self.code = code


class H2ConnectionError(H2Error):
    """The whole connection must go: GOAWAY(code) then close (RFC 9113 section 5.4.1)."""


class CompressionError(H2ConnectionError):
    """A header block we cannot decode; HPACK state is lost (RFC 9113 section 4.3)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, ErrorCode.COMPRESSION_ERROR)


class H2StreamError(H2Error):
    """One stream must go: RST_STREAM(code) (RFC 9113 section 5.4.2)."""

    def __init__(self, reason: str, stream_id: int, code: int = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(reason, code)
        self.stream_id = stream_id


class HeaderListTooLarge(H2StreamError):
    """A decoded header list over SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 section 10.5.1)."""

    status = 431


class LocalError(Exception):
    """Our caller asked for something the protocol or the peer's settings forbid now."""


class StreamUnavailable(LocalError):
    """The stream does not exist or cannot send this in its state (RFC 9113 section 5.1)."""


class TooManyStreams(LocalError):
    """Opening a stream would exceed the peer's SETTINGS_MAX_CONCURRENT_STREAMS."""


class SendBufferFull(LocalError):
    """More than the per-stream send buffer is queued: the caller ignored backpressure."""
