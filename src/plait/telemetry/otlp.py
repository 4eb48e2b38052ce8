"""Export finished spans over OTLP/HTTP (protobuf), off the event loop.

Theory of operation: `submit` (the tracer's sink) appends to a bounded deque and never
blocks; when the deque is full the span is dropped and counted. One daemon thread wakes
every `interval` seconds, or as soon as `batch_size` spans wait, encodes batches of at most
`batch_size` spans and POSTs each to `<endpoint>/v1/traces` on a kept-alive connection.
A failed POST is counted and its spans are lost: tracing is best effort and must never
push back on requests. Protocol: https://opentelemetry.io/docs/specs/otlp/#otlphttp.

Ownership: the proxy app calls `start()` once and `close()` on shutdown; `close()` sends
what is queued (bounded by its timeout) and joins the thread. It blocks, so call it from
a worker thread (`await asyncio.to_thread(exporter.close)`) when an event loop is running.
"""

from __future__ import annotations

import binascii
import collections
import http.client
import logging
import threading
from collections.abc import Iterable, Mapping
from typing import cast
from urllib.parse import urlsplit

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Status
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from plait.telemetry.tracing import Span

__all__ = ["OtlpExporter", "encode_spans"]

log = logging.getLogger(__name__)

TRACES_PATH = "/v1/traces"  # OTLP/HTTP's default path for traces
SCOPE = InstrumentationScope(name="plait")


def _value(value: object) -> AnyValue:
    if isinstance(value, bool):  # before int: bool is an int
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _attributes(attributes: Mapping[str, object]) -> list[KeyValue]:
    return [KeyValue(key=key, value=_value(value)) for key, value in attributes.items()]


def _span(span: Span) -> PbSpan:
    return PbSpan(
        trace_id=binascii.unhexlify(span.trace_id),
        span_id=binascii.unhexlify(span.span_id),
        parent_span_id=binascii.unhexlify(span.parent_id),
        trace_state=span.tracestate.decode("latin-1"),
        name=span.name,
        # tracing.SERVER and CLIENT are numbered as PbSpan.SpanKind.
        kind=cast("PbSpan.SpanKind.ValueType", span.kind),
        start_time_unix_nano=span.start_ns,
        end_time_unix_nano=span.end_ns,
        attributes=_attributes(span.attributes),
        status=Status(code=Status.STATUS_CODE_ERROR if span.error else Status.STATUS_CODE_UNSET),
    )


def encode_spans(spans: Iterable[Span], resource: Mapping[str, str]) -> bytes:
    """One ExportTraceServiceRequest, serialized, for spans of one resource (one workload)."""
    request = ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=_attributes(resource)),
                scope_spans=[ScopeSpans(scope=SCOPE, spans=[_span(s) for s in spans])],
            )
        ]
    )
    return request.SerializeToString()


class OtlpExporter:
    """Batches sampled spans to one OTLP/HTTP collector from a background thread."""

    def __init__(
        self,
        endpoint: str,
        service_name: str,
        resource: Mapping[str, str] | None = None,
        max_queue: int = 2048,  # the OpenTelemetry SDK's BatchSpanProcessor default
        batch_size: int = 512,  # the same SDK's default export batch
        interval: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        url = urlsplit(endpoint)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"OTLP endpoint must be an http(s) URL, got {endpoint!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._path = url.path if url.path not in ("", "/") else TRACES_PATH
        self.resource = {"service.name": service_name, **(resource or {})}
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.interval = interval
        self.timeout = timeout
        self.exported = 0
        self.dropped = 0
        self.failed = 0
        self._queue: collections.deque[Span] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._run, name="plait-otlp", daemon=True)

    def submit(self, span: Span) -> None:
        """Queue a finished span (the tracer's sink); never blocks, drops when full."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            self.dropped += 1
            return
        queue.append(span)
        if len(queue) == self.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, then stop the thread (waits at most `timeout` seconds)."""
        self._closing = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._conn is not None:
            self._conn.close()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            closing = self._closing
            queue = self._queue
            while queue:
                batch = [queue.popleft() for _ in range(min(len(queue), self.batch_size))]
                self._export(batch)
            if closing:
                return

    def _export(self, batch: list[Span]) -> None:
        try:
            body = encode_spans(batch, self.resource)
        except Exception:  # a bug here must not kill the exporter thread
            log.exception("could not encode %d spans", len(batch))
            self.failed += len(batch)
            return
        for attempt in (1, 2):  # a kept-alive connection the collector closed: retry once
            try:
                status = self._post(body)
            except (OSError, http.client.HTTPException) as exc:
                self._reset()
                if attempt == 2:
                    log.warning("OTLP export to %s failed: %s", self._host, exc)
                    self.failed += len(batch)
                continue
            if 200 <= status < 300:
                self.exported += len(batch)
            else:
                log.warning("OTLP collector %s answered %d", self._host, status)
                self.failed += len(batch)
            return

    def _post(self, body: bytes) -> int:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self.timeout)
        self._conn.request("POST", self._path, body, {"Content-Type": "application/x-protobuf"})
        response = self._conn.getresponse()
        response.read()
        if response.will_close:
            self._reset()
        return response.status

    def _reset(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
