"""HTTP/2 header lists <-> protocol-neutral heads, with RFC 9113 section 8 validation.

Received: pseudo-header fields become the head's method, target or status; `:authority`
becomes a leading `host` field when there is none (section 8.3.1 says an intermediary
converting to HTTP/1.1 must), `:scheme` is checked and dropped (the mesh's legs say their
scheme), and split `cookie` fields are joined (section 8.2.3). Sent: the reverse, dropping the
connection-specific fields HTTP/2 forbids (section 8.2.2).

A malformed message raises H2StreamError with stream id 0; the connection fills it in and
resets only that stream (section 8.1.1).
"""

from __future__ import annotations

from typing import Final

from plait.proto.events import CHUNKED, LENGTH, NO_BODY, Headers, RequestHead, ResponseHead
from plait.proto.h2.errors import H2StreamError

__all__ = [
    "request_fields",
    "request_head",
    "response_fields",
    "response_head",
    "trailer_fields",
]

Field = tuple[bytes, bytes]

# Section 8.2.2: fields that only make sense for one HTTP/1 connection.
_CONNECTION_SPECIFIC: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_DROP_ON_SEND: Final = _CONNECTION_SPECIFIC | {b"host"}

_STATUS_BYTES: Final = {code: b"%d" % code for code in range(100, 600)}


def _malformed(reason: str) -> H2StreamError:
    return H2StreamError(reason, 0)


def _regular(name: bytes, value: bytes) -> None:
    """Section 8.2.2 (characters are checked by the HPACK decoder, section 8.2.1)."""
    if name in _CONNECTION_SPECIFIC:
        raise _malformed(f"connection-specific field {name!r}")
    if name == b"te" and value.lower() != b"trailers":
        raise _malformed("te other than trailers")


def request_head(fields: list[Field], end_stream: bool) -> tuple[RequestHead, int]:
    """A request head from a received header list, and its content-length or -1 (8.3.1)."""
    method = path = scheme = authority = None
    length = -1
    host: bytes | None = None
    cookies: list[bytes] | None = None
    headers: Headers = []
    regular = False
    for field in fields:
        name, value = field
        if name[:1] == b":":
            if regular:
                raise _malformed("pseudo-header field after a regular one")
            if name == b":method" and method is None:
                method = value
            elif name == b":path" and path is None:
                path = value
            elif name == b":scheme" and scheme is None:
                scheme = value
            elif name == b":authority" and authority is None:
                authority = value
            else:  # repeated, response-only, unknown, or :protocol (RFC 8441 not offered)
                raise _malformed(f"unexpected pseudo-header field {name!r}")
            continue
        regular = True
        _regular(name, value)
        if name == b"cookie":
            if cookies is None:
                cookies = []
            cookies.append(value)
            continue
        if name == b"host":
            if host is not None:
                raise _malformed("more than one host field")
            host = value
        elif name == b"content-length":
            length = _content_length(value, length)
        headers.append(field)
    if method is None:
        raise _malformed("request without :method")
    if method == b"CONNECT":  # section 8.5: authority-form, no :scheme or :path
        if scheme is not None or path is not None or authority is None:
            raise _malformed("CONNECT with :scheme or :path, or without :authority")
        path = authority
    elif scheme is None or not path:
        raise _malformed("request without :scheme or :path")
    if authority is not None:
        if host is None:
            headers.insert(0, (b"host", authority))
        elif host != authority:
            raise _malformed("host and :authority differ")
    elif host is None:
        raise _malformed("request without :authority or host")
    if cookies is not None:
        headers.append((b"cookie", b"; ".join(cookies)))
    framing = NO_BODY if end_stream else (LENGTH if length >= 0 else CHUNKED)
    return RequestHead(method, path, headers, b"2", True, framing, False), length


def response_head(fields: list[Field], end_stream: bool) -> tuple[ResponseHead, int]:
    """A response head (final or 1xx), and its content-length or -1 (section 8.3.2)."""
    status = -1
    length = -1
    cookies: list[bytes] | None = None
    headers: Headers = []
    regular = False
    for field in fields:
        name, value = field
        if name[:1] == b":":
            if regular or name != b":status" or status >= 0:
                raise _malformed(f"unexpected pseudo-header field {name!r}")
            if len(value) != 3 or not value.isdigit():
                raise _malformed(f"invalid :status {value!r}")
            status = int(value)
            continue
        regular = True
        _regular(name, value)
        if name == b"cookie":
            if cookies is None:
                cookies = []
            cookies.append(value)
            continue
        if name == b"content-length":
            length = _content_length(value, length)
        headers.append(field)
    if status < 0:
        raise _malformed("response without :status")
    if status == 101 or status < 100:  # section 8.6: no Upgrade in HTTP/2
        raise _malformed(f"status {status} in HTTP/2")
    if cookies is not None:
        headers.append((b"cookie", b"; ".join(cookies)))
    framing = NO_BODY if end_stream else (LENGTH if length >= 0 else CHUNKED)
    return ResponseHead(status, headers, b"", b"2", True, framing), length


def trailer_fields(fields: list[Field]) -> Headers:
    """A trailer section: no pseudo-header fields (section 8.1); cookies joined (8.2.3)."""
    cookies: list[bytes] | None = None
    for name, value in fields:
        if name[:1] == b":":
            raise _malformed("pseudo-header field in trailers")
        _regular(name, value)
        if name == b"cookie":
            cookies = [value] if cookies is None else cookies + [value]
    if cookies is None:
        return fields
    return [f for f in fields if f[0] != b"cookie"] + [(b"cookie", b"; ".join(cookies))]


def _content_length(value: bytes, previous: int) -> int:
    """Section 8.1.1: digits only; repeated fields must agree."""
    if not value.isdigit() or len(value) > 18:
        raise _malformed("invalid content-length")
    length = int(value)
    if previous >= 0 and length != previous:
        raise _malformed("conflicting content-length fields")
    return length


def _outbound(headers: Headers, fields: list[Field]) -> list[Field]:
    """Append `headers` to `fields` without what HTTP/2 forbids (section 8.2.2)."""
    drop = _DROP_ON_SEND
    for field in headers:
        name = field[0]
        if name in drop:
            if name == b"connection":  # fields it names are hop-by-hop too
                drop = drop | {t.strip().lower() for t in field[1].split(b",")}
            continue
        if name == b"te" and field[1].lower() != b"trailers":
            continue
        fields.append(field)
    if drop is not _DROP_ON_SEND:  # a connection field came after the fields it names
        fields = [f for f in fields if f[0][:1] == b":" or f[0] not in drop]
    return fields


def request_fields(head: RequestHead, scheme: bytes = b"http") -> list[Field]:
    """The header list of a request head; :authority comes from host (section 8.3.1)."""
    authority = b""
    for name, value in head.headers:
        if name == b"host":
            authority = value
            break
    if head.method == b"CONNECT":
        fields = [(b":method", head.method), (b":authority", authority or head.target)]
    else:
        fields = [(b":method", head.method), (b":scheme", scheme)]
        if authority:
            fields.append((b":authority", authority))
        fields.append((b":path", head.target))
    return _outbound(head.headers, fields)


def response_fields(head: ResponseHead) -> list[Field]:
    """The header list of a response head."""
    status = _STATUS_BYTES.get(head.status) or b"%d" % head.status
    return _outbound(head.headers, [(b":status", status)])
