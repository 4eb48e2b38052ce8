"""Trace context in and out of each proxy hop (W3C and B3), and one span per hop.

Theory of operation: `extract(headers)` reads the incoming context (W3C `traceparent` wins
over B3 single `b3`, which wins over B3 multi `x-b3-*`); `Tracer.start_span` continues
it or starts a trace (random ids, sampled at the configured rate unless the caller already
decided); `inject(headers, span)` replaces the trace headers for the next hop with W3C and
B3 multi headers naming this span as parent (a sampled-out span sends its decision in both
formats, so every later hop honours the first hop's choice whichever format an app
forwards); `Tracer.end_span` completes a sampled span and hands it to the sink (the OTLP
exporter). A sampled-out span is ids only: no name, clock or attributes.

References: W3C Trace Context Level 1 (https://www.w3.org/TR/trace-context/) sections
3.2 (traceparent) and 3.3 (tracestate); B3 (https://github.com/openzipkin/b3-propagation).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable

__all__ = [
    "CLIENT",
    "SERVER",
    "TRACE_HEADERS",
    "Span",
    "SpanContext",
    "Tracer",
    "extract",
    "inject",
    "parse_b3",
    "parse_traceparent",
]

Headers = list[tuple[bytes, bytes]]

# Span kinds, numbered as OTLP's Span.SpanKind so the exporter passes them through.
SERVER = 2  # inbound: this proxy serves the request for its workload
CLIENT = 3  # outbound: this proxy calls another service for its workload

TRACEPARENT, TRACESTATE, B3 = b"traceparent", b"tracestate", b"b3"
B3_TRACE, B3_SPAN, B3_PARENT = b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid"
B3_SAMPLED, B3_FLAGS = b"x-b3-sampled", b"x-b3-flags"
TRACE_HEADERS = frozenset(
    (TRACEPARENT, TRACESTATE, B3, B3_TRACE, B3_SPAN, B3_PARENT, B3_SAMPLED, B3_FLAGS)
)

# Section 3.2.2: lowercase hex only. Section 3.2.4: version ff is invalid; a higher
# version may carry more fields after the flags, version 00 may not.
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(?:-.*)?")
_B3_SINGLE = re.compile(
    rb"([0-9a-f]{16}|[0-9a-f]{32})-([0-9a-f]{16})(?:-([01d])(?:-([0-9a-f]{16}))?)?\Z"
)
_HEX64 = re.compile(rb"[0-9a-f]{16}\Z")
_HEX_TRACE = re.compile(rb"[0-9a-f]{16}(?:[0-9a-f]{16})?\Z")
_ZERO16 = b"0" * 16
_ZERO32 = b"0" * 32
_ODD_HEX = b"13579bdf"  # flags whose low bit, sampled (section 3.2.2.5.1), is set
_IDS_PER_DRAW = 128  # one randbytes call serves 128 spans' ids
_MAX_NAME = 256  # Envoy truncates operation names too; long paths make unusable span names


def _trace_id(hex_id: bytes) -> bytes:
    """128-bit form of a B3 id: zero-padded as OpenTelemetry's B3 propagator does, so the
    64-bit id a B3 app sent can be given back to it on the next hop."""
    return hex_id if len(hex_id) == 32 else _ZERO16 + hex_id


class SpanContext:
    """An incoming context, ids as lowercase hex; no trace_id: only a sampling decision."""

    __slots__ = ("trace_id", "span_id", "sampled", "tracestate")

    def __init__(
        self, trace_id: bytes, span_id: bytes, sampled: bool | None, tracestate: bytes = b""
    ) -> None:
        self.trace_id = trace_id  # 32 hex digits, or b"" (B3 "0"/"1"/"d" alone)
        self.span_id = span_id  # 16 hex digits: the caller's span, our parent
        self.sampled = sampled  # None: the caller left the decision to us (B3 "defer")
        self.tracestate = tracestate

    def __repr__(self) -> str:
        return f"SpanContext({self.trace_id!r}, {self.span_id!r}, {self.sampled})"


def parse_traceparent(value: bytes) -> SpanContext | None:
    """A valid `traceparent` (W3C section 3.2), or None to restart the trace."""
    if _TRACEPARENT.fullmatch(value) is None:
        value = value.strip(b" \t")  # optional whitespace around a field value (RFC 9110 5.5)
        if _TRACEPARENT.fullmatch(value) is None:
            return None
    # The pattern fixes every field's position: version, trace-id, parent-id, flags.
    version, trace, parent = value[:2], value[3:35], value[36:52]
    if version == b"ff" or (version == b"00" and len(value) != 55):  # 3.2.4
        return None
    if trace == _ZERO32 or parent == _ZERO16:
        return None  # all-zero ids are invalid (sections 3.2.2.3 and 3.2.2.4)
    return SpanContext(trace, parent, value[54] in _ODD_HEX)


def parse_b3(value: bytes) -> SpanContext | None:
    """The single `b3` header: `{trace}-{span}[-{0|1|d}[-{parent}]]` or a bare `0|1|d`."""
    value = value.strip()
    if value in (b"0", b"1", b"d"):
        return SpanContext(b"", b"", value != b"0")
    match = _B3_SINGLE.match(value)
    if match is None:
        return None
    trace, span, state, _parent = match.groups()
    if trace.strip(b"0") == b"" or span == _ZERO16:
        return None
    return SpanContext(_trace_id(trace), span, None if state is None else state != b"0")


def _b3_multi(values: dict[bytes, bytes]) -> SpanContext | None:
    """`x-b3-*` headers; `x-b3-flags: 1` (debug) implies sampled, as the B3 spec says."""
    flags = values.get(B3_FLAGS, b"").strip()
    sampled_text = values.get(B3_SAMPLED, b"").strip().lower()
    sampled: bool | None = None
    if flags == b"1" or sampled_text in (b"1", b"true"):
        sampled = True
    elif sampled_text in (b"0", b"false"):
        sampled = False
    trace, span = values.get(B3_TRACE, b"").strip(), values.get(B3_SPAN, b"").strip()
    if _HEX_TRACE.match(trace) and _HEX64.match(span) and trace.strip(b"0") and span != _ZERO16:
        return SpanContext(_trace_id(trace), span, sampled)
    return None if sampled is None else SpanContext(b"", b"", sampled)


def extract(headers: Iterable[tuple[bytes, bytes]]) -> SpanContext | None:
    """The incoming trace context of a request (lowercase header names), or None."""
    traceparent = tracestate = b3 = None
    multi: dict[bytes, bytes] | None = None
    for name, value in headers:
        if name in TRACE_HEADERS:
            if name == TRACEPARENT:  # a second traceparent makes both invalid
                traceparent = value if traceparent is None else b"!"
            elif name == TRACESTATE:  # W3C 3.3.1.4: combine repeated headers in order
                tracestate = value if tracestate is None else tracestate + b"," + value
            elif name == B3:
                b3 = value
            else:
                multi = multi or {}
                multi[name] = value
    if traceparent is not None:
        context = parse_traceparent(traceparent)
        if context is not None:
            if tracestate:
                context.tracestate = tracestate
            return context
    if b3 is not None:
        context = parse_b3(b3)
        if context is not None:
            return context
    return None if multi is None else _b3_multi(multi)


class Span:
    """One proxy hop of a trace; only a sampled span gets a kind, name, times and attributes."""

    __slots__ = (
        "trace_id",
        "span_id",
        "parent_id",
        "sampled",
        "tracestate",
        "kind",
        "name",
        "start_ns",
        "end_ns",
        "error",
        "attributes",
    )
    kind: int
    name: str
    start_ns: int
    end_ns: int
    error: bool
    attributes: dict[str, str | int | float]

    def __init__(
        self, trace_id: bytes, span_id: bytes, parent_id: bytes, sampled: bool, tracestate: bytes
    ) -> None:
        # Five fields only: an unsampled span must stay cheap; `Tracer` fills the rest.
        self.trace_id = trace_id  # 32 lowercase hex digits
        self.span_id = span_id  # 16 lowercase hex digits
        self.parent_id = parent_id  # b"": the root of its trace
        self.sampled = sampled
        self.tracestate = tracestate

    def __repr__(self) -> str:
        return f"Span({self.trace_id!r}, {self.span_id!r}, sampled={self.sampled})"


class Tracer:
    """Starts and ends the spans of one workload's proxy; thread-unsafe, one per event loop."""

    def __init__(
        self,
        sample_rate: float = 0.01,  # Istio's default: 1 % of new traces
        sink: Callable[[Span], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be within [0, 1], got {sample_rate}")
        self.sample_rate = sample_rate
        self.sink = sink
        rng = rng or random.Random()  # seeded from os.urandom; ids need not be secret
        self._random = rng.random
        self._randbytes = rng.randbytes
        self._ids: list[tuple[bytes, bytes]] = []
        self._clock = clock

    def start_span(
        self,
        parent: SpanContext | None,
        kind: int,
        authority: bytes,
        path: bytes,
        method: bytes = b"GET",
    ) -> Span:
        """This hop's span under `parent` (from `extract`), or the root of a new trace."""
        sampled = None if parent is None else parent.sampled
        if sampled is None:
            sampled = self._random() < self.sample_rate
        if parent is not None and parent.trace_id:
            if not sampled:
                # A hop that records nothing passes the caller's ids on unchanged
                # (W3C section 3.4 makes updating parent-id optional).
                return Span(parent.trace_id, parent.span_id, b"", False, parent.tracestate)
            span_id = self._new_ids()[1]
            span = Span(parent.trace_id, span_id, parent.span_id, True, parent.tracestate)
        else:
            trace_id, span_id = self._new_ids()
            span = Span(trace_id, span_id, b"", sampled, b"")
            if not sampled:
                return span
        span.kind = kind
        span.name = (authority + path.partition(b"?")[0])[:_MAX_NAME].decode("latin-1")
        span.error = False
        span.attributes = {
            "component": "proxy",
            "http.method": method.decode("latin-1"),
            "http.url": "http://" + (authority + path).decode("latin-1"),
        }
        span.end_ns = 0
        span.start_ns = self._clock()
        return span

    def _new_ids(self) -> tuple[bytes, bytes]:
        """A fresh (trace id, span id) as hex, drawn many at a time: a pop per span."""
        if not self._ids:
            hex_ids = self._randbytes(24 * _IDS_PER_DRAW).hex().encode()
            pairs = (
                (hex_ids[i : i + 32], hex_ids[i + 32 : i + 48]) for i in range(0, len(hex_ids), 48)
            )
            # All-zero ids are invalid (W3C 3.2.2.3, 3.2.2.4): p = 2^-64, but never send one.
            self._ids = [(t, s) for t, s in pairs if t != _ZERO32 and s != _ZERO16]
        return self._ids.pop()

    def end_span(
        self,
        span: Span,
        status: int,
        flags: str = "",
        upstream_address: str = "",
        upstream_cluster: str = "",
        peer_principal: str = "",
    ) -> None:
        """Complete a sampled span and hand it to the sink; an unsampled one costs nothing."""
        if not span.sampled:
            return
        span.end_ns = self._clock()
        attributes = span.attributes
        attributes["http.status_code"] = status
        if flags:
            attributes["response_flags"] = flags
        if upstream_address:
            attributes["upstream_address"] = upstream_address
        if upstream_cluster:
            attributes["upstream_cluster"] = upstream_cluster
        if peer_principal:
            attributes["peer.principal"] = peer_principal
        span.error = status >= 500 or status == 0  # Envoy tags 5xx and resets as errors
        if self.sink is not None:
            self.sink(span)


def inject(headers: Headers, span: Span) -> None:
    """Replace the trace headers of `headers` with W3C and B3 ones naming `span` as parent.

    A sampled-out span sends only its decision on B3's side (`x-b3-sampled: 0` is a valid
    B3 context by itself), so every later hop also samples it out, in either format.
    """
    for name, _ in headers:
        if name in TRACE_HEADERS:
            headers[:] = [h for h in headers if h[0] not in TRACE_HEADERS]
            break
    trace_id, span_id = span.trace_id, span.span_id
    if span.sampled:
        headers += (
            (TRACEPARENT, b"00-%s-%s-01" % (trace_id, span_id)),
            # B3 keeps a 64-bit trace id at 16 digits, so B3-only apps see the id they sent.
            (B3_TRACE, trace_id[16:] if trace_id[:16] == _ZERO16 else trace_id),
            (B3_SPAN, span_id),
            (B3_SAMPLED, b"1"),
        )
        if span.parent_id:
            headers.append((B3_PARENT, span.parent_id))
    else:
        headers += ((TRACEPARENT, b"00-%s-%s-00" % (trace_id, span_id)), (B3_SAMPLED, b"0"))
    if span.tracestate:
        headers.append((TRACESTATE, span.tracestate))
