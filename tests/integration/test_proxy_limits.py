"""Limits and timeouts a real proxy enforces on clients: 431, 400, 408, idle close.

After each refusal the proxy must still serve the next client (a peer's bad bytes never
take it down). The module's proxy runs with `--header-timeout 1 --idle-timeout 1`.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest


@pytest.fixture(scope="module")
def mesh(module_proxies: Any, module_upstreams: Any) -> SimpleNamespace:
    web = module_upstreams.start("web")
    snapshot = {"clusters": [{"name": "web", "ports": [9080], "endpoints": [web.endpoint]}]}
    proxy = module_proxies.start(snapshot, "--header-timeout", "1", "--idle-timeout", "1")
    return SimpleNamespace(proxy=proxy, web=web)


def assert_still_serving(mesh: SimpleNamespace) -> None:
    r = httpx.get(
        mesh.proxy.url() + "/ok", headers={"Host": "web:9080"}, trust_env=False, timeout=10
    )
    assert r.status_code == 200
    assert r.json()["target"] == "/ok"


def assert_refused(c: Any, status: int) -> None:
    """A local reply with `status`, flagged DPE, announcing and then doing a close."""
    r = c.read_response()
    assert r.status == status
    assert r.header("x-plait-response-flags") == "DPE"
    assert r.header("connection") == "close"
    assert c.at_eof(5)


# head limits ------------------------------------------------------------------------------


def test_request_head_over_60_kib_gets_431_and_close(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    c.send(b"GET /big HTTP/1.1\r\nHost: web:9080\r\nX-Big: " + b"a" * (61 * 1024) + b"\r\n\r\n")
    assert_refused(c, 431)
    assert_still_serving(mesh)


def test_more_than_100_header_fields_get_431_and_close(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    fields = b"".join(b"X-Field-%d: v\r\n" % i for i in range(100))
    c.send(b"GET /many HTTP/1.1\r\nHost: web:9080\r\n" + fields + b"\r\n")  # 101 fields
    assert_refused(c, 431)
    assert_still_serving(mesh)


def test_head_under_the_limits_is_forwarded(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    fields = b"".join(b"X-Field-%d: v\r\n" % i for i in range(80))
    c.send(
        b"GET /near HTTP/1.1\r\nHost: web:9080\r\nX-Big: "
        + b"a" * (50 * 1024)
        + b"\r\n"
        + fields
        + b"\r\n"
    )
    r = c.read_response()
    assert r.status == 200
    assert r.json()["target"] == "/near"


def test_trailer_section_over_60_kib_gets_431_and_close(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: web:9080\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Trailer: " + b"t" * (300 * 1024)
    )  # more than one read (256 KiB): the limit is checked per read
    assert_refused(c, 431)
    assert_still_serving(mesh)


def test_chunked_body_with_small_trailers_is_forwarded(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: web:9080\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nX-Other: d\r\n\r\n"
    )
    r = c.read_response()
    assert r.status == 200
    assert r.json()["body_len"] == 11


# malformed requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", id="garbage"),
        pytest.param(
            b"POST /x HTTP/1.1\r\nHost: web:9080\r\nContent-Length: 12abc\r\n\r\nhello",
            id="bad-content-length",
        ),
        pytest.param(
            b"POST /x HTTP/1.1\r\nHost: web:9080\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            id="two-content-lengths",
        ),
        pytest.param(
            b"POST /x HTTP/1.1\r\nHost: web:9080\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n",
            id="content-length-and-chunked",
        ),
    ],
)
def test_malformed_request_gets_400_and_close(
    mesh: SimpleNamespace, raw: Any, request_bytes: bytes
) -> None:
    c = raw(mesh.proxy.outbound)
    c.send(request_bytes)
    r = c.read_response()
    assert r.status == 400
    assert r.header("x-plait-response-flags") == "DPE"
    assert c.at_eof(5)
    assert mesh.web.requests == [] or all(q["target"] != "/x" for q in mesh.web.requests)
    assert_still_serving(mesh)


def test_http11_request_without_host_gets_400(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    r = c.request("GET", "/x")
    assert r.status == 400  # RFC 9112 section 3.2
    assert r.header("x-plait-response-flags") == "DPE"
    assert_still_serving(mesh)


def test_bad_chunk_in_a_body_already_being_forwarded_gets_400_not_a_hang(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound)
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: web:9080\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    time.sleep(0.3)  # the head has gone upstream; now the body turns bad
    c.send(b"ZZ-not-a-size\r\n")
    assert_refused(c, 400)
    assert_still_serving(mesh)


def test_valid_request_followed_by_garbage_is_answered_then_refused(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound)
    c.send(b"GET /first HTTP/1.1\r\nHost: web:9080\r\n\r\n\x00\x01garbage\r\n\r\n")
    r = c.read_response()
    assert r.status == 200
    assert r.json()["target"] == "/first"
    assert_refused(c, 400)
    assert_still_serving(mesh)


# timeouts ---------------------------------------------------------------------------------


def test_no_request_head_within_header_timeout_gets_408_then_close(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound)
    assert_refused(c, 408)  # sent nothing at all
    assert_still_serving(mesh)


def test_stalled_partial_head_gets_408_then_close(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    c.send(b"GET /slowloris HTTP/1.1\r\nHost: web:9080\r\nX-A: ")
    assert_refused(c, 408)
    assert all(q["target"] != "/slowloris" for q in mesh.web.requests)
    assert_still_serving(mesh)


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound)
    assert c.request("GET", "/once", {"Host": "web:9080"}).status == 200
    assert not c.at_eof(0.5)  # idle for less than --idle-timeout: still open
    assert c.at_eof(5)  # 1 s idle timeout, checked once a second
    assert_still_serving(mesh)


def test_keep_alive_connection_in_use_is_not_closed_by_idle_timeout(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound)
    for i in range(9):
        assert c.request("GET", f"/busy/{i}", {"Host": "web:9080"}).status == 200
        time.sleep(0.25)  # over 2 s in all, never idle for the 1 s idle timeout
