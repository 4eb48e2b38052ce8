"""Where a transparently captured connection was going: SO_ORIGINAL_DST (Linux netfilter).

An iptables `REDIRECT` (see `plait capture`) rewrites the destination of an app's connection to
the proxy's outbound port; conntrack remembers the original one, and `getsockopt(SOL_IP,
SO_ORIGINAL_DST)` returns it as a `struct sockaddr_in`. A connection that was not redirected
reports the listener's own address, which means "no original destination".
"""

from __future__ import annotations

import socket
import struct
import sys

__all__ = ["SO_ORIGINAL_DST", "original_destination", "parse_sockaddr_in"]

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h
_SOCKADDR_IN = 16  # family (2), port (2, big-endian), IPv4 address (4), padding (8)


def parse_sockaddr_in(raw: bytes) -> tuple[str, int] | None:
    """(address, port) from a `struct sockaddr_in`; None when it is not AF_INET."""
    if len(raw) < 8:
        return None
    family = int.from_bytes(raw[:2], sys.byteorder)  # sa_family is in host byte order
    if family != socket.AF_INET:
        return None
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), port


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """The destination the app asked for before the redirect, or None when the connection
    was not redirected (the destination is the listener itself, or not IPv4/TCP)."""
    if sock.family != socket.AF_INET:
        return None
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)
    except OSError:  # ENOENT: no conntrack entry (not NATed); ENOPROTOOPT: no netfilter
        return None
    original = parse_sockaddr_in(raw)
    if original is None:
        return None
    try:
        local = sock.getsockname()[:2]
    except OSError:
        return None
    return None if (original[0], original[1]) == (local[0], local[1]) else original
