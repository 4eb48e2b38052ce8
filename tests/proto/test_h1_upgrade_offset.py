"""The h1 readers keep the bytes after an upgrading message (RFC 9110 section 7.8) from the
offset httptools reports, in the compiled codec and in pure Python alike (issue 8)."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest

from plait import native_core
from plait.proto import h1
from plait.proto.errors import MalformedMessage
from plait.proto.events import END_OF_STREAM, RequestHead, ResponseHead

UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: chat\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
FRAME = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a masked "Hello" text frame
PLAIN = b"GET /a HTTP/1.1\r\nHost: chat\r\n\r\n"


@pytest.fixture(params=["loaded", "pure"])
def codec(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "loaded":
        yield h1  # compiled when the data path's build is current, else pure Python
        return
    yield native_core.source_module("plait.proto.h1")


def _request_reader(codec: ModuleType) -> h1.RequestReader:
    reader: h1.RequestReader = codec.RequestReader()
    return reader


def _response_reader(codec: ModuleType) -> h1.ResponseReader:
    reader: h1.ResponseReader = codec.ResponseReader()
    reader.expect(b"GET")
    return reader


def test_a_frame_in_the_same_read_as_the_upgrade_request_is_kept(codec: ModuleType) -> None:
    reader = _request_reader(codec)
    events = reader.feed(UPGRADE + FRAME)
    assert isinstance(events[0], RequestHead) and events[0].upgrade
    assert events[1:] == [END_OF_STREAM]
    assert reader.upgraded
    assert reader.take_tail() == FRAME
    assert reader.take_tail() == b""  # handed over once


def test_an_upgrade_request_alone_leaves_no_tail(codec: ModuleType) -> None:
    reader = _request_reader(codec)
    reader.feed(UPGRADE)
    assert reader.upgraded and reader.take_tail() == b""


def test_the_offset_counts_from_the_feed_that_completes_the_head(codec: ModuleType) -> None:
    reader = _request_reader(codec)
    assert reader.feed(UPGRADE[:30]) == []
    events = reader.feed(UPGRADE[30:] + FRAME)
    assert isinstance(events[0], RequestHead) and events[0].target == b"/chat"
    assert reader.take_tail() == FRAME


def test_after_pipelined_requests_the_tail_starts_after_the_upgrade_head(
    codec: ModuleType,
) -> None:
    reader = _request_reader(codec)
    events = reader.feed(PLAIN + UPGRADE + FRAME)
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [h.target for h in heads] == [b"/a", b"/chat"]
    assert heads[0].keep_alive and not heads[0].upgrade
    assert reader.take_tail() == FRAME


def test_later_reads_join_the_tail_in_order(codec: ModuleType) -> None:
    reader = _request_reader(codec)
    reader.feed(UPGRADE + b"one;")
    assert reader.feed(b"two;") == []
    assert reader.feed(b"GET /not-a-request HTTP/1.1\r\n\r\n") == []  # not HTTP any more
    assert reader.take_tail() == b"one;two;GET /not-a-request HTTP/1.1\r\n\r\n"


def test_an_upgrade_request_does_not_keep_the_connection_alive(codec: ModuleType) -> None:
    (head, _) = _request_reader(codec).feed(UPGRADE)
    assert isinstance(head, RequestHead) and head.upgrade and not head.keep_alive


def test_an_ordinary_request_is_not_upgraded(codec: ModuleType) -> None:
    reader = _request_reader(codec)
    (head, _) = reader.feed(PLAIN)
    assert isinstance(head, RequestHead) and head.keep_alive and not head.upgrade
    assert not reader.upgraded and reader.take_tail() == b""


def test_connect_keeps_the_tunnel_bytes_too(codec: ModuleType) -> None:
    reader = _request_reader(codec)
    events = reader.feed(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n\x00\x01")
    assert isinstance(events[0], RequestHead) and events[0].upgrade
    assert reader.take_tail() == b"\x00\x01"


def test_a_greeting_in_the_same_read_as_the_101_is_kept(codec: ModuleType) -> None:
    reader = _response_reader(codec)
    events = reader.feed(SWITCHED + b"GREETING\n")
    assert isinstance(events[0], ResponseHead) and events[0].status == 101
    assert events[1:] == [END_OF_STREAM]
    assert reader.upgraded and reader.take_tail() == b"GREETING\n"


def test_a_101_split_across_reads_keeps_the_greeting(codec: ModuleType) -> None:
    reader = _response_reader(codec)
    assert reader.feed(SWITCHED[:20]) == []
    events = reader.feed(SWITCHED[20:] + b"hi")
    assert isinstance(events[0], ResponseHead) and events[0].status == 101
    assert reader.take_tail() == b"hi"


def test_bytes_read_after_a_101_nobody_acted_on_are_refused(codec: ModuleType) -> None:
    """A switch that happened hands the connection over before its next read; a reader fed
    again after a 101 is facing a server that switched to nothing it was offered."""
    reader = _response_reader(codec)
    reader.feed(SWITCHED)
    with pytest.raises(MalformedMessage):
        reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")


def test_an_ordinary_response_is_not_upgraded(codec: ModuleType) -> None:
    reader = _response_reader(codec)
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert isinstance(events[0], ResponseHead) and events[-1] is END_OF_STREAM
    assert not reader.upgraded and reader.take_tail() == b""
