"""Gateway mode, clean shutdown and configuration errors of a real `plait proxy` process."""

from __future__ import annotations

import signal
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import httpx
import pytest


def cluster(name: str, upstream: Any) -> dict[str, Any]:
    return {"name": name, "ports": [9080], "endpoints": [upstream.endpoint]}


# gateway mode -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(module_proxies: Any, module_upstreams: Any) -> SimpleNamespace:
    page = module_upstreams.start("productpage")
    api = module_upstreams.start("api")
    snapshot = {
        "node": {"name": "ingress", "gateway": "gw"},
        "clusters": [cluster("productpage", page), cluster("api", api)],
        "routes": [
            {
                "name": "bookinfo",
                "parent_kind": "Gateway",
                "parent_name": "gw",
                "rules": [
                    {
                        "matches": [{"path": {"type": "Exact", "value": "/productpage"}}],
                        "backends": [{"service": "productpage"}],
                    },
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                        "backends": [{"service": "api"}],
                    },
                ],
            }
        ],
    }
    proxy = module_proxies.start(snapshot, mode="gateway")
    return SimpleNamespace(proxy=proxy, page=page, api=api)


def via_gateway(gateway: SimpleNamespace, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(gateway.proxy.url("gateway") + path, trust_env=False, timeout=30, **kwargs)


@pytest.mark.parametrize("path", ["/productpage", "/productpage?u=normal"])
def test_gateway_routes_exact_path_to_its_service(gateway: SimpleNamespace, path: str) -> None:
    r = via_gateway(gateway, path)
    assert r.status_code == 200
    assert r.json()["server"] == "productpage"
    assert r.json()["target"] == path


@pytest.mark.parametrize("path", ["/api", "/api/", "/api/v1/products/1"])
def test_gateway_routes_path_prefix_to_its_service(gateway: SimpleNamespace, path: str) -> None:
    r = via_gateway(gateway, path)
    assert r.status_code == 200
    assert r.json()["server"] == "api"


@pytest.mark.parametrize("path", ["/", "/nothing", "/productpage/extra", "/apiary"])
def test_gateway_unmatched_path_gets_404_nr(gateway: SimpleNamespace, path: str) -> None:
    r = via_gateway(gateway, path)
    assert r.status_code == 404
    assert r.headers["x-plait-response-flags"] == "NR"


def test_gateway_sets_x_forwarded_for(gateway: SimpleNamespace) -> None:
    echo = via_gateway(gateway, "/productpage").json()
    headers = dict(echo["headers"])
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    echo = via_gateway(gateway, "/productpage", headers={"X-Forwarded-For": "203.0.113.7"}).json()
    assert dict(echo["headers"])["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"


def test_gateway_mode_has_no_outbound_listener(gateway: SimpleNamespace) -> None:
    assert set(gateway.proxy.addresses) == {"gateway", "admin"}


# shutdown ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_sigterm_drains_in_flight_request_and_exits_0(
    proxies: Any, upstreams: Any, raw: Any
) -> None:
    web = upstreams.start("web")
    proxy = proxies.start({"clusters": [cluster("web", web)]}, drain_timeout=5.0)
    assert proxy.children() == []
    idle = raw(proxy.outbound)
    assert idle.request("GET", "/warm", {"Host": "web:9080"}).status == 200
    result: dict[str, Any] = {}

    def slow_request() -> None:
        try:
            r = httpx.get(
                proxy.url() + "/delay?s=1",
                headers={"Host": "web:9080"},
                trust_env=False,
                timeout=30,
            )
            result["status"], result["target"] = r.status_code, r.json()["target"]
            result["connection"] = r.headers.get("connection")
        except Exception as exc:  # reported below, in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=slow_request)
    thread.start()
    web.wait_for_request("/delay?s=1")
    started = time.monotonic()
    proxy.popen.send_signal(signal.SIGTERM)
    assert idle.at_eof(5)  # an idle keep-alive connection is closed at once
    code = proxy.popen.wait(timeout=20)
    elapsed = time.monotonic() - started
    thread.join(timeout=20)
    assert code == 0, proxy.stderr()
    assert elapsed < 5.0 + 3  # within the drain timeout (plus process exit)
    # Answered in full, and told not to reuse the connection (the proxy is draining).
    assert result == {"status": 200, "target": "/delay?s=1", "connection": "close"}
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.outbound), timeout=2).close()


@pytest.mark.timeout(60)
def test_sigterm_with_nothing_in_flight_exits_without_waiting_for_drain_timeout(
    proxies: Any, upstreams: Any
) -> None:
    web = upstreams.start("web")
    proxy = proxies.start({"clusters": [cluster("web", web)]}, drain_timeout=30.0)
    assert (
        httpx.get(proxy.url() + "/x", headers={"Host": "web:9080"}, trust_env=False).status_code
        == 200
    )
    started = time.monotonic()
    proxy.popen.send_signal(signal.SIGTERM)
    assert proxy.popen.wait(timeout=20) == 0
    assert time.monotonic() - started < 15


# configuration errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("snapshot", "field_path"),
    [
        pytest.param(
            {"clusters": [{"name": "web", "endpoints": [], "bogus": 1}]},
            "clusters[0].bogus: unknown field",
            id="unknown-field",
        ),
        pytest.param(
            {
                "clusters": [
                    {"name": "web", "endpoints": [{"address": "127.0.0.1", "port": 1, "wieght": 2}]}
                ]
            },
            "clusters[0].endpoints[0].wieght: unknown field",
            id="unknown-nested-field",
        ),
        pytest.param(
            {
                "clusters": [{"name": "web"}],
                "routes": [
                    {
                        "name": "r",
                        "parent_name": "web",
                        "rules": [{"backends": [{"service": "gone"}]}],
                    }
                ],
            },
            "routes[0].rules[0].backends[0].service",
            id="dangling-backend",
        ),
        pytest.param(
            {"clusters": [{"name": "web", "endpoints": [{"address": "127.0.0.1", "port": "80"}]}]},
            "clusters[0].endpoints[0].port",
            id="wrong-type",
        ),
    ],
)
def test_invalid_snapshot_exits_2_naming_the_field(
    proxies: Any, snapshot: dict[str, Any], field_path: str
) -> None:
    proxy = proxies.start(snapshot, wait=False)
    assert proxy.popen.wait(timeout=30) == 2
    assert field_path in proxy.stderr()
