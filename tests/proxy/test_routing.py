"""Route tables compiled from snapshots: pure, no sockets."""

from __future__ import annotations

import random

import pytest

from plait.config.snapshot import Snapshot
from plait.proto.events import Headers
from plait.proxy import routing
from plait.proxy.filters.route_filters import edit_headers
from plait.proxy.routing import NO_SERVICE, RouteTable, split_authority


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
    for authority in (
        b"reviews",
        b"reviews:9080",
        b"reviews.default",
        b"reviews.default.svc.cluster.local:9080",
        b"REVIEWS",
    ):
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
    routes = [
        {
            "name": "r",
            "parent_kind": "Service",
            "parent_name": "reviews",
            "rules": [rule("reviews-v2", method="POST")],
        }
    ]
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
    assert (
        RouteTable(snapshot(routes, gateway="other")).gateway(b"x", b"GET", b"/productpage", [])
        is None
    )
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


# --- matches ------------------------------------------------------------------------------


def route(
    *rules: dict, name: str = "r", namespace: str = "default", parent: str = "reviews"
) -> dict:
    return {
        "name": name,
        "namespace": namespace,
        "parent_kind": "Service",
        "parent_name": parent,
        "rules": list(rules),
    }


def table(*routes: dict, seed: int = 1) -> RouteTable:
    return RouteTable(snapshot(list(routes)), rng=random.Random(seed))


def to(
    t: RouteTable,
    path: bytes = b"/",
    headers: Headers | None = None,
    method: bytes = b"GET",
    query: bytes = b"",
) -> str | None:
    decision = t.outbound(b"reviews:9080", method, path, headers or [], query=query)
    return None if decision is None else decision.service[1]


def test_regex_path_must_match_the_whole_path() -> None:
    t = table(
        route(rule("reviews-v2", path={"type": "RegularExpression", "value": "/reviews/[0-9]+"}))
    )
    assert to(t, b"/reviews/12") == "reviews-v2"
    assert to(t, b"/reviews/12/x") is None
    assert to(t, b"/x/reviews/1") is None


def test_header_regex_and_names_are_case_insensitive() -> None:
    t = table(
        route(
            rule(
                "reviews-v2",
                headers=[{"name": "X-Canary", "value": "on|yes", "type": "RegularExpression"}],
            )
        )
    )
    assert to(t, headers=[(b"x-canary", b"yes")]) == "reviews-v2"
    assert to(t, headers=[(b"x-canary", b"yes!")]) is None
    assert to(t, headers=[(b"x-other", b"yes")]) is None


def test_repeated_header_matches_one_value_or_the_combined_value() -> None:
    t = table(
        route(
            rule("reviews-v2", headers=[{"name": "end-user", "value": "jason"}]),
            rule("reviews-v1", headers=[{"name": "x-list", "value": "a, b"}]),
        )
    )
    assert to(t, headers=[(b"end-user", b"bob"), (b"end-user", b"jason")]) == "reviews-v2"
    assert to(t, headers=[(b"x-list", b"a"), (b"x-list", b"b")]) == "reviews-v1"  # RFC 9110 5.3
    assert to(t, headers=[(b"x-list", b"a")]) is None


def test_query_param_exact_and_regex_with_decoding_and_first_value() -> None:
    t = table(
        route(
            rule("reviews-v2", query_params=[{"name": "user", "value": "jé"}]),
            rule(
                "reviews-v1",
                query_params=[{"name": "id", "value": "[0-9]+", "type": "RegularExpression"}],
            ),
        )
    )
    assert to(t, query=b"user=j%C3%A9") == "reviews-v2"
    assert to(t, query=b"user=bob&user=j%C3%A9") is None  # a repeated name: the first value
    assert to(t, query=b"id=42") == "reviews-v1"
    assert to(t, query=b"id=4x") is None
    assert to(t, query=b"ID=42") is None  # names are case-sensitive


@pytest.mark.python_core  # patches a function the compiled router calls directly
def test_query_string_is_parsed_lazily_and_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real = routing.parse_query
    monkeypatch.setattr(routing, "parse_query", lambda q: calls.append(q) or real(q))
    t = table(
        route(
            rule(
                "reviews-v2",
                query_params=[{"name": "a", "value": "1"}, {"name": "b", "value": "2"}],
            ),
            rule("reviews-v1", query_params=[{"name": "a", "value": "1"}]),
            rule("productpage", path={"type": "Exact", "value": "/exact"}),
        )
    )
    assert to(t, b"/exact", query=b"a=1") == "productpage"
    assert calls == []  # the exact-path rule ranks first and needs no query
    assert to(t, b"/", query=b"a=1") == "reviews-v1"
    assert calls == [b"a=1"]


def test_matches_or_and_fields_within_a_match_and() -> None:
    both = {"path": {"type": "PathPrefix", "value": "/api"}, "method": "POST"}
    t = table(
        route(
            {
                "matches": [both, {"headers": [{"name": "x-debug", "value": "1"}]}],
                "backends": [{"service": "reviews-v2"}],
            }
        )
    )
    assert to(t, b"/api/x", method=b"POST") == "reviews-v2"
    assert to(t, b"/api/x", method=b"GET") is None
    assert to(t, b"/other", headers=[(b"x-debug", b"1")]) == "reviews-v2"


# --- precedence ---------------------------------------------------------------------------


def test_exact_beats_regex_beats_prefix() -> None:
    t = table(
        route(
            rule("reviews-v1", path={"type": "PathPrefix", "value": "/api/items"}),
            rule("reviews-v2", path={"type": "RegularExpression", "value": "/api/.*"}),
            rule("productpage", path={"type": "Exact", "value": "/api/items/1"}),
        )
    )
    assert to(t, b"/api/items/1") == "productpage"
    assert to(t, b"/api/items/2") == "reviews-v2"


def test_method_beats_header_count_at_equal_paths() -> None:
    headers = [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]
    t = table(route(rule("reviews-v1", headers=headers), rule("reviews-v2", method="GET")))
    assert to(t, headers=[(b"a", b"1"), (b"b", b"2")]) == "reviews-v2"


def test_more_headers_beat_fewer_and_more_query_params_beat_fewer() -> None:
    t = table(
        route(
            rule("reviews-v1", headers=[{"name": "a", "value": "1"}]),
            rule("reviews-v2", headers=[{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]),
        )
    )
    assert to(t, headers=[(b"a", b"1"), (b"b", b"2")]) == "reviews-v2"
    t = table(
        route(
            rule("reviews-v1", query_params=[{"name": "a", "value": "1"}]),
            rule(
                "reviews-v2",
                query_params=[{"name": "a", "value": "1"}, {"name": "b", "value": "2"}],
            ),
        )
    )
    assert to(t, query=b"a=1&b=2") == "reviews-v2"


def test_ties_across_routes_go_to_namespace_name_order_not_snapshot_order() -> None:
    later = route(rule("reviews-v2"), name="zeta")
    earlier = route(rule("reviews-v1"), name="alpha")
    assert to(table(later, earlier)) == "reviews-v1"
    assert to(table(earlier, later)) == "reviews-v1"


def test_ties_within_a_route_go_to_the_first_rule() -> None:
    assert to(table(route(rule("reviews-v2"), rule("reviews-v1")))) == "reviews-v2"


def gateway_route(name: str, hostnames: list[str], backend: str, **match: object) -> dict:
    return {
        "name": name,
        "parent_kind": "Gateway",
        "parent_name": "gw",
        "hostnames": hostnames,
        "rules": [rule(backend, **match)],
    }


def test_gateway_exact_hostname_beats_wildcards_which_beat_none() -> None:
    t = RouteTable(
        snapshot(
            [
                gateway_route("a-any", [], "productpage"),
                gateway_route("b-wild", ["*.example.com"], "reviews-v1"),
                gateway_route("c-longer-wild", ["*.shop.example.com"], "reviews"),
                gateway_route(
                    "d-exact",
                    ["www.shop.example.com"],
                    "reviews-v2",
                    path={"type": "PathPrefix", "value": "/v2"},
                ),
            ],
            gateway="gw",
        )
    )
    pick = lambda host, path=b"/": t.gateway(host, b"GET", path, []).service[1]  # noqa: E731
    assert pick(b"www.shop.example.com", b"/v2") == "reviews-v2"
    assert pick(b"www.shop.example.com", b"/other") == "reviews"  # falls through to the next tier
    assert pick(b"a.shop.example.com") == "reviews"
    assert pick(b"a.example.com") == "reviews-v1"
    assert pick(b"example.org") == "productpage"


# --- backends, timeouts and filters -----------------------------------------------------------


def test_all_weights_zero_or_no_backends_answer_500() -> None:
    t = table(
        route(
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/zero"}}],
                "backends": [{"service": "reviews-v1", "weight": 0}],
            },
            {"matches": [{"path": {"type": "PathPrefix", "value": "/none"}}]},
        )
    )
    for path in (b"/zero", b"/none"):
        decision = t.outbound(b"reviews", b"GET", path, [])
        assert decision is not None and decision.reply is not None
        assert (decision.service, decision.reply.status) == (NO_SERVICE, 500)


def test_both_timeouts_reach_the_decision() -> None:
    t = table(
        route(
            {
                "backends": [{"service": "reviews-v1"}],
                "timeout_ms": 10_000,
                "backend_timeout_ms": 2_500,
            }
        )
    )
    decision = t.outbound(b"reviews", b"GET", b"/", [])
    assert decision is not None and (decision.timeout_ms, decision.backend_timeout_ms) == (
        10_000,
        2_500,
    )


def test_a_rule_without_filters_returns_one_prebuilt_decision() -> None:
    t = table(route(rule("reviews-v1")))
    first = t.outbound(b"reviews", b"GET", b"/", [])
    assert first is not None and first is t.outbound(b"reviews", b"GET", b"/x", [])
    assert (first.request_headers, first.reply, first.path, first.mirrors, first.delay_ms) == (
        (),
        None,
        None,
        (),
        0,
    )


def test_header_filters_of_rule_and_chosen_backend() -> None:
    set_a = {"set": [{"name": "x-a", "value": "rule"}]}
    t = table(
        route(
            {
                "filters": {"request_headers": set_a, "response_headers": {"remove": ["server"]}},
                "backends": [
                    {
                        "service": "reviews-v1",
                        "weight": 1,
                        "filters": {"request_headers": {"add": [{"name": "x-v", "value": "1"}]}},
                    },
                    {"service": "reviews-v2", "weight": 1},
                ],
            }
        )
    )
    seen = {}
    for _ in range(50):
        d = t.outbound(b"reviews", b"GET", b"/", [])
        assert d is not None
        seen[d.service[1]] = edit_headers([(b"x-a", b"client")], d.request_headers)
        assert edit_headers([(b"server", b"app")], d.response_headers) == []
    assert seen == {
        "reviews-v1": [(b"x-a", b"rule"), (b"x-v", b"1")],
        "reviews-v2": [(b"x-a", b"rule")],
    }


def test_url_rewrite_hostname_and_prefix_keep_the_query() -> None:
    rewrite = {
        "hostname": "reviews.internal",
        "path": {"type": "ReplacePrefixMatch", "value": "/v2"},
    }
    t = table(
        route(
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/v1/"}}],
                "filters": {"rewrite": rewrite},
                "backends": [{"service": "reviews-v2"}],
            }
        )
    )
    d = t.outbound(b"reviews", b"GET", b"/v1/reviews/0", [], query=b"u=jason")
    assert d is not None and (d.path, d.authority) == (
        b"/v2/reviews/0?u=jason",
        b"reviews.internal",
    )


def test_redirect_is_a_ready_local_reply() -> None:
    redirect = {
        "scheme": "https",
        "path": {"type": "ReplaceFullPath", "value": "/login"},
        "status_code": 301,
    }
    t = table(route({"filters": {"redirect": redirect}}))
    d = t.outbound(b"reviews:9080", b"GET", b"/x", [], query=b"a=1")
    assert d is not None and d.reply is not None and d.service == NO_SERVICE
    assert (d.reply.status, d.reply.headers) == (
        301,
        ((b"location", b"https://reviews/login?a=1"),),
    )


def test_mirror_all_is_static_and_a_fraction_is_sampled() -> None:
    mirrors = [
        {"service": "productpage"},
        {"service": "reviews-v2", "numerator": 1, "denominator": 4},
    ]
    t = table(
        route({"filters": {"mirrors": mirrors}, "backends": [{"service": "reviews-v1"}]}), seed=3
    )
    counts = {"productpage": 0, "reviews-v2": 0}
    for _ in range(4_000):
        d = t.outbound(b"reviews", b"GET", b"/", [])
        assert d is not None and d.service == ("default", "reviews-v1")
        for m in d.mirrors:
            counts[m.service] += 1
    assert counts["productpage"] == 4_000
    assert 850 < counts["reviews-v2"] < 1_150


def test_fault_delay_and_abort_on_the_decision() -> None:
    fault = {"delay_ms": 7_000, "delay_percent": 100, "abort_http_status": 503, "abort_percent": 50}
    t = table(route({"filters": {"fault": fault}, "backends": [{"service": "reviews-v1"}]}), seed=5)
    aborted = 0
    for _ in range(2_000):
        d = t.outbound(b"reviews", b"GET", b"/", [])
        assert d is not None and d.delay_ms == 7_000
        if d.reply is not None:
            assert (d.reply.status, d.reply.flag) == (503, "FI")
            aborted += 1
    assert 900 < aborted < 1_100


# --- micro-benchmark: `python tests/proxy/test_routing.py` --------------------------------------


def bench() -> None:
    """Per-request cost of outbound routing; not a test (timings vary by machine)."""
    import timeit

    canary = route(
        {
            "matches": [{"headers": [{"name": "end-user", "value": "jason"}]}],
            "backends": [{"service": "reviews-v2"}],
        },
        rule("reviews-v1"),
    )
    split = route(
        {
            "backends": [
                {"service": "reviews-v1", "weight": 50},
                {"service": "reviews-v2", "weight": 50},
            ]
        }
    )
    headers = [
        (b"host", b"reviews:9080"),
        (b"user-agent", b"bench"),
        (b"accept", b"*/*"),
        (b"x-request-id", b"1"),
    ]
    cases = {
        "no route (Service itself)": (table(), headers),
        "header canary, not jason (2 rules)": (table(canary), headers),
        "header canary, jason": (table(canary), [*headers, (b"end-user", b"jason")]),
        "50/50 weighted split": (table(split), headers),
    }
    for name, (t, h) in cases.items():
        n = 200_000
        seconds = min(
            timeit.repeat(
                lambda t=t, h=h: t.outbound(b"reviews:9080", b"GET", b"/reviews/0", h),
                number=n,
                repeat=5,
            )
        )
        print(f"{name:40} {seconds / n * 1e9:6.0f} ns")


if __name__ == "__main__":
    bench()
