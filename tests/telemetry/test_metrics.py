"""The metric cores: Istio's names, labels and buckets, pre-bound series, plait's own metrics."""

from __future__ import annotations

import bisect

import pytest

from plait.telemetry.metrics import (
    DURATION_BUCKETS,
    Counter,
    Gauge,
    HistogramData,
    IstioMetrics,
    MetricFamily,
    Peer,
    ProxyMetrics,
    Registry,
    RequestSeries,
    bucket,
)

# The label set of https://istio.io/latest/docs/reference/config/metrics/ ("Labels").
ISTIO_LABELS = {
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
}
PRODUCTPAGE = Peer("productpage-v1", "default", "spiffe://cluster.local/ns/default/sa/pp")
REVIEWS = Peer("reviews-v2", "default", "spiffe://cluster.local/ns/default/sa/reviews", "reviews")


def families(metrics: IstioMetrics | Registry) -> dict[str, MetricFamily]:
    return {f.name: f for f in metrics.collect()}


def series_of(family: MetricFamily) -> dict[tuple[str, ...], object]:
    """Series keyed by the values of their per-request labels (code, gRPC status, flags)."""
    out = {}
    for labels, value in family.series:
        d = dict(labels)
        out[(d.get("response_code", ""), d["grpc_response_status"], d["response_flags"])] = value
    return out


def test_istio_buckets_are_envoys_defaults():
    assert DURATION_BUCKETS[:4] == (0.5, 1, 5, 10)
    assert DURATION_BUCKETS[-1] == 3600000 and len(DURATION_BUCKETS) == 19


def test_request_series_records_counts_and_all_three_histograms():
    istio = IstioMetrics()
    series = istio.request_series(
        "destination", PRODUCTPAGE, REVIEWS, "reviews.default.svc.cluster.local",
        "reviews", "default", "http", "mutual_tls",
    )  # fmt: skip
    series.record(200, "", "", 3.0, 0, 1830)
    series.record(200, "", "", 7.5, 100, 10)
    series.record(503, "UH", "", 0.2, 0, 19)
    found = families(istio)
    requests = series_of(found["istio_requests_total"])
    assert requests == {("200", "", "-"): 2, ("503", "", "UH"): 1}
    duration = series_of(found["istio_request_duration_milliseconds"])[("200", "", "-")]
    assert isinstance(duration, HistogramData)
    assert duration.sum == 10.5 and sum(duration.counts) == 2
    assert duration.counts[DURATION_BUCKETS.index(5)] == 1  # 3.0 <= 5
    assert duration.counts[DURATION_BUCKETS.index(10)] == 1  # 7.5 <= 10
    response = series_of(found["istio_response_bytes"])[("200", "", "-")]
    assert isinstance(response, HistogramData) and response.sum == 1840
    request = series_of(found["istio_request_bytes"])[("503", "", "UH")]
    assert isinstance(request, HistogramData) and request.counts[0] == 1  # 0 bytes <= 0.5


def test_a_value_on_a_bound_falls_in_that_bucket_and_above_all_in_inf():
    istio = IstioMetrics(duration_buckets=(1, 10), bytes_buckets=(100,))
    series = istio.request_series("source")
    series.record(200, "", "", 10.0, 100, 101)
    series.record(200, "", "", 10.5, 0, 0)
    found = families(istio)
    duration = series_of(found["istio_request_duration_milliseconds"])[("200", "", "-")]
    assert isinstance(duration, HistogramData) and duration.counts == [0, 1, 1]
    response = series_of(found["istio_response_bytes"])[("200", "", "-")]
    assert isinstance(response, HistogramData) and response.counts == [1, 1]


def test_every_istio_series_carries_exactly_istios_standard_labels():
    istio = IstioMetrics()
    istio.request_series("source", protocol="grpc").record(200, "", "14", 1.0, 5, 5)
    tcp = istio.tcp_series("destination", REVIEWS, PRODUCTPAGE, security_policy="mutual_tls")
    tcp.opened()
    tcp.closed()
    for family in istio.collect():
        for labels, _ in family.series:
            names = [name for name, _ in labels]
            assert len(names) == len(set(names))
            expected = ISTIO_LABELS
            if family.name.startswith("istio_tcp"):  # Istio's TCP metrics have no HTTP labels
                expected = ISTIO_LABELS - {"response_code", "grpc_response_status"}
            assert set(names) == expected, family.name


def test_equal_labels_share_one_series_so_connections_do_not_duplicate_lines():
    istio = IstioMetrics()
    a = istio.request_series("destination", PRODUCTPAGE, REVIEWS, security_policy="mutual_tls")
    b = istio.request_series("destination", PRODUCTPAGE, REVIEWS, security_policy="mutual_tls")
    c = istio.request_series("destination", PRODUCTPAGE, REVIEWS, security_policy="none")
    assert a is b and a is not c
    a.record(200, "", "", 1.0, 0, 0)
    b.record(200, "", "", 1.0, 0, 0)
    assert [v for _, v in families(istio)["istio_requests_total"].series] == [2]


def test_unknown_peers_are_labelled_unknown_and_revision_latest():
    istio = IstioMetrics()
    istio.request_series("source").record(404, "NR", "", 0.1, 0, 0)
    [(labels, _)] = families(istio)["istio_requests_total"].series
    d = dict(labels)
    assert d["source_workload"] == "unknown" and d["destination_principal"] == "unknown"
    assert d["source_canonical_revision"] == "latest"
    assert d["response_code"] == "404" and d["response_flags"] == "NR"


def test_tcp_series_counts_bytes_opens_and_closes_by_flags():
    istio = IstioMetrics()
    tcp = istio.tcp_series("destination", PRODUCTPAGE, REVIEWS)
    tcp.opened()
    tcp.opened()
    tcp.transferred(sent=100, received=40)
    tcp.transferred(sent=1, received=2)
    tcp.closed()
    tcp.closed("UF")
    found = families(istio)

    def values(name: str) -> dict[str, object]:
        return {dict(labels)["response_flags"]: v for labels, v in found[name].series}

    assert values("istio_tcp_connections_opened_total") == {"-": 2}
    assert values("istio_tcp_sent_bytes_total") == {"-": 101}
    assert values("istio_tcp_received_bytes_total") == {"-": 42}
    assert values("istio_tcp_connections_closed_total") == {"-": 1, "UF": 1}
    assert {
        dict(lb)["request_protocol"] for lb, _ in found["istio_tcp_sent_bytes_total"].series
    } == {"tcp"}


def test_endpoint_series_counts_code_classes_and_latency():
    metrics = ProxyMetrics()
    endpoint = metrics.upstream.endpoint("reviews.default", "10.0.0.7:9080")
    assert metrics.upstream.endpoint("reviews.default", "10.0.0.7:9080") is endpoint
    for status in (200, 204, 404, 503, 0):
        endpoint.record(status, 2.0)
    found = families(metrics.registry)
    counts = {
        dict(labels)["response_code_class"]: value
        for labels, value in found["plait_upstream_rq_total"].series
    }
    assert counts == {"2xx": 2, "4xx": 1, "5xx": 2}  # no status (reset) is the endpoint's 5xx
    [(labels, latency)] = found["plait_upstream_rq_time_milliseconds"].series
    assert dict(labels) == {"cluster": "reviews.default", "endpoint": "10.0.0.7:9080"}
    assert isinstance(latency, HistogramData) and sum(latency.counts) == 5


def test_plait_metrics_are_registered_with_their_names_and_labels():
    metrics = ProxyMetrics()
    metrics.config_version.set(42)
    metrics.certificate_expiry.set_function(lambda: 3600.0)
    metrics.outlier_ejections.labels("reviews.default").inc()
    metrics.retries.labels("reviews.default").inc(2)
    metrics.retry_budget_exhausted.labels("reviews.default").inc()
    metrics.circuit_breaker_overflow.labels("ratings.default").inc()
    metrics.authz_denied.inc()
    metrics.tls_handshakes.labels("ok").inc()
    metrics.tls_handshakes.labels("failed").inc()
    found = families(metrics.registry)
    assert found["plait_config_version"].series == [((), 42)]
    assert found["plait_certificate_expiry_seconds"].series == [((), 3600.0)]
    assert found["plait_retries_total"].series == [((("cluster", "reviews.default"),), 2.0)]
    assert found["plait_authz_denied_total"].series == [((), 1.0)]
    assert dict(found["plait_tls_handshakes_total"].series) == {
        (("result", "ok"),): 1.0,
        (("result", "failed"),): 1.0,
    }
    for name in (
        "plait_outlier_ejections_total",
        "plait_retry_budget_exhausted_total",
        "plait_circuit_breaker_overflow_total",
    ):
        assert found[name].kind == "counter"


def test_unlabelled_metrics_show_zero_before_their_first_event():
    registry = Registry()
    registry.counter("plait_things_total", "Things.")
    assert families(registry)["plait_things_total"].series == [((), 0.0)]


def test_label_values_must_match_label_names():
    counter = Counter("plait_x_total", "X.", ("cluster",))
    with pytest.raises(ValueError, match="takes labels"):
        counter.labels()
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc()
    with pytest.raises(ValueError, match="unlabelled"):
        Gauge("plait_y", "Y.", ("a",)).set_function(lambda: 1.0)


def test_gauge_goes_up_and_down():
    gauge = Gauge("plait_active", "Active.")
    gauge.inc(3)
    gauge.labels().dec()
    assert list(gauge.collect())[0].series == [((), 2.0)]


def test_a_family_name_registers_once():
    registry = Registry()
    registry.register(IstioMetrics())
    with pytest.raises(ValueError, match="istio_requests_total"):
        registry.register(IstioMetrics())
    registry.counter("plait_a_total", "A.")
    with pytest.raises(ValueError, match="plait_a_total"):
        registry.gauge("plait_a_total", "A again.")


def test_bucket_is_bisect_left() -> None:
    bounds = DURATION_BUCKETS
    values = [-1.0, 0.0, 0.5, *bounds, *(b + 0.001 for b in bounds), bounds[-1] * 10]
    for value in values:
        assert bucket(bounds, value) == bisect.bisect_left(bounds, value), value
    assert bucket((), 1.0) == 0


def test_requests_with_and_without_flags_count_in_separate_cells() -> None:
    series = RequestSeries((("source_workload", "a"),), "mutual_tls", (1.0, 10.0), (100.0,))
    series.record(200, "", "", 5.0, 10, 20)
    series.record(200, "", "", 0.5, 10, 200)
    series.record(200, "UF", "", 5.0, 10, 20)
    cells = {dict(c.labels)["response_flags"]: c for c in series.cells()}
    assert cells["-"].count == 2 and cells["UF"].count == 1
    assert cells["-"].duration_counts == [1, 1, 0]
    assert cells["-"].response_counts == [1, 1]
