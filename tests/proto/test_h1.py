"""The HTTP/1.1 codec, fed bytes directly: no sockets."""

from __future__ import annotations

import pytest

from plait.proto.errors import HeadTooLarge, MalformedMessage
from plait.proto.events import (
    CHUNKED,
    END_OF_STREAM,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    Data,
    RequestHead,
    ResponseHead,
    Trailers,
)
from plait.proto.h1 import (
    LAST_CHUNK,
    RequestReader,
    ResponseReader,
    _request_line_version,
    _status_line_version,
    chunk,
    request_head_bytes,
    response_head_bytes,
)


def body_of(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


def test_simple_get_gives_head_and_end() -> None:
    events = RequestReader().feed(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Y: z\r\n\r\n")
    head, end = events
    assert isinstance(head, RequestHead)
    assert (head.method, head.target, head.version) == (b"GET", b"/a?b=1", b"1.1")
    assert head.headers == [(b"host", b"x"), (b"x-y", b"z")]
    assert head.framing == NO_BODY and head.keep_alive
    assert end is END_OF_STREAM


def test_head_split_across_feeds() -> None:
    reader = RequestReader()
    raw = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    events: list[object] = []
    for i in range(len(raw)):
        events += reader.feed(raw[i : i + 1])
    assert isinstance(events[0], RequestHead) and events[0].framing == LENGTH
    assert events[0].target == b"/upload"
    assert body_of(events) == b"hello"
    assert events[-1] is END_OF_STREAM


def test_chunked_request_is_dechunked_and_its_trailers_come_apart_from_the_head() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"
    events = RequestReader().feed(raw)
    assert events[0].framing == CHUNKED
    assert body_of(events) == b"abcde"
    assert (b"x-t", b"1") not in events[0].headers
    trailers = events[-2]
    assert isinstance(trailers, Trailers) and trailers.headers == [(b"x-t", b"1")]
    assert events[-1] is END_OF_STREAM


def test_pipelined_requests_come_out_in_order() -> None:
    events = RequestReader().feed(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    heads = [e.target for e in events if isinstance(e, RequestHead)]
    assert heads == [b"/1", b"/2"]
    assert events.count(END_OF_STREAM) == 2


def test_http10_without_keepalive_is_not_kept_alive() -> None:
    (head, _) = RequestReader().feed(b"GET / HTTP/1.0\r\n\r\n")
    assert head.version == b"1.0" and not head.keep_alive
    (head, _) = RequestReader().feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert head.keep_alive


def test_connection_close_is_not_kept_alive() -> None:
    (head, _) = RequestReader().feed(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert not head.keep_alive


@pytest.mark.parametrize(
    "raw",
    [
        b"\x16\x03\x01\x00garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ],
)
def test_malformed_requests_raise(raw: bytes) -> None:
    with pytest.raises(MalformedMessage):
        RequestReader().feed(raw)


def test_too_many_headers_raise_431() -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(101)) + b"\r\n"
    with pytest.raises(HeadTooLarge) as info:
        RequestReader().feed(raw)
    assert info.value.status == 431


def test_exactly_max_headers_is_fine() -> None:
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(100)) + b"\r\n"
    assert isinstance(RequestReader().feed(raw)[0], RequestHead)


def test_huge_header_value_raises_before_head_completes() -> None:
    reader = RequestReader(max_head_bytes=1024)
    reader.feed(b"GET / HTTP/1.1\r\nX-Big: ")
    with pytest.raises(HeadTooLarge):
        reader.feed(b"a" * 2048)


def test_head_over_limit_in_one_piece_raises() -> None:
    raw = b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (61 * 1024) + b"\r\n\r\n"
    with pytest.raises(HeadTooLarge):
        RequestReader().feed(raw)


def test_long_url_raises() -> None:
    with pytest.raises(HeadTooLarge):
        RequestReader(max_head_bytes=100).feed(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n")


def test_upgrade_request_is_flagged() -> None:
    raw = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    (head, *_) = RequestReader().feed(raw)
    assert head.upgrade


def test_response_with_length() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert (
        isinstance(events[0], ResponseHead)
        and events[0].status == 200
        and events[0].framing == LENGTH
    )
    assert body_of(events) == b"hi" and events[-1] is END_OF_STREAM


def test_response_to_head_has_no_body_and_parser_is_reusable() -> None:
    reader = ResponseReader()
    reader.expect(b"HEAD")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert events[0].framing == NO_BODY and events[-1] is END_OF_STREAM
    reader.expect(b"GET")
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx")
    assert body_of(events) == b"x" and events[-1] is END_OF_STREAM


def test_interim_100_then_final() -> None:
    reader = ResponseReader()
    reader.expect(b"POST")
    events = reader.feed(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    )
    statuses = [e.status for e in events if isinstance(e, ResponseHead)]
    assert statuses == [100, 201]


def test_204_and_304_have_no_body() -> None:
    for status in (204, 304):
        reader = ResponseReader()
        reader.expect(b"GET")
        events = reader.feed(b"HTTP/1.1 %d X\r\n\r\n" % status)
        assert events[0].framing == NO_BODY and events[-1] is END_OF_STREAM


def test_response_without_length_is_delimited_by_close() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    events = reader.feed(b"HTTP/1.0 200 OK\r\n\r\nsome bytes")
    assert events[0].framing == UNTIL_CLOSE and not events[0].keep_alive
    assert body_of(events) == b"some bytes"


def test_chunked_response() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    events = reader.feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"abc") + LAST_CHUNK
    )
    assert (
        events[0].framing == CHUNKED and body_of(events) == b"abc" and events[-1] is END_OF_STREAM
    )


def test_invalid_response_raises() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    with pytest.raises(MalformedMessage):
        reader.feed(b"NOT HTTP AT ALL\r\n\r\n")


def test_writers_round_trip_through_readers() -> None:
    raw = request_head_bytes(b"PUT", b"/x", [(b"host", b"h"), (b"content-length", b"3")]) + b"abc"
    events = RequestReader().feed(raw)
    assert events[0].method == b"PUT" and body_of(events) == b"abc"
    raw = response_head_bytes(404, [(b"content-length", b"0")])
    assert raw.startswith(b"HTTP/1.1 404 Not Found\r\n")
    reader = ResponseReader()
    reader.expect(b"GET")
    assert reader.feed(raw)[0].status == 404


def test_chunk_framing() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


# The HTTP version: read off the start line when a head begins a feed, else from the parser.
@pytest.mark.parametrize(
    "feeds, versions",
    [
        ([b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], [b"1.1"]),
        ([b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"], [b"1.0"]),
        ([b"GET / HT", b"TP/1.0\r\nHost: a\r\n\r\n"], [b"1.0"]),  # start line split
        ([b"GET /ab", b"cd HTTP/1.0\r\n\r\n"], [b"1.0"]),  # target split
        ([b"GET http://a/x?y=1 HTTP/1.0\r\n\r\n"], [b"1.0"]),
        ([b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.0\r\n\r\n"], [b"1.1", b"1.0"]),
        (
            [b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"],
            [b"1.0", b"1.1"],
        ),
        ([b"\r\nGET / HTTP/1.0\r\n\r\n"], [b"1.0"]),  # an empty line before the request
    ],
)
def test_request_versions(feeds: list[bytes], versions: list[bytes]) -> None:
    reader = RequestReader()
    heads = [e for data in feeds for e in reader.feed(data) if isinstance(e, RequestHead)]
    assert [h.version for h in heads] == versions


@pytest.mark.parametrize(
    "data, version",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"1.1"),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", b"1.0"),
    ],
)
def test_response_versions(data: bytes, version: bytes) -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    (head,) = [e for e in reader.feed(data) if isinstance(e, ResponseHead)]
    assert head.version == version


def test_a_start_line_is_read_only_where_it_must_be() -> None:
    assert _request_line_version(b"GET / HTTP/1.1\r\nHost: a\r\n", 5) == b"1.1"
    assert _request_line_version(b"GET / HTTP/1.0\r\n\r\n", 5) == b"1.0"
    # Ended by LF alone, or not whole yet: the parser says.
    assert _request_line_version(b"GET / HTTP/1.1\nHost: a\r\n", 5) == b""
    assert _request_line_version(b"GET / HTTP/1.1", 5) == b""
    # An empty line before the request shifts it: not read at the wrong place.
    assert _request_line_version(b"\r\nGET / HTTP/1.1\r\n", 5) == b""
    assert _request_line_version(b"PRI * HTTP/2.0\r\n", 5) == b""
    assert _status_line_version(b"HTTP/1.0 200 OK\r\n") == b"1.0"
    assert _status_line_version(b"HTTP/2 200\r\n") == b""
