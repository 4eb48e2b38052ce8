"""Schemathesis against the live server's own /openapi.json: no input gives a 5xx, and every
reply has a status, content type and shape that the spec declares.

Each operation is a test of its own (listed from the app's spec, which needs no server), in
both of schemathesis' modes: data that fits the spec, and data that breaks it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from live_api import TOKEN, LiveApi
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from plait.control.api import create_app
from plait.control.config_service import ConfigService
from plait.control.store import MemoryStore

AUTH = {"Authorization": f"Bearer {TOKEN}"}
EXAMPLES = 30  # per operation and mode: about 600 requests in all, a few seconds
SERVICE = {
    "apiVersion": "plait.dev/v1",
    "kind": "Service",
    "metadata": {"name": "reviews"},
    "spec": {"selector": {"app": "reviews"}, "ports": [{"port": 9080}]},
}
SPEC = create_app(ConfigService(MemoryStore()), TOKEN).openapi()
OPERATIONS = [
    (method.upper(), path) for path, methods in SPEC["paths"].items() for method in methods
]
# Negative data needs something to break: parameters or a body.
CASES = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE
    or {"parameters", "requestBody"} & set(SPEC["paths"][path][method.lower()])
]
CHECKS = {
    GenerationMode.POSITIVE: [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ],
    GenerationMode.NEGATIVE: [not_a_server_error, negative_data_rejection],
}


@pytest.fixture(scope="module")
def live() -> Iterator[LiveApi]:
    proxies = [{"name": "reviews-v1-0", "service": "reviews", "behind": 0}]

    def token(service: str, namespace: str, ttl: float, account: str | None) -> dict[str, str]:
        sa = account or service
        spiffe = f"spiffe://cluster.local/ns/{namespace}/sa/{sa}"
        return {
            "token": "plait-join.x.y",
            "spiffeId": spiffe,
            "expiresAt": "2030-01-01T00:00:00+00:00",
        }

    with LiveApi(proxies=lambda: proxies, tokens=token) as api:
        # Something to read, so that gets, lists and deletes also meet existing resources.
        httpx.post(f"{api.url}/api/v1/apply", json=SERVICE, headers=AUTH).raise_for_status()
        yield api


@pytest.fixture(scope="module")
def live_schema(live: LiveApi) -> Any:
    return schemathesis.openapi.from_url(f"{live.url}/openapi.json")


def test_the_spec_lists_every_operation() -> None:
    assert OPERATIONS == [
        ("GET", "/healthz"),
        ("POST", "/api/v1/apply"),
        ("GET", "/api/v1/resources"),
        ("GET", "/api/v1/resources/{kind}"),
        ("GET", "/api/v1/resources/{kind}/{namespace}/{name}"),
        ("DELETE", "/api/v1/resources/{kind}/{namespace}/{name}"),
        ("GET", "/api/v1/watch"),
        ("POST", "/api/v1/tokens"),
        ("GET", "/api/v1/ca"),
        ("POST", "/api/v1/ca/rotate"),
        ("GET", "/api/v1/services/vips"),
        ("GET", "/api/v1/proxies"),
        ("GET", "/api/v1/analyze"),
    ]


@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_input_gives_a_server_error(
    live: LiveApi, live_schema: Any, method: str, path: str, mode: GenerationMode
) -> None:
    operation = live_schema[path][method]
    checks = CHECKS[mode]

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case: schemathesis.Case) -> None:
        if path == "/api/v1/watch":
            # A watch streams until its timeout: keep each one short.
            case.query = {**(case.query or {}), "timeout_seconds": 0.05}
        case.call_and_validate(base_url=live.url, headers=AUTH, timeout=10, checks=checks)

    check()
