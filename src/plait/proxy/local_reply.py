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

from plait.proto import grpc
from plait.proto.h1 import reason_phrase

__all__ = ["FLAG_HEADER", "local_reply_bytes", "local_reply_fields", "FLAG_STATUS"]

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


def local_reply_fields(
    status: int, flags: str, detail: bytes | None, extra: bytes, is_grpc: bool
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A local reply for HTTP/2: (header list with `:status`, body). A gRPC caller gets a
    trailers-only response (HTTP 200, `grpc-status`, `grpc-message`, no body), never text."""
    text = detail if detail is not None else _DETAILS.get(flags, reason_phrase(status))
    given: list[tuple[bytes, bytes]] = []
    for line in extra.split(b"\r\n"):  # complete header lines, as local_reply_bytes takes them
        name, sep, value = line.partition(b":")
        if sep:
            given.append((name.strip().lower(), value.strip()))
    if is_grpc:
        fields = [(b":status", b"200")]
        if not any(name == b"grpc-status" for name, _ in given):  # a fault may say its own
            fields += grpc.local_reply_headers(grpc.status_for_flag(status, flags), text)
        body = b""
    else:
        body = text + b"\n"
        fields = [
            (b":status", b"%d" % status),
            (b"content-type", b"text/plain"),
            (b"content-length", b"%d" % len(body)),
        ]
    if flags:
        fields.append((FLAG_HEADER, flags.encode()))
    fields += given
    return fields, body
