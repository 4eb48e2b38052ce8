"""HTTP/1.1 data path through a real `plait proxy`: routing, keep-alive, headers, bodies.

One proxy (outbound + inbound to an app) and its upstreams serve the whole module; a test
that counts connections uses an upstream no other test touches.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

PATTERN = bytes(range(256)) * 4096  # what the upstream's /stream and /close-delimited send
# Hop-by-hop fields (RFC 9110 section 7.6.1) a proxy must not forward, either way.
HOP_BY_HOP = {"keep-alive", "proxy-connection", "te", "upgrade", "trailer"}


def cluster(name: str, upstream: Any, ports: tuple[int, ...] = (9080,)) -> dict[str, Any]:
    return {"name": name, "ports": list(ports), "endpoints": [upstream.endpoint]}


@pytest.fixture(scope="module")
def mesh(module_proxies: Any, module_upstreams: Any) -> SimpleNamespace:
    web = module_upstreams.start("web")
    reviews = module_upstreams.start("reviews")
    app = module_upstreams.start("app")
    counted = module_upstreams.start("counted")
    stale = module_upstreams.start("stale", close_after_response=True)
    snapshot = {
        "version": "1",
        "clusters": [
            cluster("web", web),
            cluster("reviews", reviews),
            cluster("counted", counted),
            cluster("stale", stale),
        ],
    }
    proxy = module_proxies.start(snapshot, app=app.port)
    return SimpleNamespace(
        proxy=proxy, web=web, reviews=reviews, app=app, counted=counted, stale=stale
    )


def client(
    mesh: SimpleNamespace, host: str = "web:9080", listener: str = "outbound"
) -> httpx.Client:
    return httpx.Client(
        base_url=mesh.proxy.url(listener), headers={"Host": host}, trust_env=False, timeout=30
    )


def headers_of(echo: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name, []).append(value)
    return out


# routing ----------------------------------------------------------------------------------


def test_host_header_routes_to_service_and_upstream_sees_origin_form(mesh: SimpleNamespace) -> None:
    with client(mesh) as c:
        r = c.get("/x?q=1")
    assert r.status_code == 200
    echo = r.json()
    assert echo["server"] == "web"
    assert echo["target"] == "/x?q=1"
    assert headers_of(echo)["host"] == ["web:9080"]


def test_absolute_form_request_routes_and_upstream_sees_origin_form(
    mesh: SimpleNamespace, curl: Any
) -> None:
    result = curl("-x", mesh.proxy.url(), "http://web:9080/x")
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["server"] == "web"
    assert echo["target"] == "/x"
    headers = headers_of(echo)
    assert headers["host"] == ["web:9080"]
    assert "proxy-connection" not in headers


def test_absolute_form_with_query_and_no_path_keeps_the_query(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound)
    echo = c.request("GET", "http://web:9080?a=b", {"Host": "web:9080"}).json()
    assert echo["target"] == "/?a=b"  # RFC 9112 section 3.2.1: an empty path is "/"
    assert headers_of(echo)["host"] == ["web:9080"]


@pytest.mark.parametrize(
    "authority",
    ["reviews", "reviews:9080", "reviews.default", "reviews.default.svc.cluster.local:9080"],
)
def test_service_names_route_short_and_fully_qualified(
    mesh: SimpleNamespace, authority: str
) -> None:
    with client(mesh, authority) as c:
        r = c.get("/ratings")
    assert r.status_code == 200
    assert r.json()["server"] == "reviews"


@pytest.mark.parametrize("authority", ["web:9999", "nosuchservice:9080"])
def test_unknown_service_or_port_gets_404_with_flag_nr(
    mesh: SimpleNamespace, authority: str
) -> None:
    with client(mesh, authority) as c:
        r = c.get("/x")
        assert r.status_code == 404
        assert r.headers["x-plait-response-flags"] == "NR"
        # The connection survives a local reply.
        c.headers["Host"] = "web:9080"
        assert c.get("/x").status_code == 200


def test_inbound_listener_forwards_to_the_app(mesh: SimpleNamespace) -> None:
    with client(mesh, "anything.example:80", listener="inbound") as c:
        r = c.get("/hello")
    assert r.status_code == 200
    echo = r.json()
    assert echo["server"] == "app"
    assert echo["target"] == "/hello"


# keep-alive -------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection_on_each_side(mesh: SimpleNamespace) -> None:
    before = mesh.proxy.listener_stat("outbound", "downstream_cx_total")
    with client(mesh, "counted:9080") as c:
        for i in range(50):
            r = c.get(f"/n/{i}")
            assert r.status_code == 200
            assert r.json()["target"] == f"/n/{i}"
    assert mesh.proxy.listener_stat("outbound", "downstream_cx_total") - before == 1
    assert mesh.counted.connections == 1
    assert len(mesh.counted.requests) == 50


def test_client_connection_close_is_honoured(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    r = c.request("GET", "/bye", {"Host": "web:9080", "Connection": "close"})
    assert r.status == 200
    assert r.header("connection") == "close"
    assert c.at_eof(5)


def test_http10_client_is_answered_in_http10_terms(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    # Keep-alive only when asked for (RFC 9112 section 9.3 / RFC 2068 section 19.7.1).
    c.send(b"GET /one HTTP/1.0\r\nHost: web:9080\r\nConnection: keep-alive\r\n\r\n")
    r = c.read_response()
    assert r.status == 200
    assert r.header("connection") == "keep-alive"
    assert r.json()["target"] == "/one"
    # A chunked upstream response cannot be chunked to an HTTP/1.0 client: the close ends it.
    c.send(b"GET /chunked?pieces=3 HTTP/1.0\r\nHost: web:9080\r\nConnection: keep-alive\r\n\r\n")
    r = c.read_response()
    assert r.status == 200
    assert r.header("transfer-encoding") is None
    assert r.body == b"".join(b"piece-%d\n" % i * (i + 1) for i in range(3))
    assert c.at_eof(5)


def test_idle_pooled_upstream_connection_is_closed_after_upstream_idle_timeout(
    proxies: Any, upstreams: Any
) -> None:
    web = upstreams.start("web")
    proxy = proxies.start({"clusters": [cluster("web", web)]}, "--upstream-idle-timeout", "1")
    url = proxy.url() + "/x"
    assert httpx.get(url, headers={"Host": "web:9080"}, trust_env=False).status_code == 200
    assert web.closed == 0  # pooled
    deadline = time.monotonic() + 10
    while web.closed == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert web.closed == 1
    assert httpx.get(url, headers={"Host": "web:9080"}, trust_env=False).status_code == 200
    assert web.connections == 2


# headers ----------------------------------------------------------------------------------


def test_hop_by_hop_request_headers_are_not_forwarded(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    request = (
        b"GET /echo HTTP/1.1\r\n"
        b"Host: web:9080\r\n"
        b"Connection: keep-alive, X-Conn-Custom\r\n"
        b"X-Conn-Custom: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"TE: trailers\r\n"
        b"Upgrade: h2c\r\n"  # not an upgrade: Connection does not list it
        b"Trailer: X-Checksum\r\n"
        b"X-Keep: yes\r\n"
        b"\r\n"
    )
    c.send(request)
    r = c.read_response()
    assert r.status == 200
    headers = headers_of(r.json())
    assert not HOP_BY_HOP & headers.keys()
    assert "x-conn-custom" not in headers
    assert "connection" not in headers or "x-conn-custom" not in headers["connection"][0].lower()
    assert headers["x-keep"] == ["yes"]
    # Still plain HTTP/1.1 on the same connection.
    assert c.request("GET", "/again", {"Host": "web:9080"}).json()["target"] == "/again"


def test_hop_by_hop_response_headers_are_not_forwarded(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    r = c.request("GET", "/hop", {"Host": "web:9080"})
    assert r.status == 200
    assert r.body == b"hop\n"
    names = r.header_names()
    assert not HOP_BY_HOP & names
    assert "x-resp-custom" not in names
    assert "x-resp-custom" not in (r.header("connection") or "").lower()
    assert r.header("x-keep") == "yes"
    assert c.request("GET", "/again", {"Host": "web:9080"}).status == 200


def test_request_id_is_added_when_missing(mesh: SimpleNamespace) -> None:
    with client(mesh) as c:
        first = headers_of(c.get("/x").json())["x-request-id"]
        second = headers_of(c.get("/x").json())["x-request-id"]
    assert len(first) == 1 and len(first[0]) == 36
    assert first != second


def test_request_id_is_preserved_when_present(mesh: SimpleNamespace) -> None:
    with client(mesh) as c:
        echo = c.get("/x", headers={"x-request-id": "abc-123"}).json()
    assert headers_of(echo)["x-request-id"] == ["abc-123"]


# bodies -----------------------------------------------------------------------------------


def test_content_length_post_of_10_mib_is_echoed_intact(mesh: SimpleNamespace) -> None:
    body = os.urandom(10 * 1024 * 1024)
    with client(mesh) as c:
        r = c.post("/mirror", content=body)
    assert r.status_code == 200
    assert len(r.content) == len(body)
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(body).digest()


def test_chunked_upload_arrives_intact(mesh: SimpleNamespace, curl: Any, tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "upload.bin"
    path.write_bytes(body)
    result = curl(
        "-H", "Host: web:9080", "-H", "Transfer-Encoding: chunked",
        "--data-binary", f"@{path}", mesh.proxy.url() + "/echo",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    echo = json.loads(result.stdout)
    assert echo["method"] == "POST"
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert headers_of(echo)["transfer-encoding"] == ["chunked"]


def test_chunked_response_passes_intact(mesh: SimpleNamespace) -> None:
    expected = b"".join(b"piece-%d\n" % i * (i + 1) for i in range(20))
    with client(mesh) as c:
        r = c.get("/chunked?pieces=20")
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.content == expected
        assert c.get("/x").status_code == 200


def test_close_delimited_response_reaches_http11_client_intact(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound)
    r = c.request("GET", "/close-delimited?size=300000", {"Host": "web:9080"})
    assert r.status == 200
    # Re-framed for the HTTP/1.1 client, so its connection can stay open.
    assert r.header("transfer-encoding") == "chunked"
    assert r.body == PATTERN[:300000]
    assert c.request("GET", "/after", {"Host": "web:9080"}).json()["target"] == "/after"


def test_head_response_has_no_body_and_connection_is_reused(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound, timeout=5)
    for _ in range(2):  # the second HEAD goes over the pooled upstream connection
        r = c.request("HEAD", "/echo", {"Host": "web:9080"})
        assert r.status == 200
        assert int(r.header("content-length") or 0) > 0
    r = c.request("GET", "/after-head", {"Host": "web:9080"})
    assert r.status == 200
    assert r.json()["target"] == "/after-head"


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_status_passes_and_connection_is_reused(
    mesh: SimpleNamespace, raw: Any, status: int
) -> None:
    c = raw(mesh.proxy.outbound, timeout=5)
    for _ in range(2):
        r = c.request("GET", f"/status?code={status}", {"Host": "web:9080"})
        assert r.status == status
        assert r.body == b""
        assert r.header("transfer-encoding") is None
    if status == 304:
        assert r.header("etag") == '"v1"'
    assert c.request("GET", "/after", {"Host": "web:9080"}).json()["target"] == "/after"


def test_expect_100_continue_is_forwarded(mesh: SimpleNamespace, curl: Any, tmp_path: Path) -> None:
    body = os.urandom(5 * 1024 * 1024)
    path = tmp_path / "upload.bin"
    path.write_bytes(body)
    started = time.monotonic()
    # curl waits up to --expect100-timeout for the 100 before sending the body anyway:
    # with 30 s, a proxy that swallows the 100 makes this test slow, and fail.
    result = curl(
        "-v", "-H", "Host: web:9080", "-H", "Expect: 100-continue", "--expect100-timeout", "30",
        "--data-binary", f"@{path}", mesh.proxy.url() + "/echo",
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert b"< HTTP/1.1 100 Continue" in result.stderr
    echo = json.loads(result.stdout)
    assert echo["body_len"] == len(body)
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert elapsed < 15


# pipelining and pooling -------------------------------------------------------------------


def test_pipelined_requests_get_responses_in_order(mesh: SimpleNamespace, raw: Any) -> None:
    c = raw(mesh.proxy.outbound)
    # The first answer is the slowest: the others must still come after it.
    c.send(
        b"GET /delay?s=0.3 HTTP/1.1\r\nHost: web:9080\r\n\r\n"
        b"POST /second HTTP/1.1\r\nHost: web:9080\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /third HTTP/1.1\r\nHost: web:9080\r\n\r\n"
    )
    echoes = [c.read_response().json() for _ in range(3)]
    assert [e["target"] for e in echoes] == ["/delay?s=0.3", "/second", "/third"]
    assert echoes[1]["body_len"] == 5


def test_request_pipelined_after_a_large_body_is_not_refused_as_too_large(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound)
    assert c.request("GET", "/warm", {"Host": "web:9080"}).status == 200
    c.send(b"POST /discard HTTP/1.1\r\nHost: web:9080\r\nContent-Length: 100000\r\n\r\n")
    time.sleep(0.1)
    # One read holds the body's last 100 kB and the start of the next head: only the
    # latter counts towards the 60 KiB head limit.
    c.send(b"x" * 100000 + b"GET /second HTTP/1.1\r\nHost: we")
    time.sleep(0.1)
    c.send(b"b:9080\r\n\r\n")
    assert c.read_response().json() == {"received": 100000}
    assert c.read_response().json()["target"] == "/second"


def test_many_pipelined_requests_in_one_write_are_all_answered(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound)
    count = 1500  # about 80 kB of heads: more than the head limit, in one write
    c.send(b"".join(b"GET /p/%04d HTTP/1.1\r\nHost: web:9080\r\n\r\n" % i for i in range(count)))
    targets = [c.read_response().json()["target"] for _ in range(count)]
    assert targets == [f"/p/{i:04d}" for i in range(count)]


def test_stale_pooled_connection_does_not_surface_errors(mesh: SimpleNamespace) -> None:
    with client(mesh, "stale:9080") as c:
        statuses = [c.get(f"/s/{i}").status_code for i in range(20)]
    assert statuses == [200] * 20
    assert len(mesh.stale.requests) >= 20
