"""PolicySet parsing: round trip, defaults, and errors that name the field path."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from plait.config.policy import (
    DEFAULT_JWT_HEADERS,
    DEFAULT_JWT_PARAMS,
    PolicyError,
    PolicySet,
    parse_condition_key,
)

JWKS = json.dumps({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]})
GOOD: dict[str, Any] = {
    "authorization": [
        {
            "name": "reviews-viewer",
            "namespace": "default",
            "action": "ALLOW",
            "rules": [
                {
                    "from": [{"principals": ["cluster.local/ns/default/sa/bookinfo-productpage"]}],
                    "to": [{"methods": ["GET"], "ports": ["9080"], "not_paths": ["/admin*"]}],
                    "when": [
                        {"key": "request.headers[x-env]", "values": ["dev"], "not_values": []},
                        {
                            "key": "request.auth.claims[realm][role]",
                            "values": ["op*"],
                            "not_values": [],
                        },
                        {"key": "source.ip", "values": [], "not_values": ["10.0.0.0/8"]},
                    ],
                },
                {"from": [], "to": [], "when": []},
            ],
        },
        {"name": "allow-nothing", "namespace": "default", "action": "ALLOW", "rules": []},
    ],
    "jwt_rules": [
        {
            "issuer": "https://issuer.example",
            "audiences": ["bookinfo"],
            "jwks": JWKS,
            "jwks_uri": "",
            "jwks_timeout_ms": 5000,
            "from_headers": [{"name": "authorization", "prefix": "Bearer "}],
            "from_params": ["access_token"],
            "from_cookies": [],
            "forward_original_token": False,
            "output_payload_to_header": "",
            "output_claim_to_headers": [{"header": "x-sub", "claim": "sub"}],
            "policy": "default/jwt",
        }
    ],
}


def test_round_trip() -> None:
    ps = PolicySet.from_dict(GOOD)
    assert ps.to_dict() == GOOD
    assert PolicySet.from_dict(ps.to_dict()) == ps


def test_empty_is_no_policy() -> None:
    assert PolicySet.empty() == PolicySet.from_dict({}) == PolicySet()
    assert PolicySet.empty().to_dict() == {"authorization": [], "jwt_rules": []}


def test_jwt_rule_defaults_to_envoys_locations() -> None:
    ps = PolicySet.from_dict({"jwt_rules": [{"issuer": "i", "jwks_uri": "https://i/k"}]})
    [rule] = ps.jwt_rules
    assert rule.from_headers == DEFAULT_JWT_HEADERS and rule.from_params == DEFAULT_JWT_PARAMS
    explicit = {"issuer": "i", "jwks_uri": "https://i/k", "from_headers": [], "from_cookies": ["c"]}
    assert PolicySet.from_dict({"jwt_rules": [explicit]}).jwt_rules[0].from_headers == ()


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        node = data
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value

    return mutate


AUTHZ0 = ["authorization", 0]
RULE0 = [*AUTHZ0, "rules", 0]
JWT0 = ["jwt_rules", 0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            _set([*AUTHZ0, "action"], "CUSTOM"),
            "authorization[0].action: must be one of ALLOW, DENY, AUDIT (CUSTOM",
        ),
        (_set([*AUTHZ0, "name"], None), "authorization[0].name: required field is missing"),
        (_set([*AUTHZ0, "colour"], "red"), "authorization[0].colour: unknown field"),
        (
            _set([*RULE0, "from", 0, "principals"], "x"),
            "authorization[0].rules[0].from[0].principals: expected list",
        ),
        (
            _set([*RULE0, "from", 0, "principals"], [1]),
            "authorization[0].rules[0].from[0].principals[0]: expected str",
        ),
        (
            _set([*RULE0, "from", 0], {}),
            "authorization[0].rules[0].from[0]: a source must set at least one field",
        ),
        (
            _set([*RULE0, "from", 0, "ip_blocks"], ["x"]),
            "authorization[0].rules[0].from[0].ip_blocks[0]: 'x' is not an IP",
        ),
        (
            _set([*RULE0, "to", 0, "ports"], ["99999"]),
            "authorization[0].rules[0].to[0].ports[0]: '99999' is not a port",
        ),
        (
            _set([*RULE0, "when", 0, "key"], "request.foo"),
            "authorization[0].rules[0].when[0].key: unknown condition key",
        ),
        (
            _set([*RULE0, "when", 1, "key"], "request.auth.claims"),
            "rules[0].when[1].key: unknown condition key",
        ),
        (
            _set([*RULE0, "when", 0, "values"], []),
            "authorization[0].rules[0].when[0]: set values or not_values",
        ),
        (
            _set([*RULE0, "when", 2, "not_values"], ["10.0.0.0/33"]),
            "rules[0].when[2].not_values[0]: '10.0.0.0/33'",
        ),
        (_set([*RULE0, "source"], {}), "authorization[0].rules[0].source: unknown field"),
        (_set(["authorization"], {}), "authorization: expected list, got dict"),
        (_set([*JWT0, "jwks"], "nope"), "jwt_rules[0].jwks: not valid JSON"),
        (
            _set([*JWT0, "jwks"], '{"keys": {}}'),
            'jwt_rules[0].jwks: a JWKS is a JSON object with a "keys" list',
        ),
        (
            _set([*JWT0, "jwks_uri"], "https://i/k"),
            "jwt_rules[0]: set exactly one of jwks and jwks_uri",
        ),
        (_set([*JWT0, "issuer"], ""), "jwt_rules[0].issuer: must not be empty"),
        (
            _set([*JWT0, "jwks_timeout_ms"], True),
            "jwt_rules[0].jwks_timeout_ms: expected int, got bool",
        ),
        (
            _set([*JWT0, "from_headers"], [{"name": ""}]),
            "jwt_rules[0].from_headers[0].name: must not be empty",
        ),
        (_set([*JWT0, "from_params"], []), None),  # the header is still a location
        (
            _set([*JWT0, "output_claim_to_headers"], [{"header": "x"}]),
            "output_claim_to_headers[0].claim: required",
        ),
    ],
)
def test_errors_name_the_field(
    mutate: Callable[[dict[str, Any]], None], message: str | None
) -> None:
    data = copy.deepcopy(GOOD)
    mutate(data)
    if message is None:
        PolicySet.from_dict(data)
        return
    with pytest.raises(PolicyError, match=re.escape(message)):
        PolicySet.from_dict(data)


def test_no_token_location_is_an_error() -> None:
    rule = {"issuer": "i", "jwks_uri": "https://i/k", "from_headers": [], "from_params": []}
    with pytest.raises(PolicyError, match=r"jwt_rules\[0\]: no token location"):
        PolicySet.from_dict({"jwt_rules": [rule]})


@pytest.mark.parametrize(
    ("key", "parsed"),
    [
        ("source.principal", ("source.principal", ())),
        ("request.headers[X-Token]", ("request.headers", ("X-Token",))),
        ("request.auth.claims[groups]", ("request.auth.claims", ("groups",))),
        ("request.auth.claims[a.b][c]", ("request.auth.claims", ("a.b", "c"))),
    ],
)
def test_condition_keys(key: str, parsed: tuple[str, tuple[str, ...]]) -> None:
    assert parse_condition_key(key) == parsed


@pytest.mark.parametrize(
    "key",
    [
        "request.headers",
        "request.headers[]",
        "request.headers[a",
        "source.principals",
        "connection.sni",
    ],
)
def test_unknown_condition_keys(key: str) -> None:
    with pytest.raises(ValueError, match="condition key|one header name"):
        parse_condition_key(key)
