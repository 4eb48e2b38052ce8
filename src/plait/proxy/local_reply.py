"""Local replies: responses the proxy writes itself, each tagged with Envoy's response flag.

A user who sees a 503 can tell why from `x-plait-response-flags` (and the access log):

    NR  no route for the request                     404
    UH  the service has no healthy endpoint          503
    UF  upstream connection failure                  503
    UC  upstream closed before the response ended    503
    UT  upstream request timeout                     504
    UO  circuit breaker overflow (no queueing)       503, with x-plait-overloaded: true
    DC  downstream closed before the response ended  (no reply: nobody to send it to)
    DPE downstream protocol error (bad request, 408, 431)
"""

from __future__ import annotations

from plait.proto.h1 import reason_phrase

__all__ = ["FLAG_HEADER", "local_reply_bytes", "FLAG_STATUS"]

FLAG_HEADER = b"x-plait-response-flags"

# The status each flag answers with; the detail text says what happened in words.
FLAG_STATUS = {
    "NR": 404,
    "UH": 503,
    "UF": 503,
    "UC": 503,
    "UT": 504,
    "UO": 503,
    "DPE": 400,
}

_DETAILS = {
    "NR": b"no route matched the request",
    "UH": b"no healthy upstream",
    "UF": b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
    "UC": b"upstream connect error or disconnect/reset before headers. reset reason: connection termination",
    "UT": b"upstream request timeout",
    "UO": b"upstream overflow: circuit breaker open",
}


def local_reply_bytes(
    status: int, flags: str, detail: bytes | None = None, *, close: bool = False, extra: bytes = b""
) -> bytes:
    """A complete HTTP/1.1 response for a local reply, with a plain-text body."""
    body = (detail if detail is not None else _DETAILS.get(flags, reason_phrase(status))) + b"\n"
    head = [
        b"HTTP/1.1 %d %b\r\n" % (status, reason_phrase(status)),
        b"content-type: text/plain\r\n",
        b"content-length: %d\r\n" % len(body),
    ]
    if flags:
        head.append(b"%b: %b\r\n" % (FLAG_HEADER, flags.encode()))
    if close:
        head.append(b"connection: close\r\n")
    if extra:
        head.append(extra)  # complete header lines, e.g. b"x-plait-overloaded: true\r\n"
    head.append(b"\r\n")
    return b"".join(head) + body
