"""Route tables compiled from snapshots: pure, no sockets."""

from __future__ import annotations

import random

from plait.config.snapshot import Snapshot
from plait.proxy.routing import RouteTable, split_authority


def snapshot(routes: list[dict] | None = None, gateway: str = "") -> Snapshot:
    return Snapshot.from_dict(
        {
            "node": {"gateway": gateway},
            "clusters": [
                {"name": "reviews", "ports": [9080]},
                {"name": "reviews-v1", "ports": [9080]},
                {"name": "reviews-v2", "ports": [9080]},
                {"name": "productpage", "ports": [9080]},
            ],
            "routes": routes or [],
        }
    )


def rule(backend: str, **match: object) -> dict:
    return {"matches": [match] if match else [], "backends": [{"service": backend}]}


def test_service_names_resolve_like_kubernetes_dns() -> None:
    table = RouteTable(snapshot())
    for authority in (b"reviews", b"reviews:9080", b"reviews.default", b"reviews.default.svc.cluster.local:9080", b"REVIEWS"):
        decision = table.outbound(authority, b"GET", b"/", [])
        assert decision is not None and decision.service == ("default", "reviews"), authority


def test_unknown_host_or_wrong_port_has_no_route() -> None:
    table = RouteTable(snapshot())
    assert table.outbound(b"ratings:9080", b"GET", b"/", []) is None
    assert table.outbound(b"reviews:9999", b"GET", b"/", []) is None


def test_split_authority() -> None:
    assert split_authority(b"a:80") == ("a", 80)
    assert split_authority(b"a") == ("a", None)
    assert split_authority(b"[::1]:8080") == ("[::1]", 8080)
    assert split_authority(b"a:x") == ("a", None)


def test_gamma_route_on_service_splits_by_header() -> None:
    routes = [
        {
            "name": "reviews",
            "parent_kind": "Service",
            "parent_name": "reviews",
            "rules": [
                {
                    "matches": [{"headers": [{"name": "end-user", "value": "jason"}]}],
                    "backends": [{"service": "reviews-v2"}],
                },
                rule("reviews-v1"),
            ],
        }
    ]
    table = RouteTable(snapshot(routes))
    jason = table.outbound(b"reviews:9080", b"GET", b"/reviews/0", [(b"end-user", b"jason")])
    other = table.outbound(b"reviews:9080", b"GET", b"/reviews/0", [(b"end-user", b"bob")])
    assert jason is not None and jason.service == ("default", "reviews-v2")
    assert other is not None and other.service == ("default", "reviews-v1")


def test_exact_beats_prefix_and_longer_prefix_beats_shorter() -> None:
    routes = [
        {
            "name": "r",
            "parent_kind": "Service",
            "parent_name": "reviews",
            "rules": [
                rule("reviews-v1", path={"type": "PathPrefix", "value": "/"}),
                rule("reviews-v2", path={"type": "PathPrefix", "value": "/api"}),
                rule("productpage", path={"type": "Exact", "value": "/api/x"}),
            ],
        }
    ]
    table = RouteTable(snapshot(routes))
    pick = lambda p: table.outbound(b"reviews", b"GET", p, []).service[1]  # noqa: E731
    assert pick(b"/api/x") == "productpage"
    assert pick(b"/api/y") == "reviews-v2"
    assert pick(b"/apix") == "reviews-v1"  # element-wise prefix: /api does not match /apix
    assert pick(b"/") == "reviews-v1"


def test_method_match() -> None:
    routes = [{"name": "r", "parent_kind": "Service", "parent_name": "reviews", "rules": [rule("reviews-v2", method="POST")]}]
    table = RouteTable(snapshot(routes))
    assert table.outbound(b"reviews", b"POST", b"/", []).service[1] == "reviews-v2"
    assert table.outbound(b"reviews", b"GET", b"/", []) is None


def test_weights_split_statistically_and_zero_is_honoured() -> None:
    routes = [
        {
            "name": "split",
            "parent_kind": "Service",
            "parent_name": "reviews",
            "rules": [
                {
                    "backends": [
                        {"service": "reviews-v1", "weight": 80},
                        {"service": "reviews-v2", "weight": 20},
                        {"service": "productpage", "weight": 0},
                    ]
                }
            ],
        }
    ]
    table = RouteTable(snapshot(routes), rng=random.Random(7))
    counts: dict[str, int] = {}
    for _ in range(10_000):
        name = table.outbound(b"reviews", b"GET", b"/", []).service[1]
        counts[name] = counts.get(name, 0) + 1
    assert "productpage" not in counts
    assert 7_700 < counts["reviews-v1"] < 8_300


def test_gateway_routes_only_on_their_gateway() -> None:
    routes = [
        {
            "name": "bookinfo",
            "parent_kind": "Gateway",
            "parent_name": "gw",
            "rules": [rule("productpage", path={"type": "Exact", "value": "/productpage"})],
        }
    ]
    assert RouteTable(snapshot(routes, gateway="other")).gateway(b"x", b"GET", b"/productpage", []) is None
    table = RouteTable(snapshot(routes, gateway="gw"))
    assert table.gateway(b"anything:8080", b"GET", b"/productpage", []).service[1] == "productpage"
    assert table.gateway(b"anything", b"GET", b"/other", []) is None


def test_gateway_hostnames_and_wildcards() -> None:
    routes = [
        {
            "name": "a",
            "parent_kind": "Gateway",
            "parent_name": "gw",
            "hostnames": ["*.example.com"],
            "rules": [rule("productpage")],
        }
    ]
    table = RouteTable(snapshot(routes, gateway="gw"))
    assert table.gateway(b"shop.example.com", b"GET", b"/", []) is not None
    assert table.gateway(b"example.org", b"GET", b"/", []) is None
