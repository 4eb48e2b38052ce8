"""The compiled codecs (built with the data path, plait.native_core) behave as their Python
source; HTTP/2 header strings without Huffman coding."""

from __future__ import annotations

import pytest

from plait import native_core
from plait.proto import h1
from plait.proto.errors import HeadTooLarge
from plait.proto.events import RequestHead, ResponseHead
from plait.proto.h2 import H2Config, H2Connection

REQUEST = (
    b"POST /a?b=1 HTTP/1.1\r\nHost: web\r\nUser-Agent: wrk\r\nTransfer-Encoding: chunked\r\n"
    b"x-request-id: 0b7c1f0e-5c7a-4b1e-9d3a-1f2e3d4c5b6a\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    b"GET / HTTP/1.1\r\nHost: web\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 12\r\nConnection: keep-alive\r\n"
    b"\r\nhello world\n"
)


_FIELDS = {
    "RequestHead": ("method", "target", "headers", "version", "keep_alive", "framing", "upgrade"),
    "ResponseHead": ("status", "reason", "headers", "version", "keep_alive", "framing"),
    "Data": ("data",),
    "Trailers": ("headers",),
}


def _plain(events: list[object]) -> list[object]:
    """Events as comparable values (the head classes compare by identity)."""
    plain: list[object] = []
    for e in events:
        fields = _FIELDS.get(type(e).__name__)
        plain.append(tuple(getattr(e, k) for k in fields) if fields else e)
    return plain


def test_compiled_and_pure_h1_codecs_agree() -> None:
    if not native_core.active():
        pytest.skip("no current compiled data path (python -m plait.build_native)")
    assert h1.__file__ is not None and h1.__file__.endswith(".so")
    pure = native_core.source_module("plait.proto.h1")
    assert h1.RequestReader is not pure.RequestReader
    for split in (len(REQUEST), 7, 40):
        a, b = h1.RequestReader(), pure.RequestReader()
        got_a = a.feed(REQUEST[:split]) + a.feed(REQUEST[split:])
        got_b = b.feed(REQUEST[:split]) + b.feed(REQUEST[split:])
        assert _plain(got_a) == _plain(got_b) and isinstance(got_a[0], RequestHead)
    a, b = h1.ResponseReader(), pure.ResponseReader()
    a.expect(b"GET")
    b.expect(b"GET")
    assert _plain(a.feed(RESPONSE)) == _plain(b.feed(RESPONSE))
    headers = [(b"host", b"web"), (b"x-a", b"1")]
    assert h1.request_head_bytes(b"GET", b"/", headers) == pure.request_head_bytes(
        b"GET", b"/", headers
    )
    assert h1.response_head_bytes(503, headers) == pure.response_head_bytes(503, headers)


def test_h1_limits_hold_in_whichever_codec_is_loaded() -> None:
    reader = h1.RequestReader(max_head_bytes=64)
    with pytest.raises(HeadTooLarge):
        reader.feed(b"GET / HTTP/1.1\r\nHost: web\r\nx-big: " + b"a" * 100 + b"\r\n\r\n")


def test_header_strings_go_out_literal_when_huffman_is_off() -> None:
    agent = b"checkout-service/1.4.2 (build 20261126)"
    head = RequestHead(b"GET", b"/", [(b"host", b"web"), (b"user-agent", agent)])
    plain = H2Connection(H2Config(client=True, huffman=False))
    plain.send_request(head, True)
    coded = H2Connection(H2Config(client=True))
    coded.send_request(head, True)
    assert agent in plain.data_to_send()
    assert agent not in coded.data_to_send()


def test_a_value_new_on_every_request_is_never_huffman_coded() -> None:
    # Coding a request id costs more CPU than its 11 bytes are worth (hpack._UNIQUE_PER_REQUEST).
    request_id = b"0b7c1f0e-5c7a-4b1e-9d3a-1f2e3d4c5b6a"
    head = RequestHead(b"GET", b"/", [(b"host", b"web"), (b"x-request-id", request_id)])
    coded = H2Connection(H2Config(client=True))
    coded.send_request(head, True)
    assert request_id in coded.data_to_send()


def test_a_peer_reads_literal_header_strings() -> None:
    client = H2Connection(H2Config(client=True, huffman=False))
    server = H2Connection(H2Config(client=False, huffman=False))
    head = RequestHead(b"GET", b"/x", [(b"host", b"web"), (b"x-request-id", b"abc-123")])
    sid = client.send_request(head, True)
    events = server.receive_data(client.data_to_send())
    heads = [e for s, e in events if s == sid and isinstance(e, RequestHead)]
    assert heads and (b"x-request-id", b"abc-123") in heads[0].headers
    server.send_response(sid, ResponseHead(200, [(b"server", b"plait")]), True)
    answers = [e for _, e in client.receive_data(server.data_to_send()) if type(e) is ResponseHead]
    assert [a.status for a in answers] == [200]
    assert (b"server", b"plait") in answers[0].headers
