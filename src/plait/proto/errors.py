"""Protocol errors raised by the codecs; the proxy maps each to a local reply at the edge.

ProtocolError            a peer sent bytes we refuse (status: the reply to send, if any)
├── MalformedMessage     400: not HTTP, bad framing, bad characters
└── HeadTooLarge         431: head over the size or count limit
"""

from __future__ import annotations

__all__ = ["HeadTooLarge", "MalformedMessage", "ProtocolError"]


class ProtocolError(Exception):
    """Bad bytes from a peer. `status` is the HTTP status of the local reply to send."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        # Events the codec completed before the bad bytes (pipelined requests to answer first).
        self.events: list[object] = []


class MalformedMessage(ProtocolError):
    status = 400


class HeadTooLarge(ProtocolError):
    status = 431
