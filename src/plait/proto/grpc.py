"""gRPC over HTTP/2, the parts a proxy needs: content type, deadlines, statuses. Pure, no I/O.

The proxy does not parse gRPC messages; it only has to recognise a gRPC call
(`content-type: application/grpc[+proto|;...]`), honour and propagate its `grpc-timeout`, and
answer a gRPC caller in gRPC's terms when it replies itself: HTTP status 200 with a
trailers-only response carrying `grpc-status` and a percent-encoded `grpc-message`, never an
HTML or plain-text 503 that the client library would turn into a vague UNKNOWN/INTERNAL.

References: grpc/doc/PROTOCOL-HTTP2.md (framing, timeouts, percent-encoding),
grpc/doc/statuscodes.md (codes), grpc/doc/http-grpc-status-mapping.md (HTTP status -> code).
"""

from __future__ import annotations

__all__ = [
    "CONTENT_TYPE",
    "MAX_TIMEOUT_DIGITS",
    "STATUS_CODES",
    "decode_message",
    "encode_message",
    "format_timeout",
    "is_grpc",
    "local_reply_headers",
    "parse_timeout",
    "status_for_flag",
    "status_for_http",
]

CONTENT_TYPE = b"application/grpc"
MAX_TIMEOUT_DIGITS = 8  # PROTOCOL-HTTP2.md: TimeoutValue is at most 8 ASCII digits

# grpc/doc/statuscodes.md, by name.
STATUS_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
_UNKNOWN = 2
_UNAVAILABLE = 14

# TimeoutUnit -> (numerator, denominator) of one unit in milliseconds.
_UNITS = {
    ord("H"): (3_600_000, 1),
    ord("M"): (60_000, 1),
    ord("S"): (1_000, 1),
    ord("m"): (1, 1),
    ord("u"): (1, 1_000),
    ord("n"): (1, 1_000_000),
}
_MAX_VALUE = 10**MAX_TIMEOUT_DIGITS - 1
# format_timeout: the finest unit whose value still fits in 8 digits.
_FORMAT_UNITS = ((1, b"m"), (1_000, b"S"), (60_000, b"M"), (3_600_000, b"H"))

# Envoy's response flags on plait's local replies -> the gRPC status a gRPC caller gets.
_FLAG_STATUS = {
    "UH": _UNAVAILABLE,  # no healthy upstream
    "UF": _UNAVAILABLE,  # upstream connection failure
    "UC": _UNAVAILABLE,  # upstream connection termination
    "NC": _UNAVAILABLE,  # no cluster (or a rule without backends)
    "URX": _UNAVAILABLE,  # retries exhausted
    "UT": 4,  # upstream request timeout: DEADLINE_EXCEEDED
    "RBAC": 7,  # authorization policy denied: PERMISSION_DENIED
    "UAEX": 16,  # unauthorized (external authorization / JWT): UNAUTHENTICATED
    "NR": 12,  # no route: UNIMPLEMENTED, as gRPC answers an unknown method
    "UO": 8,  # circuit breaker overflow: RESOURCE_EXHAUSTED
    "DPE": 13,  # the request itself was malformed: INTERNAL
}

# grpc/doc/http-grpc-status-mapping.md: an HTTP status that is not a gRPC response.
_HTTP_STATUS = {
    400: 13,  # INTERNAL
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 12,  # UNIMPLEMENTED
    429: _UNAVAILABLE,
    502: _UNAVAILABLE,
    503: _UNAVAILABLE,
    504: _UNAVAILABLE,
}

# PROTOCOL-HTTP2.md: grpc-message bytes outside 0x20-0x7E, and '%' itself, are %XX-encoded.
_KEEP = frozenset(range(0x20, 0x7F)) - {ord("%")}
_ENCODED = tuple(bytes([b]) if b in _KEEP else b"%%%02X" % b for b in range(256))


def is_grpc(content_type: bytes) -> bool:
    """True for `application/grpc` and its `+proto`/`+json`/`;params` variants, any case."""
    ct = content_type.lower()
    if not ct.startswith(CONTENT_TYPE):
        return False
    return len(ct) == len(CONTENT_TYPE) or ct[len(CONTENT_TYPE)] in b"+; \t"


def parse_timeout(value: bytes) -> int | None:
    """`grpc-timeout` (`TimeoutValue TimeoutUnit`, e.g. `100m`, `5S`) in milliseconds, rounded
    up so a deadline is never shortened; None when malformed (the caller ignores it then)."""
    digits = value[:-1]
    if not digits or len(digits) > MAX_TIMEOUT_DIGITS or not digits.isdigit():
        return None  # bytes.isdigit is ASCII-only, so no other scripts' digits slip in
    unit = _UNITS.get(value[-1])
    if unit is None:
        return None
    num, den = unit
    return -(-int(digits) * num // den)  # ceiling division


def format_timeout(ms: int) -> bytes:
    """Milliseconds as a `grpc-timeout` value: exact in ms when it fits in 8 digits, else in
    the first coarser unit that fits, rounded up. A negative budget is sent as `0m`."""
    ms = max(ms, 0)
    for size, unit in _FORMAT_UNITS:
        count = -(-ms // size)
        if count <= _MAX_VALUE:
            return b"%d%b" % (count, unit)
    return b"%dH" % _MAX_VALUE  # about 11,400 years: effectively no deadline


def status_for_http(http_status: int) -> int:
    """The gRPC status for an HTTP status that carried no `grpc-status`."""
    return _HTTP_STATUS.get(http_status, _UNKNOWN)


def status_for_flag(http_status: int, flag: str) -> int:
    """The gRPC status of a local reply with response flag `flag` (`UH`, `UT`, `RBAC`, ...).

    Flags that say why name their status; others (fault injection `FI`, a JWT 401 without a
    flag) fall back to the HTTP status, mapped as gRPC's HTTP-to-gRPC table does.
    """
    found = _FLAG_STATUS.get(flag)
    return found if found is not None else status_for_http(http_status)


def encode_message(message: bytes) -> bytes:
    """`grpc-message` percent-encoding: printable ASCII except '%' stays as is."""
    if all(b in _KEEP for b in message):
        return message
    return b"".join(_ENCODED[b] for b in message)


def decode_message(value: bytes) -> bytes:
    """The inverse of encode_message; a malformed `%XX` is kept literally, as gRPC does."""
    if b"%" not in value:
        return value
    out = bytearray()
    i, n = 0, len(value)
    while i < n:
        b = value[i]
        if b == 0x25 and _is_hex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return bytes(out)


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def local_reply_headers(grpc_status: int, message: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of a trailers-only reply after `:status 200`: content type, `grpc-status`
    and, when there is one, the percent-encoded `grpc-message`."""
    fields = [(b"content-type", CONTENT_TYPE), (b"grpc-status", b"%d" % grpc_status)]
    if message:
        fields.append((b"grpc-message", encode_message(message)))
    return fields
