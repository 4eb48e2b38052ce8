"""Trace context: W3C and B3 extraction, sampling, spans per hop, injection for the next hop."""

from __future__ import annotations

import random

import pytest

from plait.telemetry.tracing import (
    CLIENT,
    SERVER,
    Span,
    SpanContext,
    Tracer,
    extract,
    inject,
    parse_b3,
    parse_traceparent,
)

TRACE = b"0af7651916cd43dd8448eb211c80319c"
PARENT = b"b7ad6b7169203331"
VALID = b"00-" + TRACE + b"-" + PARENT + b"-01"


def tracer(rate: float = 1.0, spans: list[Span] | None = None, seed: int = 1) -> Tracer:
    clock = iter(range(1_000, 10**9, 1_000))
    sink = spans.append if spans is not None else None
    return Tracer(rate, sink, random.Random(seed), lambda: next(clock))


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    values = [v for n, v in headers if n == name]
    assert len(values) <= 1, f"{name!r} appears {len(values)} times"
    return values[0] if values else None


# --- W3C traceparent ---------------------------------------------------------------------


def test_valid_traceparent_is_parsed_with_its_sampled_flag():
    ctx = parse_traceparent(VALID)
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (TRACE, PARENT, True)
    unsampled = parse_traceparent(VALID[:-2] + b"00")
    assert unsampled is not None and unsampled.sampled is False
    other_flags = parse_traceparent(VALID[:-2] + b"03")  # unknown flag bits are ignored
    assert other_flags is not None and other_flags.sampled is True


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"00-" + TRACE + b"-" + PARENT,  # no flags
        b"00-" + TRACE.upper() + b"-" + PARENT + b"-01",  # uppercase hex (3.2.2)
        b"00-" + b"0" * 32 + b"-" + PARENT + b"-01",  # all-zero trace id (3.2.2.3)
        b"00-" + TRACE + b"-" + b"0" * 16 + b"-01",  # all-zero parent id (3.2.2.4)
        b"ff-" + TRACE + b"-" + PARENT + b"-01",  # version ff is forbidden (3.2.4)
        VALID + b"-extra",  # version 00 has exactly four fields (3.2.4)
        b"00-" + TRACE[:-1] + b"-" + PARENT + b"-01",  # short trace id
        b"00-" + TRACE + b"-" + PARENT + b"-1",  # one-digit flags
        b"00-" + TRACE + b"-" + PARENT[:-1] + b"g-01",  # not hex
        b"0-" + TRACE + b"-" + PARENT + b"-01",
        b"00_" + TRACE + b"_" + PARENT + b"_01",
    ],
)
def test_invalid_traceparent_is_rejected(value):
    assert parse_traceparent(value) is None


def test_a_higher_version_may_carry_more_fields():
    ctx = parse_traceparent(b"cc-" + TRACE + b"-" + PARENT + b"-01-what-the-future-holds")
    assert ctx is not None and ctx.trace_id == TRACE


def test_tracestate_travels_only_with_a_valid_traceparent_and_is_combined():
    headers = [
        (b"traceparent", VALID),
        (b"tracestate", b"congo=t61rcWkgMzE"),
        (b"tracestate", b"rojo=00f067aa0ba902b7"),
    ]
    ctx = extract(headers)
    assert ctx is not None and ctx.tracestate == b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    bad = extract([(b"traceparent", b"garbage"), (b"tracestate", b"congo=1")])
    assert bad is None


def test_two_traceparent_headers_are_invalid():
    assert extract([(b"traceparent", VALID), (b"traceparent", VALID)]) is None


# --- B3 ----------------------------------------------------------------------------------


def test_b3_single_header_forms():
    full = parse_b3(TRACE + b"-" + PARENT + b"-1-" + b"05e3ac9a4f6e3b90")
    assert full is not None and (full.trace_id, full.span_id, full.sampled) == (TRACE, PARENT, True)
    deferred = parse_b3(TRACE + b"-" + PARENT)
    assert deferred is not None and deferred.sampled is None
    short = parse_b3(b"463ac35c9f6413ad-" + PARENT + b"-0")  # a 64-bit trace id
    assert short is not None and short.trace_id == b"0" * 16 + b"463ac35c9f6413ad"
    assert short.sampled is False
    debug = parse_b3(TRACE + b"-" + PARENT + b"-d")
    assert debug is not None and debug.sampled is True


def test_b3_single_sampling_only_and_invalid_forms():
    deny = parse_b3(b"0")
    assert deny is not None and (deny.trace_id, deny.sampled) == (b"", False)
    accept = parse_b3(b"d")
    assert accept is not None and accept.sampled is True
    for value in (
        b"",
        b"2",
        TRACE + b"-" + PARENT + b"-x",
        b"abc-" + PARENT,
        b"0" * 32 + b"-" + PARENT,
    ):
        assert parse_b3(value) is None, value


def test_b3_multi_headers_with_64_and_128_bit_trace_ids():
    ctx = extract(
        [
            (b"x-b3-traceid", b"463ac35c9f6413ad"),
            (b"x-b3-spanid", PARENT),
            (b"x-b3-parentspanid", b"05e3ac9a4f6e3b90"),
            (b"x-b3-sampled", b"1"),
        ]
    )
    assert ctx is not None
    assert (ctx.trace_id, ctx.span_id, ctx.sampled) == (
        b"0" * 16 + b"463ac35c9f6413ad",
        PARENT,
        True,
    )
    long = extract([(b"x-b3-traceid", TRACE), (b"x-b3-spanid", PARENT)])
    assert long is not None and long.trace_id == TRACE and long.sampled is None


def test_b3_multi_flags_and_sampling_only():
    debug = extract([(b"x-b3-traceid", TRACE), (b"x-b3-spanid", PARENT), (b"x-b3-flags", b"1")])
    assert debug is not None and debug.sampled is True
    legacy = extract(
        [(b"x-b3-traceid", TRACE), (b"x-b3-spanid", PARENT), (b"x-b3-sampled", b"false")]
    )
    assert legacy is not None and legacy.sampled is False
    only = extract([(b"x-b3-sampled", b"0")])
    assert only is not None and (only.trace_id, only.sampled) == (b"", False)
    assert extract([(b"x-b3-traceid", b"xyz"), (b"x-b3-spanid", PARENT)]) is None


def test_w3c_wins_over_b3_and_b3_single_over_multi():
    other = b"1" * 32
    ctx = extract([(b"b3", other + b"-" + PARENT + b"-1"), (b"traceparent", VALID)])
    assert ctx is not None and ctx.trace_id == TRACE
    ctx = extract(
        [(b"x-b3-traceid", TRACE), (b"x-b3-spanid", PARENT), (b"b3", other + b"-" + PARENT)]
    )
    assert ctx is not None and ctx.trace_id == other
    ctx = extract([(b"traceparent", b"junk"), (b"x-b3-traceid", TRACE), (b"x-b3-spanid", PARENT)])
    assert ctx is not None and ctx.trace_id == TRACE  # invalid W3C falls back to B3


def test_no_trace_headers_means_no_context():
    assert extract([(b"host", b"reviews"), (b"accept", b"*/*")]) is None


# --- sampling and spans --------------------------------------------------------------------


def test_new_trace_gets_random_nonzero_ids_and_the_configured_sampling_rate():
    t = tracer(rate=0.25, seed=7)
    spans = [t.start_span(None, SERVER, b"reviews:9080", b"/") for _ in range(4000)]
    assert len({s.trace_id for s in spans}) == 4000
    assert all(len(s.trace_id) == 32 and len(s.span_id) == 16 for s in spans)
    assert all(s.trace_id.strip(b"0") and s.parent_id == b"" for s in spans)
    assert 850 < sum(s.sampled for s in spans) < 1150


def test_incoming_sampling_decision_is_respected_whatever_the_rate():
    never, always = tracer(rate=0.0), tracer(rate=1.0)
    sampled = SpanContext(TRACE, PARENT, True)
    unsampled = SpanContext(TRACE, PARENT, False)
    assert never.start_span(sampled, SERVER, b"a", b"/").sampled is True
    assert always.start_span(unsampled, SERVER, b"a", b"/").sampled is False
    assert never.start_span(SpanContext(b"", b"", True), SERVER, b"a", b"/").sampled is True
    deferred = SpanContext(TRACE, PARENT, None)
    assert always.start_span(deferred, SERVER, b"a", b"/").sampled is True
    assert never.start_span(deferred, SERVER, b"a", b"/").sampled is False


def test_sampled_span_continues_the_trace_as_a_child_with_envoy_style_name():
    spans: list[Span] = []
    t = tracer(spans=spans)
    span = t.start_span(
        SpanContext(TRACE, PARENT, True), SERVER, b"reviews:9080", b"/reviews/0?x=1", b"POST"
    )
    assert (span.trace_id, span.parent_id, span.kind) == (TRACE, PARENT, SERVER)
    assert span.span_id not in (PARENT, b"0" * 16)
    assert span.name == "reviews:9080/reviews/0"
    t.end_span(span, 503, "UF", "10.0.0.7:9080", "reviews.default", "spiffe://td/ns/default/sa/pp")
    assert spans == [span] and span.end_ns > span.start_ns > 0 and span.error
    assert span.attributes == {
        "component": "proxy",
        "http.method": "POST",
        "http.url": "http://reviews:9080/reviews/0?x=1",
        "http.status_code": 503,
        "response_flags": "UF",
        "upstream_address": "10.0.0.7:9080",
        "upstream_cluster": "reviews.default",
        "peer.principal": "spiffe://td/ns/default/sa/pp",
    }


def test_unsampled_span_reaches_no_sink():
    spans: list[Span] = []
    t = tracer(rate=0.0, spans=spans)
    span = t.start_span(None, CLIENT, b"a", b"/")
    t.end_span(span, 200)
    assert spans == [] and not span.sampled


def test_sample_rate_is_validated():
    with pytest.raises(ValueError, match="sample_rate"):
        Tracer(1.5)


# --- injection -----------------------------------------------------------------------------


def test_inject_replaces_incoming_trace_headers_with_w3c_and_b3_naming_this_span():
    t = tracer()
    incoming = [
        (b"host", b"reviews"),
        (b"traceparent", VALID),
        (b"tracestate", b"congo=1"),
        (b"x-b3-traceid", TRACE),
        (b"x-b3-spanid", PARENT),
        (b"x-b3-sampled", b"1"),
        (b"b3", TRACE + b"-" + PARENT + b"-1"),
        (b"accept", b"*/*"),
    ]
    span = t.start_span(extract(incoming), SERVER, b"reviews", b"/")
    forward = list(incoming)
    inject(forward, span)
    assert header(forward, b"host") == b"reviews" and header(forward, b"accept") == b"*/*"
    assert header(forward, b"traceparent") == b"00-" + TRACE + b"-" + span.span_id + b"-01"
    assert header(forward, b"tracestate") == b"congo=1"
    assert header(forward, b"x-b3-traceid") == TRACE
    assert header(forward, b"x-b3-spanid") == span.span_id
    assert header(forward, b"x-b3-parentspanid") == PARENT
    assert header(forward, b"x-b3-sampled") == b"1"
    assert header(forward, b"b3") is None  # replaced by the multi headers, not left stale


def test_inject_keeps_a_64_bit_b3_trace_id_short_for_b3_apps():
    t = tracer()
    ctx = extract(
        [(b"x-b3-traceid", b"463ac35c9f6413ad"), (b"x-b3-spanid", PARENT), (b"x-b3-sampled", b"1")]
    )
    forward: list[tuple[bytes, bytes]] = []
    inject(forward, t.start_span(ctx, SERVER, b"a", b"/"))
    assert header(forward, b"x-b3-traceid") == b"463ac35c9f6413ad"
    assert (header(forward, b"traceparent") or b"")[3:35] == b"0" * 16 + b"463ac35c9f6413ad"


def test_unsampled_hop_passes_the_callers_ids_and_decision_on():
    t = tracer(rate=1.0)
    incoming = [(b"traceparent", VALID[:-2] + b"00")]
    span = t.start_span(extract(incoming), SERVER, b"a", b"/")
    forward = list(incoming)
    inject(forward, span)
    assert header(forward, b"traceparent") == VALID[:-2] + b"00"
    assert header(forward, b"x-b3-sampled") == b"0"  # B3's decision-only form
    assert header(forward, b"x-b3-traceid") is None and header(forward, b"x-b3-spanid") is None


def test_new_unsampled_trace_still_tells_the_next_hop_not_to_sample_in_both_formats():
    forward: list[tuple[bytes, bytes]] = []
    inject(forward, tracer(rate=0.0).start_span(None, CLIENT, b"a", b"/"))
    w3c_only = [(n, v) for n, v in forward if n == b"traceparent"]
    b3_only = [(n, v) for n, v in forward if n.startswith(b"x-b3-")]
    for headers in (forward, w3c_only, b3_only):
        ctx = extract(headers)
        assert ctx is not None and ctx.sampled is False
        assert tracer(rate=1.0).start_span(ctx, SERVER, b"a", b"/").sampled is False


def test_three_hops_through_apps_that_forward_only_one_format_keep_one_trace():
    """productpage -> reviews -> ratings; the reviews app forwards B3 only."""
    spans: list[Span] = []
    pp_out, reviews_in, reviews_out, ratings_in = (tracer(spans=spans, seed=s) for s in range(4))
    first = pp_out.start_span(None, CLIENT, b"reviews:9080", b"/reviews/0")
    wire: list[tuple[bytes, bytes]] = []
    inject(wire, first)
    second = reviews_in.start_span(extract(wire), SERVER, b"reviews:9080", b"/reviews/0")
    to_app: list[tuple[bytes, bytes]] = list(wire)
    inject(to_app, second)
    from_app = [(n, v) for n, v in to_app if n.startswith(b"x-b3-")]  # a B3-only app
    third = reviews_out.start_span(extract(from_app), CLIENT, b"ratings:9080", b"/ratings/0")
    wire = []
    inject(wire, third)
    fourth = ratings_in.start_span(extract(wire), SERVER, b"ratings:9080", b"/ratings/0")
    for span in (first, second, third, fourth):
        pp_out.end_span(span, 200)
    assert len({s.trace_id for s in spans}) == 1
    assert [s.parent_id for s in spans] == [b"", first.span_id, second.span_id, third.span_id]
    assert [s.kind for s in spans] == [CLIENT, SERVER, CLIENT, SERVER]
