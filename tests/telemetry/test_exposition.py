"""Prometheus text format 0.0.4: every line must be accepted by a real parser."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from plait.telemetry.exposition import CONTENT_TYPE, format_float, render, render_families
from plait.telemetry.metrics import HistogramData, MetricFamily, Peer, ProxyMetrics

TRICKY = 'quote " backslash \\ newline \n end'


def scraped(metrics: ProxyMetrics) -> dict[str, Any]:
    text = render(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def busy_proxy() -> ProxyMetrics:
    metrics = ProxyMetrics()
    reviews = Peer("reviews-v2", "default", "spiffe://cluster.local/ns/default/sa/reviews")
    series = metrics.istio.request_series(
        "source", Peer(TRICKY), reviews, "reviews.default.svc.cluster.local", "reviews", "default"
    )
    for duration in (0.3, 4.0, 4.0, 70.0, 5_000_000.0):
        series.record(200, "", "", duration, 12, 2_000)
    series.record(503, "UF,URX", "", 1.5, 0, 91)
    grpc = metrics.istio.request_series("destination", protocol="grpc")
    grpc.record(200, "", "0", 2.0, 20, 30)
    tcp = metrics.istio.tcp_series("destination", security_policy="mutual_tls")
    tcp.opened()
    tcp.transferred(10, 20)
    tcp.closed("UC")
    metrics.upstream.endpoint("reviews.default", "127.0.0.1:9080").record(200, 3.0)
    metrics.config_version.set(7)
    metrics.certificate_expiry.set_function(lambda: 86_399.5)
    metrics.tls_handshakes.labels("ok").inc()
    metrics.retries.labels("ratings.default").inc()
    return metrics


def test_real_parser_accepts_every_family_and_sample():
    metrics = busy_proxy()
    families = scraped(metrics)
    # The parser drops the `_total` suffix from counter family names.
    assert families["istio_requests"].type == "counter"
    assert families["istio_request_duration_milliseconds"].type == "histogram"
    ours = {f.name for f in metrics.registry.collect()}
    theirs = {name + "_total" if f.type == "counter" else name for name, f in families.items()}
    assert ours == theirs


def test_label_values_are_escaped_and_read_back_intact():
    samples = scraped(busy_proxy())["istio_requests"].samples
    assert {s.labels["source_workload"] for s in samples} >= {TRICKY}
    flagged = [s for s in samples if s.labels["response_code"] == "503"]
    assert flagged[0].labels["response_flags"] == "UF,URX" and flagged[0].value == 1


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count():
    family = scraped(busy_proxy())["istio_request_duration_milliseconds"]
    ok = [
        s
        for s in family.samples
        if s.labels["response_code"] == "200" and s.labels["reporter"] == "source"
    ]
    buckets = {s.labels["le"]: s.value for s in ok if s.name.endswith("_bucket")}
    assert buckets["0.5"] == 1 and buckets["5.0"] == 3 and buckets["100.0"] == 4
    assert buckets["3.6e+06"] == 4 and buckets["+Inf"] == 5
    values = list(buckets.values())
    assert values == sorted(values)
    (total,) = [s.value for s in ok if s.name.endswith("_count")]
    (summed,) = [s.value for s in ok if s.name.endswith("_sum")]
    assert total == 5 and summed == pytest.approx(5_000_078.3)


def test_help_and_type_come_once_before_their_samples():
    lines = render(busy_proxy().registry).decode().splitlines(keepends=True)
    for name, kind in (
        ("istio_requests_total", "counter"),
        ("istio_request_bytes", "histogram"),
        ("plait_config_version", "gauge"),
    ):
        help_at = next(i for i, line in enumerate(lines) if line.startswith(f"# HELP {name} "))
        assert lines[help_at + 1] == f"# TYPE {name} {kind}\n"
        assert lines[help_at + 2].startswith(name)
        assert sum(line.startswith(f"# TYPE {name} ") for line in lines) == 1
    assert lines[-1].endswith("\n")


def test_help_text_escapes_backslash_and_newline():
    family = MetricFamily("plait_odd", "gauge", "line one\nback\\slash", [((), 1)])
    text = render_families([family]).decode()
    assert "# HELP plait_odd line one\\nback\\\\slash\n" in text
    (parsed,) = text_string_to_metric_families(text)
    assert parsed.documentation == "line one\nback\\slash"


def test_histogram_without_labels_and_special_values():
    family = MetricFamily("plait_h", "histogram", "H.", [((), HistogramData((1.0,), [2, 1], 2.5))])
    gauge = MetricFamily("plait_g", "gauge", "G.", [((("k", "v"),), math.inf)])
    text = render_families([family, gauge]).decode()
    assert 'plait_h_bucket{le="1.0"} 2\nplait_h_bucket{le="+Inf"} 3\n' in text
    assert "plait_h_sum 2.5\nplait_h_count 3\n" in text
    assert 'plait_g{k="v"} +Inf' in text
    assert len(list(text_string_to_metric_families(text))) == 2


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.5, "0.5"), (1, "1.0"), (100_000, "100000.0"), (1e6, "1e+06"), (3.6e6, "3.6e+06"),
     (1e9, "1e+09"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN")],
)  # fmt: skip
def test_floats_are_written_as_prometheus_writes_them(value, text):
    assert format_float(value) == text


def test_content_type_is_text_format_0_0_4():
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
