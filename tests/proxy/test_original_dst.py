"""SO_ORIGINAL_DST: parsing, and the answer for a connection that was not redirected."""

from __future__ import annotations

import socket
import struct
import sys

from plait.proxy.original_dst import original_destination, parse_sockaddr_in


def _sockaddr(address: str, port: int, family: int = socket.AF_INET) -> bytes:
    return family.to_bytes(2, sys.byteorder) + struct.pack("!H", port) + socket.inet_aton(address)


def test_sockaddr_in_is_parsed() -> None:
    assert parse_sockaddr_in(_sockaddr("10.96.1.2", 9080) + b"\0" * 8) == ("10.96.1.2", 9080)


def test_other_families_and_short_buffers_are_none() -> None:
    assert parse_sockaddr_in(_sockaddr("10.0.0.1", 1, socket.AF_INET6)) is None
    assert parse_sockaddr_in(b"\x02\x00") is None


def test_a_connection_that_was_not_redirected_has_no_original_destination() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
        with client, accepted:
            assert original_destination(accepted) is None
            assert original_destination(client) is None


def test_non_ipv4_sockets_have_no_original_destination() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        assert original_destination(s) is None
