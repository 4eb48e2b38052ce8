"""The telemetry roll-up's math on synthetic scrapes: parsing, rates, success, quantiles
(as Prometheus' histogram_quantile), the once-only counting of Istio's two reporters, and
the scrape loop's I/O (a fake admin server) with its Prometheus file_sd output."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from plait.control.tap_fanin import PathAggregator
from plait.control.telemetry import (
    Agg,
    ProxyInfo,
    Rollup,
    graph,
    histogram_quantile,
    parse_prometheus,
    proxy_series,
    stat,
)
from plait.control.telemetry_service import Telemetry, file_sd_targets
from plait.telemetry.exposition import render
from plait.telemetry.metrics import Peer, ProxyMetrics

INF = math.inf
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
GATEWAY = "spiffe://cluster.local/ns/default/sa/bookinfo-gateway"


def peer(workload: str, app: str, principal: str, version: str = "v1") -> Peer:
    return Peer(workload, "default", principal, app, version, app, version)


class FakeProxy:
    """A proxy's metrics, recorded with the proxy's own code and rendered as it serves them."""

    def __init__(self) -> None:
        self.metrics = ProxyMetrics()

    def calls(
        self, reporter: str, src: Peer, dst: Peer, service: str, status: int, ms: float, n: int
    ) -> None:
        series = self.metrics.istio.request_series(
            reporter,
            src,
            dst,
            f"{service}.default.svc.cluster.local",
            service,
            "default",
            "http",
            "mutual_tls",
        )
        for _ in range(n):
            series.record(status, "", "", ms, 0, 10)

    def scrape(self) -> dict:
        return proxy_series(render(self.metrics.registry).decode())[0]


PP = peer("productpage-0", "productpage", PRODUCTPAGE)
RV = peer("reviews-v1-0", "reviews", REVIEWS)
MESHED = frozenset({PRODUCTPAGE, REVIEWS, GATEWAY})


# --- parsing -----------------------------------------------------------------------------


def test_parser_reads_labels_with_escapes_and_skips_other_metrics() -> None:
    text = "\n".join(
        [
            "# HELP istio_requests_total Requests.",
            "# TYPE istio_requests_total counter",
            'istio_requests_total{a="x\\"y",b="line\\nbreak",c="back\\\\slash"} 7',
            'istio_request_bytes_bucket{le="1.0"} 3',
            'istio_request_duration_milliseconds_bucket{le="+Inf"} 2',
            "plait_config_version 4",
        ]
    )
    samples = list(parse_prometheus(text))
    assert samples[0] == (
        "istio_requests_total",
        {"a": 'x"y', "b": "line\nbreak", "c": "back\\slash"},
        7.0,
    )
    assert samples[1] == ("istio_request_duration_milliseconds_bucket", {"le": "+Inf"}, 2.0)
    assert samples[2] == ("plait_config_version", {}, 4.0)
    assert len(samples) == 3  # the byte histogram is not read


def test_proxy_series_sums_counts_errors_and_cumulative_buckets() -> None:
    proxy = FakeProxy()
    proxy.calls("source", PP, RV, "reviews", 200, 3.0, 8)
    proxy.calls("source", PP, RV, "reviews", 503, 30.0, 2)
    series = list(proxy.scrape().values())
    total = Agg()
    for s in series:
        total.add(s.agg)
    assert (total.requests, total.errors) == (10, 2)
    assert total.buckets[5.0] == 8 and total.buckets[50.0] == 10 and total.buckets[INF] == 10


# --- quantiles (promql/quantile.go) ------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, {1.0: 0, 5.0: 10, 10.0: 20, INF: 20}, 5.0),  # rank 10 at the top of (1, 5]
        (0.75, {1.0: 0, 5.0: 10, 10.0: 20, INF: 20}, 7.5),  # halfway through (5, 10]
        (0.5, {10.0: 10, INF: 10}, 5.0),  # the lowest bucket starts at 0
        (0.9, {1.0: 5, INF: 10}, 1.0),  # rank in +Inf: the highest finite bound
        (0.5, {1.0: 5, 2.0: 4, INF: 6}, 0.6),  # made monotonic first: (5, 5, 6)
        (0.99, {0.5: 0, 1.0: 0, 5.0: 100, INF: 100}, 4.96),
        (0.5, {-1.0: 4, 0.0: 4, INF: 8}, -1.0),  # a bound <= 0 is returned as is
    ],
)
def test_histogram_quantile_interpolates_as_prometheus(
    q: float, buckets: dict, expected: float
) -> None:
    assert histogram_quantile(q, buckets) == pytest.approx(expected)


def test_histogram_quantile_edge_cases() -> None:
    assert histogram_quantile(0.5, {1.0: 0, INF: 0}) is None  # no observations: NaN
    assert histogram_quantile(0.5, {1.0: 3}) is None  # no +Inf bucket
    assert histogram_quantile(1.5, {1.0: 3, INF: 3}) == INF
    assert histogram_quantile(-0.1, {1.0: 3, INF: 3}) == -INF


# --- the roll-up ---------------------------------------------------------------------------


def test_rates_success_and_latency_over_a_window() -> None:
    proxy, rollup = FakeProxy(), Rollup()
    proxy.calls("source", PP, RV, "reviews", 200, 3.0, 5)
    rollup.ingest(100.0, {"productpage-0": proxy.scrape()}, MESHED)  # first sight: totals only
    proxy.calls("source", PP, RV, "reviews", 200, 3.0, 18)
    proxy.calls("source", PP, RV, "reviews", 500, 40.0, 2)
    rollup.ingest(102.0, {"productpage-0": proxy.scrape()}, MESHED)
    proxy.calls("source", PP, RV, "reviews", 200, 3.0, 10)
    rollup.ingest(104.0, {"productpage-0": proxy.scrape()}, MESHED)
    window, span = rollup.window(30)
    assert span == 4.0
    edge = window.edges[("default/productpage", "default/reviews")]
    assert (edge.requests, edge.errors) == (30, 2)
    assert rollup.totals.edges[("default/productpage", "default/reviews")].requests == 35
    g = graph(rollup, [ProxyInfo("productpage-0", "default/productpage", False)], 30)
    (e,) = g["edges"]
    assert e["rps"] == pytest.approx(30 / 4)
    assert e["success"] == pytest.approx(28 / 30)
    # 28 of 30 in (1, 5], 2 in (25, 50]: p50 inside (1, 5], p99 inside (25, 50].
    assert e["p50"] == pytest.approx(1 + 4 * 15 / 28)
    assert e["p99"] == pytest.approx(25 + 25 * (0.99 * 30 - 28) / 2)
    assert e["requests"] == 35 and e["errors"] == 2
    # Only the last round falls in a 2 s window.
    assert rollup.window(2)[0].edges[("default/productpage", "default/reviews")].requests == 10


def test_each_request_is_counted_once_across_reporters() -> None:
    """The callee's proxy also reports meshed calls (reporter=destination): they are left to
    the caller's report. A caller outside the mesh is only in the destination report."""
    pp, rv, rollup = FakeProxy(), FakeProxy(), Rollup()
    rollup.ingest(0.0, {"pp": pp.scrape(), "rv": rv.scrape()}, MESHED)
    pp.calls("source", PP, RV, "reviews", 200, 2.0, 6)
    rv.calls(
        "destination", Peer(principal=PRODUCTPAGE, namespace="default"), RV, "reviews", 200, 1.0, 6
    )
    rv.calls("destination", Peer(), RV, "reviews", 200, 1.0, 4)  # plaintext, from outside
    rollup.ingest(2.0, {"pp": pp.scrape(), "rv": rv.scrape()}, MESHED)
    window, _ = rollup.window(30)
    assert window.inbound["default/reviews"].requests == 10
    assert window.edges[("default/productpage", "default/reviews")].requests == 6
    assert window.edges[("unknown", "default/reviews")].requests == 4
    assert window.workloads_in[("default/reviews", "reviews-v1-0")].requests == 10
    nodes = {n["id"]: n for n in graph(rollup, [], 30)["nodes"]}
    assert nodes["unknown"]["kind"] == "external"


def test_a_caller_without_a_proxy_of_ours_is_counted_from_the_destination() -> None:
    rv, rollup = FakeProxy(), Rollup()
    rollup.ingest(0.0, {"rv": rv.scrape()}, frozenset({REVIEWS}))
    rv.calls("destination", Peer(principal=PRODUCTPAGE), RV, "reviews", 200, 1.0, 3)
    rollup.ingest(2.0, {"rv": rv.scrape()}, frozenset({REVIEWS}))  # productpage not connected
    assert rollup.window(30)[0].edges[("default/productpage", "default/reviews")].requests == 3


def test_counter_reset_counts_the_new_value_and_totals_never_drop() -> None:
    old, rollup = FakeProxy(), Rollup()
    old.calls("source", PP, RV, "reviews", 200, 2.0, 50)
    rollup.ingest(0.0, {"pp": old.scrape()}, MESHED)
    restarted = FakeProxy()
    restarted.calls("source", PP, RV, "reviews", 200, 2.0, 4)
    rollup.ingest(2.0, {"pp": restarted.scrape()}, MESHED)
    key = ("default/productpage", "default/reviews")
    assert rollup.window(30)[0].edges[key].requests == 4
    assert rollup.totals.edges[key].requests == 54


def test_failed_scrape_defers_increments_to_the_next_good_one() -> None:
    proxy, rollup = FakeProxy(), Rollup()
    rollup.ingest(0.0, {"pp": proxy.scrape()}, MESHED)
    proxy.calls("source", PP, RV, "reviews", 200, 2.0, 7)
    rollup.ingest(2.0, {"pp": None}, MESHED)
    proxy.calls("source", PP, RV, "reviews", 200, 2.0, 3)
    rollup.ingest(4.0, {"pp": proxy.scrape()}, MESHED)
    window, span = rollup.window(30)
    assert window.edges[("default/productpage", "default/reviews")].requests == 10 and span == 4.0


def test_gateway_node_shows_what_it_sent_and_sparklines_have_one_point_per_round() -> None:
    gw, rollup = FakeProxy(), Rollup()
    gateway = peer("bookinfo-gateway", "bookinfo-gateway", GATEWAY, "unknown")
    rollup.ingest(0.0, {"gw": gw.scrape()}, MESHED)
    for t in range(1, 5):
        gw.calls("source", gateway, PP, "productpage", 200, 20.0, 2 * t)
        rollup.ingest(2.0 * t, {"gw": gw.scrape()}, MESHED)
    proxies = [
        ProxyInfo("bookinfo-gateway", "default/bookinfo-gateway", True),
        ProxyInfo("productpage-0", "default/productpage", False),
    ]
    nodes = {n["id"]: n for n in graph(rollup, proxies, 30)["nodes"]}
    assert nodes["default/bookinfo-gateway"]["kind"] == "gateway"
    assert nodes["default/bookinfo-gateway"]["requests"] == 20
    assert nodes["default/bookinfo-gateway"]["series"]["rps"] == [1.0, 2.0, 3.0, 4.0]
    assert nodes["default/productpage"]["rps"] == pytest.approx(20 / 8)
    rows = {r["name"]: r for r in stat(rollup, proxies, "workload", 30)}
    assert rows["bookinfo-gateway"]["requests"] == 20
    assert rows["productpage-0"]["requests"] == 20 and rows["productpage-0"]["meshed"] == 1
    services = {r["name"]: r for r in stat(rollup, proxies, "service", 30)}
    assert services["productpage"]["success"] == 1.0


def test_idle_service_has_no_success_rate_and_zero_rps() -> None:
    rollup = Rollup()
    rows = stat(rollup, [ProxyInfo("details-0", "default/details", False)], "service", 30)
    assert rows == [
        {
            "namespace": "default",
            "name": "details",
            "meshed": 1,
            "rps": 0.0,
            "success": None,
            "p50": None,
            "p95": None,
            "p99": None,
            "requests": 0.0,
            "errors": 0.0,
        }
    ]


# --- file_sd and the scrape loop -------------------------------------------------------------


def test_file_sd_groups_name_each_proxy() -> None:
    groups = file_sd_targets(
        [
            {
                "name": "reviews-v1-0",
                "service": "reviews",
                "namespace": "default",
                "addresses": {"admin": "0.0.0.0:15000"},
            },
            {"name": "no-admin", "service": "x", "addresses": {}},
        ]
    )
    assert groups == [
        {
            "targets": ["127.0.0.1:15000"],
            "labels": {
                "service": "reviews",
                "namespace": "default",
                "workload": "reviews-v1-0",
                "__metrics_path__": "/stats/prometheus",
            },
        }
    ]


def test_scrape_round_reads_admins_and_writes_file_sd(tmp_path: Path) -> None:
    proxy = FakeProxy()
    proxy.calls("source", PP, RV, "reviews", 200, 2.0, 3)

    async def main() -> None:
        async def admin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = render(proxy.metrics.registry)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(admin, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        status = [
            {
                "name": "productpage-0",
                "service": "productpage",
                "namespace": "default",
                "identity": PRODUCTPAGE,
                "addresses": {"admin": f"127.0.0.1:{port}"},
            },
            {"name": "gone", "service": "x", "addresses": {"admin": "127.0.0.1:1"}},
        ]
        clock = iter([10.0, 12.0])
        telemetry = Telemetry(lambda: status, tmp_path, clock=lambda: next(clock))
        await telemetry.scrape_round()
        proxy.calls("source", PP, RV, "reviews", 500, 2.0, 1)
        await telemetry.scrape_round()
        await telemetry.aclose()
        server.close()
        window, _ = telemetry.rollup.window(30)
        assert window.edges[("default/productpage", "default/reviews")].errors == 1
        assert telemetry.scrapes["productpage-0"].error is None
        assert telemetry.scrapes["productpage-0"].gauges["plait_config_version"] == 0
        assert telemetry.scrapes["gone"].error  # refused: reported, not raised
        written = json.loads((tmp_path / "prometheus-targets.json").read_text())
        assert [g["labels"]["workload"] for g in written] == ["gone", "productpage-0"]

    asyncio.run(main())


# --- paths and routes from taps ------------------------------------------------------------


def test_path_aggregator_ranks_paths_and_routes() -> None:
    now = [100.0]
    agg = PathAggregator(lambda: [], clock=lambda: now[0])
    agg.started = 40.0
    caller = {
        "listener": "inbound",
        "service": "reviews",
        "method": "GET",
        "peer_identity": PRODUCTPAGE,
    }
    for i in range(4):
        agg.add({**caller, "path": "/reviews/0?x=1", "status": 200, "duration_ms": 1.0 + i})
    agg.add({**caller, "path": "/health", "status": 503, "duration_ms": 9.0})
    agg.add(
        {
            "listener": "outbound",
            "route": "reviews.default-route",
            "status": 200,
            "duration_ms": 2.0,
            "upstream_cluster": "reviews.default",
        }
    )
    agg.add({"error": "tap unavailable", "proxy": "x"})  # not a request
    top = agg.top(60)
    assert [(r["path"], r["count"]) for r in top] == [("/reviews/0", 4), ("/health", 1)]
    assert top[0]["source"] == "productpage" and top[0]["rps"] == pytest.approx(4 / 60)
    assert (top[0]["best"], top[0]["worst"], top[0]["last"], top[0]["p50"]) == (1.0, 4.0, 4.0, 2.0)
    assert top[1]["success"] == 0.0
    (route,) = agg.route_stats()
    assert (route["name"], route["service"], route["count"]) == (
        "reviews.default-route",
        "reviews",
        1,
    )
    now[0] = 200.0  # a minute later: all of it has left the window
    assert agg.top(60) == []
