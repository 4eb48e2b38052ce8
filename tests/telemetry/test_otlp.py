"""OTLP/HTTP export: a real HTTP server receives the protobuf POSTs and decodes them."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from plait.telemetry.otlp import OtlpExporter, encode_spans
from plait.telemetry.tracing import CLIENT, SERVER, Span, Tracer, extract, inject


class Collector(ThreadingHTTPServer):
    """A minimal OTLP/HTTP receiver: keeps each decoded request and its path."""

    def __init__(self, status: int = 200) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.status = status
        self.requests: list[tuple[str, str, ExportTraceServiceRequest]] = []
        self.arrived = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real collector

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        server = self.server
        assert isinstance(server, Collector)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        with server.arrived:
            server.requests.append((self.path, self.headers["Content-Type"], request))
            server.arrived.notify_all()
        self.send_response(server.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def spans_of(collector: Collector) -> dict[str, list[tuple[PbSpan, str]]]:
    """Spans by service.name of their resource."""
    out: dict[str, list[tuple[PbSpan, str]]] = {}
    for _, _, request in collector.requests:
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    out.setdefault(attrs["service.name"], []).append((span, scope_spans.scope.name))
    return out


def attributes(span: PbSpan) -> dict[str, object]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def test_two_hop_trace_arrives_with_parent_child_links(collector: Collector):
    pp_export = OtlpExporter(collector.url, "productpage", {"service.namespace": "default"})
    reviews_export = OtlpExporter(collector.url + "/v1/traces", "reviews", interval=0.05)
    pp_export.start()
    reviews_export.start()
    pp = Tracer(1.0, pp_export.submit, random.Random(1))
    reviews = Tracer(1.0, reviews_export.submit, random.Random(2))

    outbound = pp.start_span(None, CLIENT, b"reviews:9080", b"/reviews/0", b"GET")
    wire: list[tuple[bytes, bytes]] = [(b"host", b"reviews:9080")]
    inject(wire, outbound)
    inbound = reviews.start_span(extract(wire), SERVER, b"reviews:9080", b"/reviews/0", b"GET")
    reviews.end_span(inbound, 200, peer_principal="spiffe://cluster.local/ns/default/sa/pp")
    pp.end_span(outbound, 200, upstream_address="127.0.0.1:15006", upstream_cluster="reviews")
    pp_export.close()
    reviews_export.close()

    collector.wait_for(2)
    assert {(path, ctype) for path, ctype, _ in collector.requests} == {
        ("/v1/traces", "application/x-protobuf")
    }
    by_service = spans_of(collector)
    [(client, scope)] = by_service["productpage"]
    [(server, _)] = by_service["reviews"]
    assert scope == "plait"
    assert client.trace_id == server.trace_id == bytes.fromhex(outbound.trace_id.decode())
    assert client.span_id == bytes.fromhex(outbound.span_id.decode()) and len(client.span_id) == 8
    assert client.parent_span_id == b""  # the root
    assert server.parent_span_id == client.span_id  # the child of the caller's hop
    assert (client.kind, server.kind) == (PbSpan.SPAN_KIND_CLIENT, PbSpan.SPAN_KIND_SERVER)
    assert client.name == server.name == "reviews:9080/reviews/0"
    for span, ours in ((client, outbound), (server, inbound)):
        assert span.start_time_unix_nano == ours.start_ns
        assert span.end_time_unix_nano == ours.end_ns >= ours.start_ns
        assert abs(span.start_time_unix_nano / 1e9 - time.time()) < 60
        assert span.status.code == Status.STATUS_CODE_UNSET
    assert attributes(client)["upstream_address"] == "127.0.0.1:15006"
    assert attributes(client)["http.status_code"] == 200
    assert attributes(server)["peer.principal"] == "spiffe://cluster.local/ns/default/sa/pp"
    resource = {
        a.key: a.value.string_value
        for a in collector.requests[0][2].resource_spans[0].resource.attributes
    } | {
        a.key: a.value.string_value
        for a in collector.requests[1][2].resource_spans[0].resource.attributes
    }
    assert resource["service.namespace"] == "default"
    assert pp_export.exported == reviews_export.exported == 1


def finished_span(tracer: Tracer, status: int = 200) -> Span:
    span = tracer.start_span(None, SERVER, b"a", b"/")
    tracer.end_span(span, status)
    return span


def test_spans_are_sent_in_batches_of_at_most_batch_size(collector: Collector):
    exporter = OtlpExporter(collector.url, "svc", batch_size=3, interval=60)
    tracer = Tracer(1.0, exporter.submit)
    for _ in range(7):
        finished_span(tracer)
    exporter.start()  # a full batch wakes the thread long before the 60 s interval
    collector.wait_for(2)
    exporter.close()
    sizes = [len(r.resource_spans[0].scope_spans[0].spans) for _, _, r in collector.requests]
    assert sizes == [3, 3, 1] and exporter.exported == 7


def test_a_full_queue_drops_and_counts_instead_of_blocking():
    exporter = OtlpExporter("http://127.0.0.1:9", "svc", max_queue=2)
    tracer = Tracer(1.0, exporter.submit)
    for _ in range(5):
        finished_span(tracer)
    assert exporter.dropped == 3


def test_an_unreachable_or_refusing_collector_counts_failures(collector: Collector):
    collector.status = 500
    refused = OtlpExporter(collector.url, "svc")
    unreachable = OtlpExporter("http://127.0.0.1:9/v1/traces", "svc", timeout=1)
    for exporter in (refused, unreachable):
        exporter.submit(finished_span(Tracer(1.0)))
        exporter.start()
        exporter.close()
        assert (exporter.exported, exporter.failed) == (0, 1)


def test_error_spans_carry_error_status_and_attributes_keep_their_types():
    tracer = Tracer(1.0)
    span = finished_span(tracer, 503)
    span.attributes["ratio"] = 0.5
    span.attributes["retried"] = True
    request = ExportTraceServiceRequest.FromString(encode_spans([span], {"service.name": "svc"}))
    [pb] = request.resource_spans[0].scope_spans[0].spans
    assert pb.status.code == Status.STATUS_CODE_ERROR
    assert (
        attributes(pb).items() >= {"http.status_code": 503, "ratio": 0.5, "retried": True}.items()
    )


def test_endpoint_must_be_an_http_url():
    with pytest.raises(ValueError, match="http"):
        OtlpExporter("collector:4318", "svc")
