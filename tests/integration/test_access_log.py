"""The access log: one JSON line per request with what an operator needs; sampling keeps a
fraction of successes and every error."""

from __future__ import annotations

import time
from typing import Any

import httpx


def snapshot(port: int) -> dict[str, Any]:
    return {
        "clusters": [
            {"name": "web", "ports": [9080], "endpoints": [{"address": "127.0.0.1", "port": port}]}
        ]
    }


def test_a_success_line_has_every_field(proxies: Any, upstreams: Any) -> None:
    app = upstreams.start("web")
    proxy = proxies.start(snapshot(app.port), "--access-log-sample", "1")
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    r = httpx.post(
        proxy.url() + "/orders?id=7",
        content=b"12345",
        headers={"host": "web:9080", "traceparent": parent},
    )
    assert r.status_code == 200
    entry = proxy.wait_for_log(lambda e: e.get("path") == "/orders?id=7")
    assert entry["method"] == "POST" and entry["authority"] == "web:9080"
    assert entry["status"] == 200 and entry["response_flags"] == "-"
    assert entry["upstream_host"] == f"127.0.0.1:{app.port}"
    assert entry["upstream_cluster"] == "web.default"
    assert entry["bytes_received"] == 5 and entry["bytes_sent"] == len(r.content)
    assert entry["duration_ms"] > 0
    assert entry["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert entry["request_id"] and entry["time"].endswith("Z")


def test_sampling_keeps_errors_and_a_fraction_of_successes(proxies: Any, upstreams: Any) -> None:
    app = upstreams.start("web")
    proxy = proxies.start(snapshot(app.port), "--access-log-sample", "0")
    with httpx.Client(base_url=proxy.url(), timeout=5) as c:
        for _ in range(20):
            assert c.get("/ok", headers={"host": "web:9080"}).status_code == 200
        assert c.get("/missing", headers={"host": "nowhere"}).status_code == 404
    entry = proxy.wait_for_log(lambda e: e.get("response_flags") == "NR")
    assert entry["status"] == 404
    time.sleep(1.2)  # one more flush
    assert not [e for e in proxy.access_log_entries() if e.get("path") == "/ok"]


def test_prometheus_port_serves_istio_metrics_only(proxies: Any, upstreams: Any) -> None:
    app = upstreams.start("web")
    proxy = proxies.start(snapshot(app.port), "--prometheus", "127.0.0.1:0")
    assert httpx.get(proxy.url() + "/x", headers={"host": "web:9080"}).status_code == 200
    scrape = proxy.url("prometheus")
    text = httpx.get(scrape + "/stats/prometheus").text
    assert 'istio_requests_total{reporter="source"' in text and 'response_code="200"' in text
    assert "istio_request_duration_milliseconds_bucket" in text
    assert httpx.get(scrape + "/config_dump").status_code == 404
