"""Snapshot parsing: errors name the field path."""

from __future__ import annotations

import copy
import re

import pytest

from plait.config.snapshot import Snapshot, SnapshotError, compile_regex

GOOD = {
    "version": "3",
    "node": {"name": "p", "service": "productpage", "labels": {"version": "v1"}},
    "clusters": [
        {"name": "reviews", "ports": [9080], "endpoints": [{"address": "127.0.0.1", "port": 1}]}
    ],
    "routes": [
        {
            "name": "r",
            "parent_kind": "Service",
            "parent_name": "reviews",
            "rules": [
                {
                    "matches": [{"path": {"type": "Exact", "value": "/x"}}],
                    "backends": [{"service": "reviews"}],
                }
            ],
        }
    ],
}


def test_round_trip() -> None:
    snap = Snapshot.from_dict(GOOD)
    assert Snapshot.from_dict(snap.to_dict()) == snap


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["clusters"][0]["endpoints"][0].update(port="x"),
            "clusters[0].endpoints[0].port: expected int",
        ),
        (
            lambda d: d["clusters"][0]["endpoints"][0].update(port=70000),
            "clusters[0].endpoints[0].port: port 70000",
        ),
        (lambda d: d["clusters"][0].update(colour="red"), "clusters[0].colour: unknown field"),
        (
            lambda d: d["routes"][0]["rules"][0]["backends"][0].update(service="nope"),
            "routes[0].rules[0].backends[0].service: no service",
        ),
        (
            lambda d: d["routes"][0]["rules"][0]["matches"][0]["path"].update(type="Regex"),
            "routes[0].rules[0].matches[0].path.type",
        ),
        (lambda d: d["clusters"].append(dict(d["clusters"][0])), "clusters[1].name: duplicate"),
        (
            lambda d: d["clusters"][0]["endpoints"][0].update(port=True),
            "expected an integer, got a boolean",
        ),
        (lambda d: d.update(node=[1]), "node: expected Mapping"),
    ],
)
def test_errors_name_the_field(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(SnapshotError, match=re.escape(message)):
        Snapshot.from_dict(data)


FULL_RULE = {
    "matches": [
        {
            "path": {"type": "RegularExpression", "value": "/r/[0-9]+"},
            "method": "GET",
            "headers": [{"name": "X-Canary", "value": "on|yes", "type": "RegularExpression"}],
            "query_params": [{"name": "u", "value": "jason"}],
        }
    ],
    "backends": [
        {
            "service": "reviews",
            "weight": 3,
            "filters": {"rewrite": {"hostname": "reviews.internal", "path": None}},
        }
    ],
    "timeout_ms": 10_000,
    "backend_timeout_ms": 2_000,
    "filters": {
        "request_headers": {"set": [{"name": "X-A", "value": "1"}], "add": [], "remove": ["x-b"]},
        "response_headers": {"remove": ["server"]},
        "mirrors": [{"service": "reviews", "numerator": 1, "denominator": 10}],
        "fault": {
            "delay_ms": 7000,
            "delay_percent": 100,
            "abort_http_status": 503,
            "abort_percent": 5.5,
        },
    },
}


def _with_rule(rule: dict) -> dict:
    data = copy.deepcopy(GOOD)
    data["routes"][0]["rules"] = [copy.deepcopy(rule)]
    return data


def test_round_trip_with_every_match_and_filter() -> None:
    snap = Snapshot.from_dict(_with_rule(FULL_RULE))
    assert Snapshot.from_dict(snap.to_dict()) == snap
    rule = snap.routes[0].rules[0]
    assert rule.filters.request_headers is not None
    assert rule.filters.request_headers.set == (("x-a", "1"),)  # names lower-cased
    assert rule.matches[0].headers[0].name == "x-canary"
    assert rule.matches[0].path is not None and rule.matches[0].path.regex is not None


def test_redirect_round_trip() -> None:
    redirect = {
        "scheme": "https",
        "port": 8443,
        "status_code": 308,
        "path": {"type": "ReplacePrefixMatch", "value": ""},
    }
    snap = Snapshot.from_dict(_with_rule({"filters": {"redirect": redirect}}))
    assert Snapshot.from_dict(snap.to_dict()) == snap


def _set(path: list, value: object):  # type: ignore[no-untyped-def]
    def mutate(rule: dict) -> None:
        node = rule
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            _set(["matches", 0, "path", "value"], "/(a*)*"),
            "rules[0].matches[0].path.value: nested repeats",
        ),
        (
            _set(["matches", 0, "headers", 0, "value"], "(["),
            "matches[0].headers[0].value: invalid regular",
        ),
        (
            _set(["matches", 0, "query_params", 0, "type"], "Prefix"),
            "query_params[0].type: must be one of",
        ),
        (
            _set(["filters", "request_headers", "set", 0, "name"], "Host"),
            "filters.request_headers: header 'host'",
        ),
        (_set(["filters", "request_headers", "set", 0, "value"], "a\nb"), "control character"),
        (
            _set(["filters", "mirrors", 0, "service"], "gone"),
            "rules[0].filters.mirrors[0].service: no service",
        ),
        (
            _set(["filters", "mirrors", 0, "numerator"], 11),
            "filters.mirrors[0]: the mirrored fraction",
        ),
        (
            _set(["filters", "fault", "delay_percent"], 101),
            "filters.fault.delay_percent: expected a percentage",
        ),
        (
            _set(["filters", "fault", "abort_grpc_status"], 14),
            "abort with an HTTP status or a gRPC status",
        ),
        (_set(["filters", "colour"], "red"), "rules[0].filters.colour: unknown field"),
        (
            _set(["filters", "redirect"], {"status_code": 200}),
            "filters.redirect: status_code must be",
        ),
        (
            _set(["backends", 0, "filters"], {"redirect": {}}),
            "backends[0].filters: a redirect answers",
        ),
        (
            _set(["backends", 0, "filters", "redirect"], {}),
            "backends[0].filters: a rule cannot both",
        ),
        (_set(["backend_timeout_ms"], -1), "rules[0]: timeouts must be >= 0"),
    ],
)
def test_route_errors_name_the_field(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    rule = copy.deepcopy(FULL_RULE)
    mutate(rule)
    with pytest.raises(SnapshotError, match=re.escape(message)):
        Snapshot.from_dict(_with_rule(rule))


@pytest.mark.parametrize(
    "pattern",
    ["/reviews/[0-9]+", "(/[a-z]++)*", "(?>/[a-z]+)*", r"(\d{1,3}\.){3}\d{1,3}", ".*foo.*"],
)
def test_safe_regexes_compile(pattern: str) -> None:
    assert compile_regex(pattern).fullmatch is not None


@pytest.mark.parametrize(
    "pattern", ["(a+)+", "(a*)*b", "(?:x{1,5})*", "(a+){10}", "((ab)*c)*", "(?>(a+)+)"]
)
def test_nested_repeats_are_refused(pattern: str) -> None:
    with pytest.raises(ValueError, match="nested repeats"):
        compile_regex(pattern)
