"""Trailer sections without sockets: which fields pass (plait.proxy.trailers), their HTTP/1.1
form, and the HTTP/1.1 codec reporting a chunked body's trailer fields (issue 8)."""

from __future__ import annotations

import pytest

from plait.proto.errors import HeadTooLarge
from plait.proto.events import END_OF_STREAM, Data, RequestHead, ResponseHead, Trailers
from plait.proto.h1 import LAST_CHUNK, RequestReader, ResponseReader, last_chunk
from plait.proxy.trailers import accepts_trailers, clean

CHUNKED_POST = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"


def test_clean_returns_the_same_list_when_nothing_is_dropped() -> None:
    fields = [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
    assert clean(fields) is fields


def test_clean_drops_hop_by_hop_framing_routing_and_pseudo_fields() -> None:
    fields = [
        (b"x-keep", b"1"),
        (b"connection", b"close"),
        (b"te", b"trailers"),
        (b"trailer", b"x"),
        (b"transfer-encoding", b"chunked"),
        (b"content-length", b"9"),
        (b"host", b"evil"),
        (b":status", b"200"),
        (b"x-forwarded-client-cert", b"By=x"),
        (b"x-also", b"2"),
    ]
    assert clean(fields, frozenset({b"x-forwarded-client-cert"})) == [
        (b"x-keep", b"1"),
        (b"x-also", b"2"),
    ]


def test_clean_of_nothing_left_is_none() -> None:
    assert clean([]) is None
    assert clean([(b"connection", b"close")]) is None


def test_last_chunk_carries_the_fields() -> None:
    assert last_chunk(None) == LAST_CHUNK
    assert last_chunk([]) == LAST_CHUNK
    assert last_chunk([(b"a", b"1"), (b"b", b"2")]) == b"0\r\na: 1\r\nb: 2\r\n\r\n"


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (b"trailers", True),
        (b"TRAILERS", True),
        (b"gzip;q=0.5, trailers", True),
        (b"trailers;q=1", True),
        (b"gzip", False),
        (b"trailersx", False),
    ],
)
def test_accepts_trailers_reads_the_te_tokens(value: bytes, accepted: bool) -> None:
    assert accepts_trailers([(b"host", b"x"), (b"te", value)]) is accepted


def test_no_te_accepts_no_trailers() -> None:
    assert not accepts_trailers([(b"host", b"x")])


def test_request_reader_reports_trailers_before_the_end() -> None:
    events = RequestReader().feed(CHUNKED_POST + b"X-T: 1\r\nX-U: two\r\n\r\n")
    head, data, trailers, end = events
    assert isinstance(head, RequestHead) and (b"x-t", b"1") not in head.headers
    assert isinstance(data, Data) and data.data == b"abc"
    assert isinstance(trailers, Trailers)
    assert trailers.headers == [(b"x-t", b"1"), (b"x-u", b"two")]
    assert end is END_OF_STREAM


def test_trailers_split_across_reads_and_pipelined_requests_stay_apart() -> None:
    reader = RequestReader()
    raw = CHUNKED_POST + b"X-T: 1\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    events: list[object] = []
    for i in range(len(raw)):
        events += reader.feed(raw[i : i + 1])
    kinds = [type(e).__name__ for e in events]
    assert kinds[-4:] == ["Trailers", "EndOfStream", "RequestHead", "EndOfStream"], kinds
    trailers = [e for e in events if isinstance(e, Trailers)]
    assert len(trailers) == 1 and trailers[0].headers == [(b"x-t", b"1")]
    assert events[-1] is END_OF_STREAM and isinstance(events[-2], RequestHead)


def test_a_body_without_trailers_has_no_trailers_event() -> None:
    events = RequestReader().feed(CHUNKED_POST + b"\r\n")
    assert not any(isinstance(e, Trailers) for e in events)
    assert events[-1] is END_OF_STREAM


def test_too_many_trailer_fields_are_refused() -> None:
    reader = RequestReader(max_headers=3)
    with pytest.raises(HeadTooLarge) as refused:
        reader.feed(CHUNKED_POST + b"".join(b"X-%d: v\r\n" % i for i in range(4)) + b"\r\n")
    assert refused.value.status == 431


def test_a_trailer_section_over_the_head_limit_is_refused() -> None:
    reader = RequestReader(max_head_bytes=200)
    with pytest.raises(HeadTooLarge):
        reader.feed(CHUNKED_POST + b"X-Big: " + b"v" * 300 + b"\r\n\r\n")


def test_response_reader_reports_trailers() -> None:
    reader = ResponseReader()
    reader.expect(b"GET")
    events = reader.feed(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nGrpc-Status: 0\r\n\r\n"
    )
    assert isinstance(events[0], ResponseHead)
    assert isinstance(events[-2], Trailers) and events[-2].headers == [(b"grpc-status", b"0")]
    assert events[-1] is END_OF_STREAM
