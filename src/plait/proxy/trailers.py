"""Trailer sections across protocols (issue 8): which fields pass a hop, and to whom.

HTTP/2 carries a trailer section as a HEADERS frame with END_STREAM after the DATA; HTTP/1.1
only in the last chunk of a chunked body (RFC 9112 section 7.1.2). A response's trailers reach
an HTTP/1.1 client only if it announced `TE: trailers` (RFC 9110 section 10.1.4); otherwise,
or when a message is not sent chunked, the proxy drops them, as any recipient may (RFC 9110
section 6.5.1). Trailers get the hygiene of header fields: no pseudo-header fields, nothing
hop-by-hop or connection-specific, no framing or routing fields. (Their HTTP/1.1 form, the
last chunk, is the codec's: `plait.proto.h1.last_chunk`.)

Nothing here runs for a message without trailers: the hot path only tests a slot for None.
"""

from __future__ import annotations

from plait.proto.events import Headers
from plait.proto.h1 import HOP_BY_HOP

__all__ = ["NOT_IN_TRAILERS", "accepts_trailers", "clean"]

# RFC 9110 section 6.5.1: framing and routing are decided by the header section; hop-by-hop
# fields (section 7.6.1) and HTTP/2's connection-specific ones (RFC 9113 8.2.2) never pass.
NOT_IN_TRAILERS = HOP_BY_HOP | {b"content-length", b"host"}


def clean(fields: Headers, drop: frozenset[bytes] = frozenset()) -> Headers | None:
    """The fields that may pass on, or None for none; `drop` adds names (the listener's own,
    such as XFCC, for requests). The list is returned as is when nothing is dropped."""
    for name, _ in fields:
        if name in NOT_IN_TRAILERS or name in drop or name[:1] == b":":
            break
    else:
        return fields or None
    kept = [
        f for f in fields if f[0] not in NOT_IN_TRAILERS and f[0] not in drop and f[0][:1] != b":"
    ]
    return kept or None


def accepts_trailers(headers: Headers) -> bool:
    """Whether a request's `TE` lists `trailers` (RFC 9110 section 10.1.4)."""
    for name, value in headers:
        if name == b"te":
            for token in value.split(b","):
                if token.partition(b";")[0].strip().lower() == b"trailers":
                    return True
    return False
