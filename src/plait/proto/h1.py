"""HTTP/1.1 codec: bytes in, protocol-neutral events out (httptools underneath); heads out.

Theory of operation: a reader wraps one httptools parser for one connection. `feed(data)`
returns the events completed by those bytes, in order, possibly spanning several pipelined
messages; the caller decides when to act on them. Limits are enforced while parsing, so an
oversized head is refused before it is buffered whole (RFC 9110 section 15.5.32, RFC 6585
section 5). Writers are plain functions that build head bytes; bodies are framed with
`chunk()` / `LAST_CHUNK` when the head says chunked.

Upgrade (RFC 9110 section 7.8): httptools stops at the end of a message that switches
protocols (an `Upgrade` request, a `101`) and says where the new protocol's bytes begin.
The reader keeps those bytes (`upgraded`, `take_tail()`) for whoever takes the connection
over; they may share a read with the head (a client that does not wait for the 101, a server
that greets right after it). A request reader keeps later bytes too, until its caller stops
reading; a response reader refuses them (a legitimate switch hands the connection over
before another read).

No I/O here: everything is testable by feeding bytes.
"""

from __future__ import annotations

from typing import Any, Final

import httptools

from plait.proto.errors import HeadTooLarge, MalformedMessage, ProtocolError
from plait.proto.events import (
    CHUNKED,
    END_OF_STREAM,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Data,
    Headers,
    RequestHead,
    ResponseHead,
    Trailers,
)

__all__ = [
    "HOP_BY_HOP",
    "LAST_CHUNK",
    "RequestReader",
    "ResponseReader",
    "chunk",
    "last_chunk",
    "request_head_bytes",
    "response_head_bytes",
]

# 60 KiB and 100 fields: Envoy's defaults for max_request_headers_kb / max_headers_count.
DEFAULT_MAX_HEAD_BYTES: Final = 60 * 1024
DEFAULT_MAX_HEADERS: Final = 100

# RFC 9110 section 7.6.1: fields that describe one connection, never forwarded. Framing
# (transfer-encoding, content-length) is re-derived by the writer, so it is handled apart.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

LAST_CHUNK: Final = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (RFC 9112 section 7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def last_chunk(trailers: Headers | None) -> bytes:
    """The end of a chunked body, carrying `trailers` as its trailer section when there are
    any (RFC 9112 section 7.1.2)."""
    if not trailers:
        return LAST_CHUNK
    return b"0\r\n" + b"".join(b"%b: %b\r\n" % field for field in trailers) + b"\r\n"


def _framing(headers: Headers, chunked: bool, no_body: bool) -> int:
    if no_body:
        return NO_BODY
    if chunked:
        return CHUNKED
    for name, _ in headers:
        if name == b"content-length":
            return LENGTH
    return -1  # caller decides: NO_BODY for requests, UNTIL_CLOSE for responses


def _request_line_version(start: bytes, at: int) -> bytes:
    """b"1.1" or b"1.0" if `start` holds, from `at` (just past "method SP target"), the rest
    of a request line of that version; b"" if not (not there, not whole, bytes before it)."""
    rest = start[at : at + 11]
    return b"1.1" if rest == b" HTTP/1.1\r\n" else b"1.0" if rest == b" HTTP/1.0\r\n" else b""


def _status_line_version(start: bytes) -> bytes:
    """b"1.1" or b"1.0" if `start` begins with a status line of that version, else b""."""
    if start[:5] != b"HTTP/":
        return b""
    version = start[:9]
    return b"1.1" if version == b"HTTP/1.1 " else b"1.0" if version == b"HTTP/1.0 " else b""


class _Reader:
    """Shared state of the request and response readers; subclasses build the head."""

    __slots__ = (
        "_parser",
        "_events",
        "_headers",
        "_head_bytes",
        "_in_head",
        "_raw_in_head",
        "_raw_in_trailer",
        "_mid_message",
        "_feed_fresh",
        "_feed_data",
        "_head_start",
        "_chunked",
        "_trailer_phase",
        "_trailers",
        "_tail",
        "upgraded",
        "max_head_bytes",
        "max_headers",
    )

    def __init__(self, max_head_bytes: int, max_headers: int) -> None:
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self._events: list[object] = []
        self._headers: Headers = []
        self._head_bytes = 0
        self._in_head = False
        self._raw_in_head = 0
        self._raw_in_trailer = 0
        self._mid_message = False  # between on_message_begin and on_message_complete
        self._feed_fresh = False  # nothing of the current feed belongs to an earlier message
        self._feed_data = b""  # the current feed (see _version)
        self._head_start = b""  # the feed holding the whole current head, if it begins with it
        self._chunked = False
        self._trailer_phase = False
        self._trailers: Headers | None = None  # a chunked body's trailer fields, if any
        self.upgraded = False  # the last message switched protocols: no HTTP/1 after it
        self._tail = b""  # bytes of the new protocol read so far (see take_tail)
        # The httptools parser; each subclass makes its own kind (request or response).
        self._parser: Any

    # httptools callbacks -------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._headers = []
        self._head_bytes = 16  # start line overhead
        self._in_head = True
        # Raw head bytes are counted from the start of the feed if the head starts it; a head
        # that starts after other bytes of the feed (a body's tail, pipelined requests) is
        # counted from the next feed, since how much of this one it holds is unknown.
        self._raw_in_head = 0 if self._feed_fresh else -1
        self._head_start = self._feed_data if self._feed_fresh else b""
        self._feed_fresh = False
        self._mid_message = True
        self._chunked = False
        self._trailer_phase = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._trailer_phase:
            self._trailer(name, value)  # llhttp reports trailer fields after the body
            return
        headers = self._headers
        if len(headers) >= self.max_headers:
            raise HeadTooLarge(f"more than {self.max_headers} header fields")
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head_bytes:
            raise HeadTooLarge(f"header section over {self.max_head_bytes} bytes")
        name = name.lower()
        if name == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked"):
            self._chunked = True
        headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        if body:
            self._events.append(Data(body))

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field (RFC 9112 section 7.1.2), within the head's limits; a Trailers
        event carries them before END_OF_STREAM."""
        trailers = self._trailers
        if trailers is None:
            trailers = self._trailers = []
            self._head_bytes = 0
        if len(trailers) >= self.max_headers:
            raise HeadTooLarge(f"more than {self.max_headers} trailer fields")
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.max_head_bytes:
            raise HeadTooLarge(f"trailer section over {self.max_head_bytes} bytes")
        trailers.append((name.lower(), value))

    def _version(self, start_line_version: bytes) -> bytes:
        """The message's HTTP version. Read off the start line when one feed began with the
        whole head (`start_line_version` does that): httptools' get_http_version formats a
        new string on each call, a measurable cost per request. Otherwise from the parser."""
        version = start_line_version
        self._head_start = b""
        return version or self._parser.get_http_version().encode()

    def on_message_complete(self) -> None:
        self._mid_message = False
        if self._trailers is not None:
            self._events.append(Trailers(self._trailers))
            self._trailers = None
        self._events.append(END_OF_STREAM)

    # feeding -------------------------------------------------------------------------
    def _feed(self, data: bytes) -> list[object]:
        self._feed_fresh = not self._mid_message
        self._feed_data = data
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HeadTooLarge | MalformedMessage):
                raise self._failed(cause) from None
            raise self._failed(MalformedMessage(str(exc))) from exc
        except httptools.HttpParserUpgrade as exc:
            # The message before the switch is complete (its events are below); what follows
            # it in this feed is the new protocol's, from the offset httptools reports.
            self.upgraded = True
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self._tail = data[offset:]
        except httptools.HttpParserError as exc:
            raise self._failed(MalformedMessage(str(exc) or "malformed HTTP/1 message")) from exc
        finally:
            self._feed_data = b""
        if self._in_head:
            self._head_start = b""  # it goes on in a later feed: the parser will say its version
            # The head is not complete yet: bound what httptools buffers for it.
            if self._raw_in_head < 0:
                self._raw_in_head = 0  # it began mid-feed: count from the next feed
            else:
                self._raw_in_head += len(data)
            if self._raw_in_head > self.max_head_bytes:
                raise self._failed(HeadTooLarge(f"header section over {self.max_head_bytes} bytes"))
        elif self._mid_message and not self._events:
            # Bytes in a body that complete nothing are chunk framing or a trailer section,
            # whose fields httptools buffers whole: bound them like a head (see _trailer).
            self._raw_in_trailer += len(data)
            if self._raw_in_trailer > self.max_head_bytes:
                raise self._failed(
                    HeadTooLarge(f"trailer section over {self.max_head_bytes} bytes")
                )
        else:
            self._raw_in_trailer = 0
        events, self._events = self._events, []
        return events

    def take_tail(self) -> bytes:
        """The bytes read after an upgrading message's head (the new protocol's first bytes),
        handed over once; b"" when there are none."""
        tail, self._tail = self._tail, b""
        return tail

    def _failed(self, error: ProtocolError) -> ProtocolError:
        """The error, carrying the events completed before the bad bytes (not to be lost)."""
        error.events, self._events = self._events, []
        return error


class RequestReader(_Reader):
    """Parses requests from a downstream connection into events."""

    __slots__ = ("_url",)

    def __init__(
        self, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES, max_headers: int = DEFAULT_MAX_HEADERS
    ) -> None:
        super().__init__(max_head_bytes, max_headers)
        self._url = b""
        self._parser = httptools.HttpRequestParser(self)

    def feed(self, data: bytes) -> list[object]:
        """Events completed by `data`. Raises ProtocolError for bytes we refuse.

        After an upgrade request, bytes are the new protocol's: kept for `take_tail`, and
        the caller stops reading until the switch is answered (the connection then closes
        or becomes a tunnel), which bounds them."""
        if self.upgraded:
            self._tail += data
            return []
        return self._feed(data)

    def on_message_begin(self) -> None:
        _Reader.on_message_begin(self)
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.max_head_bytes:
            raise HeadTooLarge("request target too long")

    def on_headers_complete(self) -> None:
        p = self._parser
        self._in_head = False
        self._trailer_phase = True
        framing = _framing(self._headers, self._chunked, False)
        upgrade = p.should_upgrade()
        method = p.get_method()
        url = self._url
        self._events.append(
            RequestHead(
                method,
                url,
                self._headers,
                self._version(_request_line_version(self._head_start, len(method) + len(url) + 1)),
                # No HTTP/1 request can follow an upgrade request on this connection: whether
                # or not the switch happens, the connection ends with this exchange.
                p.should_keep_alive() and not upgrade,
                NO_BODY if framing < 0 else framing,
                upgrade,
            )
        )


class ResponseReader(_Reader):
    """Parses responses from an upstream connection into events.

    Call `expect(method)` before each request is sent: a response to HEAD has no body
    whatever its Content-Length says (RFC 9110 section 9.3.2), which the parser cannot know.
    """

    __slots__ = ("_head_request", "_skip_body")

    def __init__(
        self, max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES, max_headers: int = DEFAULT_MAX_HEADERS
    ) -> None:
        super().__init__(max_head_bytes, max_headers)
        self._head_request = False
        self._skip_body = False
        self._parser = httptools.HttpResponseParser(self)

    def expect(self, method: bytes) -> None:
        if self._skip_body:
            # The last response was to HEAD: its parser may still wait for a body.
            self._parser = httptools.HttpResponseParser(self)
            self._skip_body = False
            self._mid_message = False
        self._head_request = method == b"HEAD"

    def feed(self, data: bytes) -> list[object]:
        if self._skip_body:
            return []  # bytes after a HEAD response's head: nothing we asked for
        if self.upgraded:
            # A 101 that was acted on hands the connection over before its next read: this
            # one switched nothing (RFC 9110 section 15.2.2: not a protocol we offered).
            raise self._failed(MalformedMessage("bytes after a 101 that switched nothing"))
        return self._feed(data)

    def on_status(self, status: bytes) -> None:
        self._head_bytes += len(status)

    def on_headers_complete(self) -> None:
        p = self._parser
        status = p.get_status_code()
        self._in_head = False
        self._trailer_phase = True
        no_body = self._head_request or status in (204, 304) or 100 <= status < 200
        framing = _framing(self._headers, self._chunked, no_body)
        if framing < 0:
            framing = UNTIL_CLOSE
        self._events.append(
            ResponseHead(
                status,
                self._headers,
                b"",
                self._version(_status_line_version(self._head_start)),
                p.should_keep_alive() and framing != UNTIL_CLOSE,
                framing,
            )
        )
        if self._head_request and status >= 200:
            self._events.append(END_OF_STREAM)
            self._skip_body = True

    def on_message_complete(self) -> None:
        self._mid_message = False
        if not self._skip_body:
            if self._trailers is not None:
                self._events.append(Trailers(self._trailers))
                self._trailers = None
            self._events.append(END_OF_STREAM)


# writers ---------------------------------------------------------------------------------

_REASONS: Final = {
    100: b"Continue",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def request_head_bytes(method: bytes, target: bytes, headers: Headers) -> bytes:
    """Serialize a request head; `headers` must already carry the framing fields."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    _put_fields(parts, headers)
    return b"".join(parts)


def response_head_bytes(status: int, headers: Headers, version: bytes = b"1.1") -> bytes:
    """Serialize a response head; `headers` must already carry the framing fields."""
    parts = [b"HTTP/%b %d %b\r\n" % (version, status, reason_phrase(status))]
    _put_fields(parts, headers)
    return b"".join(parts)


def _put_fields(parts: list[bytes], headers: Headers) -> None:
    """The field lines and the blank line that ends a head. Four appends, not `parts +=
    (name, b": ", value, b"\r\n")`: compiled, that builds a tuple per field to concatenate."""
    for name, value in headers:
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    parts.append(b"\r\n")
