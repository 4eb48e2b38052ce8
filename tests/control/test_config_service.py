"""ConfigService over a real MemoryStore: apply semantics, stored form, reads, analyze."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from plait.config.resources import Resource, parse_resources
from plait.control.analysis import (
    NOT_SUPPORTED,
    PORT_NOT_FOUND,
    REFERENCE_NOT_FOUND,
    SELECTS_NOTHING,
    SUBSET_SELECTS_NOTHING,
    Finding,
)
from plait.control.config_service import ConfigService, UnknownKind, key_of, resolve_kind
from plait.control.kinds import decode, encode, format_duration
from plait.control.store import MemoryStore

REPO = Path(__file__).resolve().parents[2]

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews-v1}
spec: {selector: {app: reviews, version: v1}, ports: [{port: 9080}]}
"""

ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - backendRefs: [{name: reviews-v1, port: 9080}]
    timeouts: {request: 1m30s, backendRequest: 1500ms}
"""

# Every field type the stored form must carry back: durations, integer map keys, aliases.
EVERYTHING = (
    ROUTE
    + """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: prod, labels: {team: a}}
spec:
  host: reviews.prod.svc.cluster.local
  trafficPolicy:
    connectionPool: {tcp: {connectTimeout: 1.5s, maxConnections: 10}, http: {idleTimeout: 1h}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 10s, baseEjectionTime: 30s}
    loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 0s}}}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec:
  mtls: {mode: STRICT}
  portLevelMtls: {8080: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-page}
spec:
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/page]}}], to: [{operation: {methods: [GET]}}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: plait
  listeners: [{name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: plait.dev/v1
kind: Workload
metadata: {name: db}
spec: {address: 10.0.0.5, port: 5432, labels: {app: db}}
"""
)


def parse(text: str) -> list[Resource]:
    return parse_resources(text, "test.yaml")


def run(scenario: Callable[[ConfigService], Awaitable[None]]) -> None:
    async def main() -> None:
        async with MemoryStore() as store:
            await scenario(ConfigService(store))

    asyncio.run(main())


def actions(results: Sequence[Any]) -> list[tuple[str, str, int]]:
    return [(x.name, x.action, x.revision) for x in results]


# --- the stored form ------------------------------------------------------------------------


@pytest.mark.parametrize("resource", parse(EVERYTHING), ids=lambda x: x.kind)
def test_stored_form_reads_back_as_the_same_model(resource: Resource) -> None:
    assert decode(resource.kind, encode(resource)) == resource


def test_bookinfo_resources_read_back_as_the_same_models() -> None:
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        text = path.read_text()
        docs = [d for d in text.split("\n---") if "kind: Mesh" not in d]
        for resource in parse("\n---".join(docs)):
            assert decode(resource.kind, encode(resource)) == resource, path


def test_stored_form_is_canonical_json_with_defaults_filled_in() -> None:
    (route,) = parse(ROUTE)
    data = json.loads(encode(route))
    assert list(data) == sorted(data)
    assert data["metadata"]["namespace"] == "default"
    assert data["spec"]["rules"][0]["timeouts"] == {"request": "1m30s", "backendRequest": "1s500ms"}
    assert data["spec"]["rules"][0]["matches"] == [
        {"headers": [], "path": {"type": "PathPrefix", "value": "/"}, "queryParams": []}
    ]


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0s"), (1, "1ms"), (1500, "1s500ms"), (3_600_000, "1h"), (5_400_000, "1h30m")],
)
def test_durations_are_written_as_the_gateway_api_writes_them(ms: int, text: str) -> None:
    assert format_duration(ms) == text


# --- apply ----------------------------------------------------------------------------------


def test_apply_creates_then_reports_unchanged_without_using_a_revision() -> None:
    async def scenario(config: ConfigService) -> None:
        first = await config.apply(parse(SERVICES + "---" + ROUTE))
        assert actions(first) == [
            ("reviews", "created", 1),
            ("reviews-v1", "created", 1),
            ("reviews", "created", 1),
        ]
        again = await config.apply(parse(SERVICES + "---" + ROUTE))
        assert [x.action for x in again] == ["unchanged"] * 3
        assert await config.revision() == 1

    run(scenario)


def test_apply_writes_only_what_changed_in_one_revision() -> None:
    async def scenario(config: ConfigService) -> None:
        await config.apply(parse(SERVICES))
        changed = SERVICES.replace("version: v1}", "version: v1, tier: a}")
        results = await config.apply(parse(changed + "---" + ROUTE))
        assert actions(results) == [
            ("reviews", "unchanged", 1),
            ("reviews-v1", "configured", 2),
            ("reviews", "created", 2),
        ]
        stored = await config.get("Service", "default", "reviews")
        assert stored is not None and stored.revision == 1 and stored.version == 1

    run(scenario)


def test_a_defaulted_field_written_out_is_unchanged() -> None:
    async def scenario(config: ConfigService) -> None:
        await config.apply(parse(SERVICES))
        explicit = SERVICES.replace(
            "ports: [{port: 9080}]", "ports: [{port: 9080, protocol: http}]"
        )
        assert [x.action for x in await config.apply(parse(explicit))] == ["unchanged"] * 2

    run(scenario)


def test_a_resource_repeated_in_one_apply_is_applied_in_order() -> None:
    async def scenario(config: ConfigService) -> None:
        services = parse(SERVICES)
        changed = parse(SERVICES.replace("app: reviews}", "app: reviews2}"))[0]
        results = await config.apply([services[0], changed])
        assert actions(results) == [("reviews", "created", 1), ("reviews", "configured", 1)]
        stored = await config.get("svc", "default", "reviews")
        assert stored is not None and stored.data["spec"]["selector"] == {"app": "reviews2"}

    run(scenario)


def test_dry_run_reports_and_stores_nothing() -> None:
    async def scenario(config: ConfigService) -> None:
        results = await config.apply(parse(SERVICES), dry_run=True)
        assert actions(results) == [("reviews", "created", 0), ("reviews-v1", "created", 0)]
        assert await config.revision() == 0
        assert await config.list() == []

    run(scenario)


def test_apply_retries_when_a_concurrent_writer_changes_a_key() -> None:
    async def scenario(config: ConfigService) -> None:
        store = config.store
        original_get = store.get
        raced = False

        async def racing_get(key: str) -> Any:
            nonlocal raced
            found = await original_get(key)
            if not raced:  # another writer slips in between this read and the txn
                raced = True
                await store.put(key, b'{"apiVersion":"plait.dev/v1"}')
            return found

        store.get = racing_get  # type: ignore[method-assign]
        (result,) = await config.apply(parse(SERVICES)[:1])
        assert (result.action, result.revision) == ("configured", 2)

    run(scenario)


# --- reads ----------------------------------------------------------------------------------


def test_get_list_and_delete() -> None:
    async def scenario(config: ConfigService) -> None:
        other = SERVICES.replace(
            "metadata: {name: reviews-v1}", "metadata: {name: reviews-v1, namespace: prod}"
        )
        await config.apply(parse(other + "---" + ROUTE))
        assert [(x.kind, x.namespace, x.name) for x in await config.list()] == [
            ("HTTPRoute", "default", "reviews"),
            ("Service", "default", "reviews"),
            ("Service", "prod", "reviews-v1"),
        ]
        assert [x.name for x in await config.list("services")] == ["reviews", "reviews-v1"]
        assert [x.name for x in await config.list("svc", "prod")] == ["reviews-v1"]
        assert [x.kind for x in await config.list(namespace="default")] == ["HTTPRoute", "Service"]
        stored = await config.get("httproutes", "default", "reviews")
        assert stored is not None and stored.resource == parse(ROUTE)[0]
        assert await config.get("HTTPRoute", "prod", "reviews") is None
        assert await config.delete("HTTPRoute", "default", "reviews") == 2
        assert await config.delete("HTTPRoute", "default", "reviews") is None
        resources, revision = await config.resources()
        assert [x.kind for x in resources] == ["Service", "Service"] and revision == 2

    run(scenario)


def test_a_stored_value_that_no_longer_validates_is_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario(config: ConfigService) -> None:
        await config.apply(parse(SERVICES))
        await config.store.put(key_of("Service", "default", "broken"), b'{"kind": "Service"}')
        with caplog.at_level(logging.WARNING):
            assert [x.name for x in await config.list()] == ["reviews", "reviews-v1"]
            assert await config.get("Service", "default", "broken") is None
        assert "broken" in caplog.text

    run(scenario)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("HTTPRoute", "HTTPRoute"),
        ("httproute", "HTTPRoute"),
        ("httproutes", "HTTPRoute"),
        ("httproutes.gateway.networking.k8s.io", "HTTPRoute"),
        ("svc", "Service"),
        ("services", "Service"),
        ("dr", "DestinationRule"),
        ("authorizationpolicies", "AuthorizationPolicy"),
        ("pa", "PeerAuthentication"),
        ("gtw", "Gateway"),
        ("Workloads", "Workload"),
    ],
)
def test_kind_names_resolve_as_kubectl_resolves_them(text: str, kind: str) -> None:
    assert resolve_kind(text) == kind


@pytest.mark.parametrize("text", ["pods", "", "httproute.networking.istio.io", "service.x"])
def test_unknown_kind_names_list_the_known_kinds(text: str) -> None:
    with pytest.raises(UnknownKind, match="known kinds: Service, Workload, HTTPRoute"):
        resolve_kind(text)


# --- analyze --------------------------------------------------------------------------------


def analyze(text: str, registry: dict[str, Any] | None = None) -> list[Finding]:
    found: list[Finding] = []

    async def scenario(config: ConfigService) -> None:
        await config.apply(parse(text))
        for key, value in (registry or {}).items():
            await config.store.put(f"/registry/{key}", json.dumps(value).encode())
        found.extend(await config.analyze())

    run(scenario)
    return found


def brief(findings: list[Finding]) -> list[tuple[str, str, str, str | None]]:
    return [(f.level, f.code, f"{f.kind}/{f.name}", f.field) for f in findings]


def test_dangling_parent_and_backend_refs_are_errors() -> None:
    edge = ROUTE.replace("metadata: {name: reviews}", "metadata: {name: edge}")
    edge = edge.replace('{group: "", kind: Service, name: reviews}', "{name: edge}")
    route = ROUTE + "---\n" + edge
    assert brief(analyze(route)) == [
        ("Error", REFERENCE_NOT_FOUND, "HTTPRoute/edge", "spec.parentRefs[0].name"),
        ("Error", REFERENCE_NOT_FOUND, "HTTPRoute/edge", "spec.rules[0].backendRefs[0].name"),
        ("Error", REFERENCE_NOT_FOUND, "HTTPRoute/reviews", "spec.parentRefs[0].name"),
        ("Error", REFERENCE_NOT_FOUND, "HTTPRoute/reviews", "spec.rules[0].backendRefs[0].name"),
    ]
    message = analyze(ROUTE)[1].message
    assert message == "referenced Service default/reviews-v1 not found"


def test_a_resolved_mesh_with_workloads_has_no_findings() -> None:
    registry = {
        "default/r1": {"namespace": "default", "labels": {"app": "reviews", "version": "v1"}}
    }
    assert analyze(SERVICES + "---" + ROUTE, registry) == []


def test_a_selector_that_selects_no_workload_is_a_warning() -> None:
    findings = analyze(SERVICES + "---" + ROUTE)
    assert brief(findings) == [
        ("Warning", SELECTS_NOTHING, "Service/reviews", "spec.selector"),
        ("Warning", SELECTS_NOTHING, "Service/reviews-v1", "spec.selector"),
    ]
    assert "app=reviews,version=v1" in findings[1].message


def test_static_workloads_and_registered_ones_count_only_in_their_namespace() -> None:
    workload = """
---
apiVersion: plait.dev/v1
kind: Workload
metadata: {name: r1}
spec: {address: 10.0.0.1, port: 9080, labels: {app: reviews, version: v1}}
"""
    assert analyze(SERVICES + workload) == []
    elsewhere = {"prod/r1": {"namespace": "prod", "labels": {"app": "reviews", "version": "v1"}}}
    assert len(analyze(SERVICES, elsewhere)) == 2


def test_destination_rule_hosts_resolve_short_and_qualified_names() -> None:
    rules = "".join(
        f"""
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: dr{i}}}
spec: {{host: {host}}}
"""
        for i, host in enumerate(
            [
                "reviews",
                "reviews.default",
                "reviews.default.svc.cluster.local",
                "'*.local'",
                "ratings",
            ]
        )
    )
    registry = {"x": {"labels": {"app": "reviews", "version": "v1"}}}
    findings = analyze(SERVICES + rules, registry)
    assert brief(findings) == [("Error", REFERENCE_NOT_FOUND, "DestinationRule/dr4", "spec.host")]
    assert findings[0].message == "host 'ratings': referenced Service default/ratings not found"


def test_a_subset_that_selects_no_workload_is_a_warning() -> None:
    rule = """
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v9, labels: {version: v9}}]
"""
    registry = {"x": {"labels": {"app": "reviews", "version": "v1"}}}
    findings = analyze(SERVICES + rule, registry)
    assert brief(findings) == [
        ("Warning", SUBSET_SELECTS_NOTHING, "DestinationRule/reviews", "spec.subsets[1].labels")
    ]


def test_a_backend_port_the_service_lacks_is_an_error() -> None:
    registry = {"x": {"labels": {"app": "reviews", "version": "v1"}}}
    findings = analyze(SERVICES + "---" + ROUTE.replace("port: 9080}]", "port: 80}]"), registry)
    assert brief(findings) == [
        ("Error", PORT_NOT_FOUND, "HTTPRoute/reviews", "spec.rules[0].backendRefs[0].port")
    ]


def test_a_route_the_proxy_cannot_express_yet_is_an_error() -> None:
    registry = {"x": {"labels": {"app": "reviews", "version": "v1"}}}
    regex = ROUTE.replace(
        "  - backendRefs:",
        "  - matches: [{path: {type: RegularExpression, value: '/(a+)*'}}]\n    backendRefs:",
    )
    (finding,) = analyze(SERVICES + "---" + regex, registry)
    assert (finding.code, finding.level) == (NOT_SUPPORTED, "Error")
    assert "nested repeats" in finding.message
    assert str(finding).startswith("Error [PLT0105] (HTTPRoute default/reviews) ")


def test_unchanged_resources_are_parsed_once_and_changes_are_seen() -> None:
    async def scenario(config: ConfigService) -> None:
        await config.apply(parse(SERVICES))
        first, _ = await config.resources()
        again, _ = await config.resources()
        assert all(a is b for a, b in zip(first, again, strict=True))
        await config.apply(parse(SERVICES.replace("app: reviews}", "app: other}")))
        await config.delete("svc", "default", "reviews-v1")
        (changed,), _ = await config.resources()
        assert changed is not first[0] and changed.spec.selector == {"app": "other"}

    run(scenario)
