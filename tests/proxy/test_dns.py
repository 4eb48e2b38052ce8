"""Mesh DNS: the sans-I/O codec and answer logic, then the UDP server on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.config.snapshot import Cluster, Snapshot
from plait.proxy import dns
from plait.proxy.dns import (
    AAAA,
    NOTIMP,
    NXDOMAIN,
    A,
    DnsFormatError,
    DnsServer,
    MeshNames,
    answer,
    build_query,
    parse_query,
    parse_reply,
)

NAMES = {"reviews": "10.96.1.2", "reviews.default.svc.cluster.local": "10.96.1.2"}


def ask(name: str, qtype: int = A, names: dict[str, str] = NAMES) -> tuple[int, int, list[str]]:
    reply = answer(parse_query(build_query(0x1234, name, qtype)), names)
    assert reply is not None
    return parse_reply(reply)


def test_a_query_for_a_mesh_name_answers_its_vip() -> None:
    assert ask("reviews") == (0x1234, 0, ["10.96.1.2"])
    assert ask("Reviews.Default.svc.cluster.local.") == (0x1234, 0, ["10.96.1.2"])


def test_aaaa_for_a_mesh_name_is_empty_noerror_not_nxdomain() -> None:
    assert ask("reviews", AAAA) == (0x1234, 0, [])


def test_unknown_name_in_the_cluster_domain_is_nxdomain() -> None:
    assert ask("nope.default.svc.cluster.local")[1] == NXDOMAIN


def test_other_names_are_left_to_the_forwarder() -> None:
    assert answer(parse_query(build_query(1, "example.com")), NAMES) is None


def test_reply_echoes_id_question_and_recursion_desired() -> None:
    query = build_query(7, "reviews")
    reply = answer(parse_query(query), NAMES)
    assert reply is not None
    qid, flags = struct.unpack_from("!HH", reply)
    assert qid == 7 and flags & dns.QR and flags & dns.AA and flags & dns.RD
    assert reply[12 : len(query)] == query[12:]


def test_non_standard_opcode_is_notimp() -> None:
    query = bytearray(build_query(9, "reviews"))
    query[2] |= 0x10  # opcode 2 (STATUS)
    reply = answer(parse_query(bytes(query)), NAMES)
    assert reply is not None and parse_reply(reply)[1] == NOTIMP


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00\x01\x00\x00",
        struct.pack("!HHHHHH", 1, 0, 2, 0, 0, 0) + b"\x00\x00\x01\x00\x01",  # two questions
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x07reviews",  # name runs past the end
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # pointer loop
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x00\x00",  # truncated question
        struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01",  # a response
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x80abc\x00\x00\x01\x00\x01",  # label type
        struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x3f" + b"a" * 63 * 5,  # too long
    ],
)
def test_malformed_queries_raise_format_errors(data: bytes) -> None:
    with pytest.raises(DnsFormatError):
        parse_query(data)


def test_formerr_reply_only_when_the_header_was_readable() -> None:
    bad = struct.pack("!HHHHHH", 5, 0, 2, 0, 0, 0)
    with pytest.raises(DnsFormatError) as caught:
        parse_query(bad)
    reply = dns.error_reply(bad, caught.value)
    assert reply is not None and parse_reply(reply)[:2] == (5, dns.FORMERR)
    with pytest.raises(DnsFormatError) as short:
        parse_query(b"\x00")
    assert dns.error_reply(b"\x00", short.value) is None


def test_compressed_question_name_is_followed() -> None:
    # The question's name is a pointer (RFC 1035 section 4.1.4) to a name after the question.
    header = struct.pack("!HHHHHH", 3, 0, 1, 0, 0, 0)
    query = parse_query(header + b"\xc0\x12\x00\x01\x00\x01" + b"\x07reviews\x00")
    assert query.name == "reviews" and query.qtype == A
    assert query.question == b"\xc0\x12\x00\x01\x00\x01"
    with pytest.raises(DnsFormatError):
        parse_query(header + b"\xc0")  # truncated pointer


def test_mesh_names_follow_the_snapshot() -> None:
    current = [Snapshot(clusters=(Cluster("reviews", vip="10.96.1.2"), Cluster("novip")))]
    names = MeshNames(lambda: current[0])
    table = names.table()
    assert table["reviews.default.svc"] == "10.96.1.2" and "novip" not in table
    assert names.table() is table  # cached while the snapshot is the same
    current[0] = Snapshot(clusters=(Cluster("ratings", "prod", vip="10.96.3.4"),))
    assert names.table() == {
        "ratings": "10.96.3.4",
        "ratings.prod": "10.96.3.4",
        "ratings.prod.svc": "10.96.3.4",
        "ratings.prod.svc.cluster.local": "10.96.3.4",
    }


def _udp_ask(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(payload, address)
        return s.recv(4096)


@pytest.mark.timeout(20)
def test_udp_server_answers_forwards_and_survives_garbage() -> None:
    async def main() -> None:
        upstream = await DnsServer.open(("127.0.0.1", 0), lambda: {"example.com": "192.0.2.7"})
        server = await DnsServer.open(("127.0.0.1", 0), lambda: NAMES, upstream.address)
        lone = await DnsServer.open(("127.0.0.1", 0), lambda: NAMES)
        try:
            ask_ = asyncio.to_thread
            got = parse_reply(await ask_(_udp_ask, server.address, build_query(1, "reviews")))
            assert got == (1, 0, ["10.96.1.2"])
            # example.com is not a mesh name: asked upstream, whose answer comes back.
            got = parse_reply(await ask_(_udp_ask, server.address, build_query(2, "example.com")))
            assert got == (2, 0, ["192.0.2.7"])
            # Without a forwarder the rest is NXDOMAIN.
            got = parse_reply(await ask_(_udp_ask, lone.address, build_query(3, "example.com")))
            assert got[1] == NXDOMAIN
            bad = struct.pack("!HHHHHH", 4, 0, 3, 0, 0, 0)
            assert parse_reply(await ask_(_udp_ask, server.address, bad))[1] == dns.FORMERR
            got = parse_reply(await ask_(_udp_ask, server.address, build_query(5, "reviews")))
            assert got == (5, 0, ["10.96.1.2"])
            assert server.counters["forwarded"] == 1 and server.counters["formerr"] == 1
        finally:
            for s in (server, lone, upstream):
                await s.aclose()

    asyncio.run(main())


@pytest.mark.timeout(20)
def test_forward_to_a_silent_resolver_is_servfail() -> None:
    async def main() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        server = DnsServer(lambda: NAMES, silent.getsockname(), forward_timeout=0.2)
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
        try:
            reply = await asyncio.to_thread(_udp_ask, server.address, build_query(6, "x.org"))
            assert parse_reply(reply)[:2] == (6, dns.SERVFAIL)
        finally:
            await server.aclose()
            silent.close()

    asyncio.run(main())


@given(st.binary(max_size=600))
@settings(max_examples=500, deadline=None)
def test_arbitrary_bytes_never_crash_the_parser(data: bytes) -> None:
    try:
        query = parse_query(data)
    except DnsFormatError as exc:
        reply = dns.error_reply(data, exc)
        assert reply is None or parse_reply(reply)[1] == dns.FORMERR
        return
    reply = answer(query, NAMES)
    if reply is not None:
        parse_reply(reply)
