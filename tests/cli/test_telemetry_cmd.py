"""`plait stat`, `top` and `tap` output: linkerd's table shapes and one readable tap line."""

from __future__ import annotations

from plait.cli.telemetry_cmd import format_tap_line, stat_table, top_table


def test_stat_table_has_linkerd_columns_and_dashes_for_idle_rows() -> None:
    rows = [
        {
            "namespace": "default",
            "name": "reviews",
            "meshed": 3,
            "rps": 2.5,
            "success": 0.9876,
            "p50": 3.21,
            "p95": 12.0,
            "p99": 48.6,
        },
        {
            "namespace": "default",
            "name": "details",
            "meshed": 1,
            "rps": 0.0,
            "success": None,
            "p50": None,
            "p95": None,
            "p99": None,
        },
    ]
    lines = stat_table("service", rows).splitlines()
    assert lines[0].split() == [
        "NAME",
        "MESHED",
        "SUCCESS",
        "RPS",
        "LATENCY_P50",
        "LATENCY_P95",
        "LATENCY_P99",
    ]
    assert lines[1].split() == ["reviews", "3", "98.76%", "2.50rps", "3.2ms", "12ms", "49ms"]
    assert lines[2].split() == ["details", "1", "-", "-", "-", "-", "-"]


def test_stat_table_adds_a_namespace_column_across_namespaces() -> None:
    rows = [
        {
            "namespace": "a",
            "name": "x-0",
            "service": "x",
            "rps": 1.0,
            "success": 1.0,
            "p50": 1.0,
            "p95": 1.0,
            "p99": 1.0,
        },
        {
            "namespace": "b",
            "name": "y-0",
            "service": "y",
            "rps": 1.0,
            "success": 1.0,
            "p50": 1.0,
            "p95": 1.0,
            "p99": 1.0,
        },
    ]
    lines = stat_table("workload", rows).splitlines()
    assert lines[0].split()[:3] == ["NAMESPACE", "NAME", "SERVICE"]
    assert lines[2].split()[:3] == ["b", "y-0", "y"]


def test_top_table_lists_paths() -> None:
    rows = [
        {
            "source": "productpage",
            "destination": "reviews",
            "method": "GET",
            "path": "/reviews/0",
            "count": 12,
            "best": 0.8,
            "worst": 31.0,
            "last": 2.0,
            "success": 1.0,
        }
    ]
    lines = top_table(rows).splitlines()
    assert lines[0].split()[:4] == ["SOURCE", "DESTINATION", "METHOD", "PATH"]
    assert lines[1].split() == [
        "productpage",
        "reviews",
        "GET",
        "/reviews/0",
        "12",
        "0.8ms",
        "31ms",
        "2.0ms",
        "100.00%",
    ]


def test_tap_line_says_who_called_whom() -> None:
    inbound = {
        "time": "2026-01-02T03:04:05.678Z",
        "listener": "inbound",
        "method": "GET",
        "path": "/reviews/0",
        "status": 200,
        "response_flags": "-",
        "duration_ms": 3.25,
        "peer_identity": "spiffe://cluster.local/ns/default/sa/productpage",
        "proxy": "reviews-v2-0",
    }
    line = format_tap_line(inbound)
    assert line.startswith("03:04:05.678  in   GET    /reviews/0")
    assert line.endswith("3.2ms  productpage -> reviews-v2-0")
    outbound = {
        **inbound,
        "listener": "outbound",
        "path": "/ratings/0",
        "status": 503,
        "response_flags": "UH",
        "upstream_cluster": "ratings.default",
        "upstream_host": None,
    }
    line = format_tap_line(outbound)
    assert " 503 UH " in line and line.endswith("reviews-v2-0 -> ratings")
