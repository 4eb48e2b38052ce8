"""Protocol-neutral stream events shared by the HTTP/1 and HTTP/2 codecs.

Filters and the router see these, never wire bytes. Header names are lower-cased bytes;
values are bytes as received. Classes are slotted and built once per message (heads) or
per chunk (data), so they stay cheap on the hot path.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "NO_BODY",
    "LENGTH",
    "CHUNKED",
    "UNTIL_CLOSE",
    "Data",
    "EndOfStream",
    "END_OF_STREAM",
    "Headers",
    "RequestHead",
    "ResponseHead",
    "Trailers",
]

Headers = list[tuple[bytes, bytes]]

# How a message's body is delimited on the wire (RFC 9112 section 6).
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3


class RequestHead:
    """A request's start line and header fields."""

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        version: bytes = b"1.1",
        keep_alive: bool = True,
        framing: int = NO_BODY,
        upgrade: bool = False,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.version = version
        self.keep_alive = keep_alive
        self.framing = framing
        self.upgrade = upgrade

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r}, {self.target!r}, {len(self.headers)} headers)"


class ResponseHead:
    """A response's status and header fields; 1xx heads are interim."""

    def __init__(
        self,
        status: int,
        headers: Headers,
        reason: bytes = b"",
        version: bytes = b"1.1",
        keep_alive: bool = True,
        framing: int = NO_BODY,
    ) -> None:
        self.status = status
        self.headers = headers
        self.reason = reason
        self.version = version
        self.keep_alive = keep_alive
        self.framing = framing

    def __repr__(self) -> str:
        return f"ResponseHead({self.status}, {len(self.headers)} headers)"


class Data:
    """A piece of a message body (already de-chunked)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data({len(self.data)} bytes)"


class Trailers:
    """A trailer section (HTTP/2 trailers, gRPC's `grpc-status`); END_OF_STREAM follows."""

    def __init__(self, headers: Headers) -> None:
        self.headers = headers

    def __repr__(self) -> str:
        return f"Trailers({len(self.headers)} fields)"


class EndOfStream:
    """The message is complete. Stateless: use the `END_OF_STREAM` instance."""

    def __repr__(self) -> str:
        return "END_OF_STREAM"


END_OF_STREAM: Final = EndOfStream()
