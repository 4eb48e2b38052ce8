"""Spans for each proxy hop arrive at a real OTLP/HTTP receiver with parent/child links."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest


class Receiver:
    """An OTLP/HTTP collector stand-in: decodes every POST /v1/traces into spans."""

    def __init__(self) -> None:
        spans: list[Any] = []
        self.spans = spans

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (stdlib name)
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    service = {
                        a.key: a.value.string_value for a in resource_spans.resource.attributes
                    }
                    for scope in resource_spans.scope_spans:
                        spans.extend((service.get("service.name"), s) for s in scope.spans)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.timeout(60)
def test_a_trace_through_two_proxies_reaches_the_collector_with_parent_links(
    proxies: Any, upstreams: Any
) -> None:
    receiver = Receiver()
    try:
        app = upstreams.start("web")
        trace = ["--tracing-endpoint", receiver.url, "--trace-sample", "1"]
        server_snapshot = {"node": {"name": "web-0", "service": "web"}, "clusters": []}
        server = proxies.start(server_snapshot, *trace, app=app.port)
        client_snapshot = {
            "node": {"name": "client-0", "service": "client"},
            "clusters": [
                {
                    "name": "web",
                    "ports": [9080],
                    "endpoints": [{"address": "127.0.0.1", "port": server.port("inbound")}],
                }
            ],
        }
        client = proxies.start(client_snapshot, *trace)
        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        r = httpx.get(client.url() + "/hello", headers={"host": "web:9080", "traceparent": parent})
        assert r.status_code == 200
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(receiver.spans) < 2:
            time.sleep(0.1)
    finally:
        receiver.close()
    by_service = {service: span for service, span in receiver.spans}
    assert set(by_service) == {"client", "web"}, receiver.spans
    outbound, inbound = by_service["client"], by_service["web"]
    trace_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    assert outbound.trace_id == inbound.trace_id == trace_id
    assert outbound.parent_span_id == bytes.fromhex("b7ad6b7169203331")  # the caller's span
    assert inbound.parent_span_id == outbound.span_id  # the server hop is the client hop's child
    assert (outbound.kind, inbound.kind) == (3, 2)  # CLIENT, SERVER
    attrs = {a.key: a.value for a in inbound.attributes}
    assert attrs["http.status_code"].int_value == 200
