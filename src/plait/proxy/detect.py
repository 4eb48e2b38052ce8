"""Protocol detection: what the first bytes of a connection are. Pure, no I/O.

Theory of operation: a new connection's first bytes are fed to `detect` until it answers
something other than NEED_MORE. The answers, checked in this order:

- TLS: a TLS record header of type handshake (0x16, RFC 8446 section 5.1), a legacy version
  3.x, and a ClientHello (handshake type 1, section 4).
- HTTP2: the client connection preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n` (RFC 9113 3.4).
- HTTP1: a request line `method SP target SP HTTP/1.x CRLF` (RFC 9112 section 3), the
  method a token. A whole line is needed: a text protocol's `GET key\r\n` is not HTTP.
- TCP: anything else (a binary protocol such as Redis RESP or PostgreSQL).

NEED_MORE while the bytes so far are a prefix of one of the above. The caller bounds how
long it waits (and how much it buffers: `MAX_SNIFF`), then decides with `final=True`,
which turns a still-undecided prefix into TCP. Detection runs once per connection, never
per request, and costs a few slices of the first read.
"""

from __future__ import annotations

__all__ = ["HTTP1", "HTTP2", "MAX_SNIFF", "NEED_MORE", "TCP", "TLS", "detect"]

NEED_MORE, TLS, HTTP2, HTTP1, TCP = "need-more", "tls", "http2", "http1", "tcp"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# A request line longer than this is not waited for (the proxy's head limit is 60 KiB; a
# request line of 16 KiB is already far beyond what servers accept, e.g. nginx's 8 KiB).
MAX_SNIFF = 16 * 1024
# RFC 9110 section 5.6.2: tchar. Methods are tokens; in practice short and upper case, but
# the grammar is what matters (an extension method is HTTP too).
_TCHAR = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_MAX_METHOD = 32


def detect(data: bytes, final: bool = False) -> str:
    """Classify the first bytes of a connection (see the module docstring)."""
    if not data:
        return TCP if final else NEED_MORE
    first = data[0]
    if first == 0x16:
        return _tls(data, final)
    if first == 0x50 and data[:24] == H2_PREFACE[: len(data)]:  # "P": the preface or a prefix
        if len(data) >= 24:
            return HTTP2
        return TCP if final else NEED_MORE
    return _http1(data, final)


def _tls(data: bytes, final: bool) -> str:
    # record: type (1) version (2) length (2); then handshake type (1)
    if len(data) >= 2 and data[1] != 3:
        return TCP
    if len(data) >= 3 and data[2] > 4:
        return TCP
    if len(data) < 6:
        return TCP if final else NEED_MORE
    return TLS if data[5] == 1 else TCP


def _http1(data: bytes, final: bool) -> str:
    space = data.find(b" ", 0, _MAX_METHOD + 1)
    method = data[:space] if space > 0 else data[:_MAX_METHOD]
    for byte in method:
        if byte not in _TCHAR:
            return TCP
    if space <= 0:
        if space == 0 or len(data) > _MAX_METHOD:
            return TCP  # empty method, or longer than any method
        return TCP if final else NEED_MORE
    end = data.find(b"\n", space)
    if end < 0:
        return TCP if final or len(data) >= MAX_SNIFF else NEED_MORE
    line = data[space + 1 : end].rstrip(b"\r")
    target, sep, version = line.rpartition(b" ")
    if not sep or not target or b" " in target:
        return TCP
    return HTTP1 if version in (b"HTTP/1.1", b"HTTP/1.0") else TCP
