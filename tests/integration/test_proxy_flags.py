"""Response flags: each failure becomes the local reply Envoy users expect, tagged with its
flag in `x-plait-response-flags` and in the access log (JSON lines, flushed every second).

Each test uses a path of its own so it can find its access-log entry.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest


def cluster(name: str, *endpoints: Any) -> dict[str, Any]:
    return {
        "name": name,
        "ports": [9080],
        "endpoints": [{"address": "127.0.0.1", "port": e.port} for e in endpoints],
    }


@pytest.fixture(scope="module")
def mesh(module_proxies: Any, module_upstreams: Any, module_dead_port: Any) -> SimpleNamespace:
    web = module_upstreams.start("web")
    other = module_upstreams.start("other")
    snapshot = {
        "clusters": [
            cluster("web", web),
            cluster("empty"),
            cluster("dead", module_dead_port),
            cluster("half", module_dead_port, other),
            cluster("slow", web),
        ],
        "routes": [
            {
                "name": "slow-timeout",
                "parent_name": "slow",
                "rules": [{"backends": [{"service": "slow"}], "timeout_ms": 300}],
            }
        ],
    }
    proxy = module_proxies.start(snapshot)
    return SimpleNamespace(proxy=proxy, web=web, other=other)


def get(mesh: SimpleNamespace, host: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(
        mesh.proxy.url() + path, headers={"Host": host}, trust_env=False, timeout=30, **kwargs
    )


def assert_local_reply(r: httpx.Response, status: int, flag: str) -> None:
    assert r.status_code == status
    assert r.headers["x-plait-response-flags"] == flag
    assert r.headers["content-type"] == "text/plain"


def assert_logged(mesh: SimpleNamespace, path: str, status: int, flag: str) -> None:
    entry = mesh.proxy.wait_for_log(lambda e: e.get("path") == path)
    assert entry["status"] == status
    assert entry["response_flags"] == flag


def test_no_route_gets_404_nr(mesh: SimpleNamespace) -> None:
    r = get(mesh, "nowhere:9080", "/flag-nr")
    assert_local_reply(r, 404, "NR")
    assert_logged(mesh, "/flag-nr", 404, "NR")


def test_service_without_endpoints_gets_503_uh(mesh: SimpleNamespace) -> None:
    r = get(mesh, "empty:9080", "/flag-uh")
    assert_local_reply(r, 503, "UH")
    assert_logged(mesh, "/flag-uh", 503, "UH")


def test_endpoint_refusing_connections_gets_503_uf(mesh: SimpleNamespace) -> None:
    r = get(mesh, "dead:9080", "/flag-uf")
    assert_local_reply(r, 503, "UF")
    assert_logged(mesh, "/flag-uf", 503, "UF")


def test_connect_failure_is_retried_on_another_endpoint(mesh: SimpleNamespace) -> None:
    failures_before = mesh.proxy.listener_stat("outbound", "upstream_cx_connect_fail")
    with httpx.Client(
        base_url=mesh.proxy.url(), headers={"Host": "half:9080"}, trust_env=False
    ) as c:
        # A fresh connection per request, so each one picks a host (half of them the dead one).
        statuses = [
            c.get(f"/half/{i}", headers={"Connection": "close"}).status_code for i in range(20)
        ]
    assert statuses == [200] * 20
    assert sum(1 for q in mesh.other.requests if q["target"].startswith("/half/")) == 20
    # With two hosts picked at random, 20 requests all missing the dead one: p = 2**-20.
    assert mesh.proxy.listener_stat("outbound", "upstream_cx_connect_fail") > failures_before


def test_upstream_closing_without_answer_gets_503_uc(mesh: SimpleNamespace) -> None:
    r = get(mesh, "web:9080", "/hang-close")
    assert_local_reply(r, 503, "UC")
    assert_logged(mesh, "/hang-close", 503, "UC")


def test_upstream_closing_mid_response_truncates_it_and_logs_uc(mesh: SimpleNamespace) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        get(mesh, "web:9080", "/partial")
    assert_logged(mesh, "/partial", 200, "UC")


@pytest.mark.parametrize("path", ["/big-head", "/garbage"])
def test_upstream_invalid_response_gets_502_upe(mesh: SimpleNamespace, path: str) -> None:
    r = get(mesh, "web:9080", path)
    assert_local_reply(r, 502, "UPE")
    assert_logged(mesh, path, 502, "UPE")


def test_complete_response_followed_by_junk_is_delivered_not_502(mesh: SimpleNamespace) -> None:
    with httpx.Client(
        base_url=mesh.proxy.url(), headers={"Host": "web:9080"}, trust_env=False
    ) as c:
        r = c.get("/overlong")  # Content-Length: 5, then more bytes in the same packet
        assert r.status_code == 200
        assert r.content == b"hello"
        assert "x-plait-response-flags" not in r.headers
        # The junk never reaches the next request: that connection was not pooled.
        assert c.get("/after-junk").json()["target"] == "/after-junk"


def test_route_timeout_gets_504_ut(mesh: SimpleNamespace) -> None:
    started = time.monotonic()
    r = get(mesh, "slow:9080", "/delay?s=2&t=ut")
    elapsed = time.monotonic() - started
    assert_local_reply(r, 504, "UT")
    assert 0.25 <= elapsed < 1.9  # timeout_ms 300; the upstream would answer after 2 s
    assert_logged(mesh, "/delay?s=2&t=ut", 504, "UT")


def test_client_disconnect_while_upstream_is_slow_is_logged_dc(
    mesh: SimpleNamespace, raw: Any
) -> None:
    c = raw(mesh.proxy.outbound)
    c.send(b"GET /delay?s=1.5&t=dc HTTP/1.1\r\nHost: web:9080\r\n\r\n")
    mesh.web.wait_for_request("/delay?s=1.5&t=dc")
    c.close()
    entry = mesh.proxy.wait_for_log(lambda e: e.get("path") == "/delay?s=1.5&t=dc")
    assert entry["response_flags"] == "DC"
    # The proxy carries on.
    assert get(mesh, "web:9080", "/after-dc").status_code == 200


def test_flags_are_counted_in_stats(mesh: SimpleNamespace) -> None:
    get(mesh, "nowhere:9080", "/count-nr")
    counters = mesh.proxy.stats()["listeners"]["outbound"]
    for flag in ("NR", "UH", "UF", "UC", "UT", "DC"):
        assert counters.get(f"response_flags.{flag}", 0) >= 1, flag
