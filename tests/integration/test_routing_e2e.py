"""HTTPRoute features through a real proxy: resources compiled by the real compiler, pinned
as the proxy's snapshot, and exercised with real requests."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from plait.config.resources import parse_resources
from plait.config.snapshot import Node
from plait.control.compiler import Instance, compile_snapshot

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web-v1}
spec: {selector: {app: web, version: v1}, ports: [{name: http, port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web-v2}
spec: {selector: {app: web, version: v2}, ports: [{name: http, port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: shadow}
spec: {selector: {app: shadow}, ports: [{name: http, port: 9080}]}
"""

ROUTES = """
apiVersion: plait.dev/v1
kind: HTTPFault
metadata: {name: slow}
spec: {delay: {fixedDelay: 500ms, percentage: {value: 100}}}
---
apiVersion: plait.dev/v1
kind: HTTPFault
metadata: {name: broken}
spec: {abort: {httpStatus: 418, percentage: {value: 100}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 9080}]
  rules:
    - matches: [{headers: [{name: end-user, value: jason}]}]
      backendRefs: [{name: web-v2, port: 9080}]
    - matches: [{path: {type: PathPrefix, value: /old}}]
      filters:
        - type: RequestRedirect
          requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}
    - matches: [{path: {type: PathPrefix, value: /api}}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2/api}}
        - type: RequestHeaderModifier
          requestHeaderModifier: {set: [{name: x-route, value: api}], remove: [x-secret]}
        - type: ResponseHeaderModifier
          responseHeaderModifier: {add: [{name: x-served-by, value: plait}]}
      backendRefs: [{name: web-v1, port: 9080}]
    - matches: [{path: {type: Exact, value: /slow}}]
      filters: [{type: ExtensionRef, extensionRef: {group: plait.dev, kind: HTTPFault, name: slow}}]
      backendRefs: [{name: web-v1, port: 9080}]
    - matches: [{path: {type: Exact, value: /teapot}}]
      filters: [{type: ExtensionRef, extensionRef: {group: plait.dev, kind: HTTPFault, name: broken}}]
      backendRefs: [{name: web-v1, port: 9080}]
    - matches: [{path: {type: Exact, value: /mirrored}}]
      filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: shadow, port: 9080}}
      backendRefs: [{name: web-v1, port: 9080}]
    - matches: [{path: {type: Exact, value: /delay}}]
      timeouts: {backendRequest: 300ms}
      backendRefs: [{name: web-v1, port: 9080}]
    - backendRefs: [{name: web-v1, port: 9080}]
"""


@pytest.fixture
def routed(proxies: Any, upstreams: Any) -> Any:
    v1, v2, shadow = upstreams.start("v1"), upstreams.start("v2"), upstreams.start("shadow")
    instances = [
        Instance(
            "web-v1-0", "web", "default", {"app": "web", "version": "v1"}, "127.0.0.1", v1.port
        ),
        Instance(
            "web-v2-0", "web", "default", {"app": "web", "version": "v2"}, "127.0.0.1", v2.port
        ),
        Instance("shadow-0", "shadow", "default", {"app": "shadow"}, "127.0.0.1", shadow.port),
    ]
    resources = parse_resources(SERVICES + "---" + ROUTES, "routes.yaml")
    snapshot = compile_snapshot(resources, instances, Node(name="client"), "1").to_dict()
    proxy = proxies.start(snapshot)
    client = httpx.Client(base_url=proxy.url(), headers={"host": "web:9080"}, timeout=10)
    yield client, v1, v2, shadow
    client.close()


def test_header_match_sends_jason_to_v2_and_everyone_else_to_v1(routed: Any) -> None:
    client, *_ = routed
    assert client.get("/x", headers={"end-user": "jason"}).json()["server"] == "v2"
    assert client.get("/x", headers={"end-user": "bob"}).json()["server"] == "v1"


def test_request_redirect_is_answered_locally(routed: Any) -> None:
    client, *_ = routed
    r = client.get("/old/page")
    assert r.status_code == 301
    assert r.headers["location"].endswith("/new/page")
    assert r.headers["x-plait-response-flags"] == "DR"


def test_rewrite_and_header_modifiers(routed: Any) -> None:
    client, v1, *_ = routed
    r = client.get("/api/items?q=1", headers={"x-secret": "s3"})
    echo = r.json()
    assert echo["target"] == "/v2/api/items?q=1"
    names = {name.lower(): value for name, value in echo["headers"]}
    assert names["x-route"] == "api" and "x-secret" not in names
    assert r.headers["x-served-by"] == "plait"


def test_fault_delay_and_abort(routed: Any) -> None:
    client, *_ = routed
    started = time.monotonic()
    r = client.get("/slow")
    assert r.status_code == 200 and time.monotonic() - started >= 0.45
    r = client.get("/teapot")
    assert r.status_code == 418 and r.headers["x-plait-response-flags"] == "FI"


def test_mirror_gets_a_copy_and_the_primary_answers(routed: Any) -> None:
    client, v1, _, shadow = routed
    r = client.get("/mirrored")
    assert r.status_code == 200 and r.json()["server"] == "v1"
    shadow.wait_for_request("/mirrored")
    copy = [q for q in shadow.requests if q["target"] == "/mirrored"][0]
    assert dict((k.lower(), v) for k, v in copy["headers"])["host"] == "web:9080-shadow"


def test_backend_request_timeout_is_504_ut(routed: Any) -> None:
    client, *_ = routed
    started = time.monotonic()
    r = client.get("/delay?s=2")
    assert r.status_code == 504 and r.headers["x-plait-response-flags"] == "UT"
    assert time.monotonic() - started < 1.5
