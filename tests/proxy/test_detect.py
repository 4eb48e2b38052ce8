"""Protocol detection (plait.proxy.detect) and the tunnel framing, fed bytes directly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plait.proxy.detect import HTTP1, HTTP2, MAX_SNIFF, NEED_MORE, TCP, TLS, detect
from plait.proxy.tcp import parse_tcp_outbound
from plait.proxy.tunnel import END_FRAME, FrameDecoder, FrameError, frame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# The start of a real TLS 1.3 ClientHello record (curl): handshake, 3.1, length, ClientHello.
CLIENT_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32)
GET = b"GET /index.html HTTP/1.1\r\nHost: web\r\n\r\n"
RESP_PING = b"*1\r\n$4\r\nPING\r\n"  # redis-cli's RESP
POSTGRES_STARTUP = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # SSLRequest


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (GET, HTTP1),
        (b"POST /x HTTP/1.0\r\n", HTTP1),
        (b"OPTIONS * HTTP/1.1\r\n", HTTP1),
        (b"GET http://web:9080/x?y=1 HTTP/1.1\n", HTTP1),  # bare LF ends a line too
        (b"M-SEARCH * HTTP/1.1\r\n", HTTP1),  # an extension method is a token
        (PREFACE, HTTP2),
        (PREFACE + b"\x00\x00\x12\x04\x00", HTTP2),
        (CLIENT_HELLO, TLS),
        (RESP_PING, TCP),
        (POSTGRES_STARTUP, TCP),
        (b"SSH-2.0-OpenSSH_9.2\r\n", TCP),
        (b"GET key\r\n", TCP),  # a text protocol that is not HTTP (memcached-like)
        (b"GET /x HTTP/2.0\r\n", TCP),
        (b"GET  /x HTTP/1.1\r\n", TCP),  # empty target
        (b" GET / HTTP/1.1\r\n", TCP),
        (b"\x16\x03\x01\x00\x10\x02", TCP),  # a ServerHello is not a client's first flight
        (b"\x16\x07", TCP),
        (b"\x16\x03\x09", TCP),
        (b"A" * 40, TCP),  # longer than any method
    ],
)
def test_detect_classifies_first_bytes(data: bytes, expected: str) -> None:
    assert detect(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"G",
        b"GET",
        b"GET /",
        b"GET / HTTP/1.",
        b"PRI * HTTP/2.0\r\n",
        b"\x16",
        b"\x16\x03\x01",
    ],
)
def test_detect_waits_on_a_prefix_and_decides_tcp_when_final(data: bytes) -> None:
    assert detect(data) == NEED_MORE
    assert detect(data, final=True) == TCP


def test_every_prefix_of_http_and_h2_waits_then_classifies() -> None:
    for whole, kind in ((GET, HTTP1), (PREFACE, HTTP2), (CLIENT_HELLO[:6], TLS)):
        for i in range(1, len(whole)):
            assert detect(whole[:i]) in (NEED_MORE, kind), whole[:i]
        assert detect(whole) == kind


def test_an_endless_request_line_stops_waiting() -> None:
    line = b"GET /" + b"a" * MAX_SNIFF
    assert detect(line) == TCP


@given(st.binary(max_size=64))
def test_detect_never_fails_on_any_bytes(data: bytes) -> None:
    assert detect(data) in (NEED_MORE, TLS, HTTP2, HTTP1, TCP)
    assert detect(data, final=True) != NEED_MORE


# framing of TCP between proxies (plait-tcp) -------------------------------------------------


def _framed(*chunks: bytes) -> bytes:
    return b"".join(frame(c) + c for c in chunks)


def test_frames_decode_to_their_payloads_and_the_end() -> None:
    d = FrameDecoder()
    assert b"".join(d.feed(_framed(b"hello", b" world"))) == b"hello world"
    assert not d.eof
    assert d.feed(END_FRAME) == []
    assert d.eof


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8), st.integers(1, 50))
def test_frames_split_anywhere_decode_the_same(chunks: list[bytes], step: int) -> None:
    wire = _framed(*chunks) + END_FRAME
    d = FrameDecoder()
    out = []
    for i in range(0, len(wire), step):
        out += d.feed(wire[i : i + step])
    assert b"".join(out) == b"".join(chunks)
    assert d.eof


def test_bytes_after_the_end_frame_are_an_error() -> None:
    d = FrameDecoder()
    with pytest.raises(FrameError):
        d.feed(END_FRAME + b"x")


def test_tcp_outbound_flag_parses_and_refuses_clearly() -> None:
    assert parse_tcp_outbound("127.0.0.1:16379=redis:6379") == (
        ("127.0.0.1", 16379),
        "default",
        "redis",
        6379,
    )
    assert parse_tcp_outbound("0=cache.data:11211") == (("127.0.0.1", 0), "data", "cache", 11211)
    for bad, why in [
        ("16379", "expected LISTEN=SERVICE:PORT"),
        ("16379=redis", "needs a port"),
        ("16379=redis:x", "must be numbers"),
        ("16379=redis:0", "out of range"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_tcp_outbound(bad)
