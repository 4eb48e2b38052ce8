"""HTTP/2 events beyond the protocol-neutral ones of `plait.proto.events`.

`H2Connection.receive_data` returns (stream id, event) pairs: RequestHead, ResponseHead,
Data and END_OF_STREAM from `plait.proto.events` for messages, plus these. Connection-level
events carry stream id 0. Slotted and immutable by convention, like the shared events.
"""

from __future__ import annotations

from plait.proto.events import Trailers

__all__ = [
    "GoAway",
    "PingAcked",
    "PingReceived",
    "SettingsChanged",
    "StreamReset",
    "Trailers",
    "WindowUpdated",
]


class StreamReset:
    """The stream is gone: reset by the peer (`remote`) or by us for the peer's error."""

    __slots__ = ("error_code", "remote")

    def __init__(self, error_code: int, remote: bool = True) -> None:
        self.error_code = error_code
        self.remote = remote

    def __repr__(self) -> str:
        return f"StreamReset({self.error_code}, remote={self.remote})"


class WindowUpdated:
    """The peer granted send window (stream 0: the connection); queued data may have moved."""

    __slots__ = ("increment",)

    def __init__(self, increment: int) -> None:
        self.increment = increment

    def __repr__(self) -> str:
        return f"WindowUpdated({self.increment})"


class SettingsChanged:
    """The peer's SETTINGS, applied and acknowledged: {identifier: new value}."""

    __slots__ = ("changes",)

    def __init__(self, changes: dict[int, int]) -> None:
        self.changes = changes

    def __repr__(self) -> str:
        return f"SettingsChanged({self.changes})"


class PingReceived:
    """The peer pinged us; the ACK is already queued (RFC 9113 section 6.7)."""

    __slots__ = ("opaque",)

    def __init__(self, opaque: bytes) -> None:
        self.opaque = opaque

    def __repr__(self) -> str:
        return f"PingReceived({self.opaque!r})"


class PingAcked:
    """The peer answered one of our PINGs (a liveness or round-trip probe)."""

    __slots__ = ("opaque",)

    def __init__(self, opaque: bytes) -> None:
        self.opaque = opaque

    def __repr__(self) -> str:
        return f"PingAcked({self.opaque!r})"


class GoAway:
    """The peer is closing: streams above `last_stream_id` were never processed (6.8)."""

    __slots__ = ("last_stream_id", "error_code", "debug_data")

    def __init__(self, last_stream_id: int, error_code: int, debug_data: bytes = b"") -> None:
        self.last_stream_id = last_stream_id
        self.error_code = error_code
        self.debug_data = debug_data

    def __repr__(self) -> str:
        return f"GoAway({self.last_stream_id}, {self.error_code})"
