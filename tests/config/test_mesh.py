"""The mesh file: the Mesh document, the resources beside it and the references between them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from plait.config.errors import ConfigError, ConfigErrors
from plait.config.mesh import AppSpec, GatewaySpec, HealthCheck, load_mesh_file, parse_mesh
from plait.config.resources import HTTPRoute, Service

BOOKINFO = Path(__file__).parents[2] / "examples" / "bookinfo" / "mesh.yaml"

MESH = """\
apiVersion: plait.dev/v1
kind: Mesh
metadata: {name: shop}
spec:
  namespace: shop
  gateway: {name: edge, port: 8080}
  apps:
    - name: web
      service: web
      labels: {app: web}
      command: [python3, -m, web]
      port: 80
      replicas: 2
      env: {MODE: fast}
      health: {httpGet: {path: /health}}
    - name: api-v1
      service: api
      labels: {app: api, version: v1}
      command: [./api]
      port: 9000
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: api}
spec: {selector: {app: api}, ports: [{port: 9000}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec: {gatewayClassName: plait, listeners: [{name: http, port: 8080, protocol: HTTP}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: edge}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"""


def _errors(text: str) -> list[str]:
    with pytest.raises((ConfigError, ConfigErrors)) as info:
        parse_mesh(text, "mesh.yaml")
    return str(info.value).splitlines()


def test_mesh_file_becomes_frozen_specs() -> None:
    mesh = parse_mesh(MESH, "mesh.yaml")
    assert (mesh.path, mesh.name, mesh.namespace) == ("mesh.yaml", "shop", "shop")
    assert mesh.gateway == GatewaySpec("edge", 8080)
    web, api = mesh.apps
    assert web == AppSpec(
        name="web",
        service="web",
        namespace="shop",
        labels={"app": "web"},
        command=(sys.executable, "-m", "web"),  # python means the runner's own interpreter
        port=80,
        replicas=2,
        env={"MODE": "fast"},
        health=HealthCheck("/health"),
    )
    assert web.instance_names() == ("web-0", "web-1")
    assert (api.command, api.replicas, api.health, api.env) == (("./api",), 1, HealthCheck(), {})
    assert [r.kind for r in mesh.resources] == ["Service", "Service", "Gateway", "HTTPRoute"]
    # Resources without a namespace take the mesh's.
    assert {r.metadata.namespace for r in mesh.resources} == {"shop"}


def test_bookinfo_mesh_file_loads() -> None:
    mesh = load_mesh_file(str(BOOKINFO))
    assert mesh.gateway == GatewaySpec("bookinfo-gateway", 8080)
    apps = {a.name: a for a in mesh.apps}
    assert sorted(apps) == [
        "details",
        "productpage",
        "ratings",
        "reviews-v1",
        "reviews-v2",
        "reviews-v3",
    ]
    assert apps["reviews-v2"].env == {"SERVICE_VERSION": "v2"}
    assert apps["reviews-v2"].labels == {"app": "reviews", "version": "v2"}
    assert all(a.port == 9080 and a.health == HealthCheck("/health") for a in mesh.apps)
    services = {r.metadata.name for r in mesh.resources if isinstance(r, Service)}
    assert services == {"productpage", "details", "ratings", "reviews"} | {
        f"reviews-v{n}" for n in (1, 2, 3)
    }
    (route,) = [r for r in mesh.resources if isinstance(r, HTTPRoute)]
    assert route.spec.parent_refs[0].kind == "Gateway"  # no reviews route: versions rotate


def test_wrong_type_names_file_line_and_field() -> None:
    text = MESH.replace("replicas: 2", 'replicas: "2"')
    assert _errors(text) == [
        "mesh.yaml:13: spec.apps[0].replicas: Input should be a valid integer (document 1)"
    ]


def test_errors_in_resources_are_all_reported_with_their_document() -> None:
    text = MESH.replace("ports: [{port: 80}]", "ports: [{port: 80, bogus: 1}]").replace(
        "protocol: HTTP", "protocol: QUIC"
    )
    lines = _errors(text)
    assert lines[0] == "mesh.yaml:25: spec.ports[0].bogus: unknown field (document 2)"
    assert lines[1].startswith("mesh.yaml:35: spec.listeners[0].protocol: Input should be")


def test_malformed_yaml_names_the_line() -> None:
    assert _errors(MESH.replace("port: 80\n", "port: [80\n"))[0].startswith(
        "mesh.yaml:13: invalid YAML"
    )


def test_duplicate_app_is_an_error() -> None:
    text = MESH.replace("- name: api-v1", "- name: web")
    assert _errors(text) == [
        "mesh.yaml:16: spec.apps[1].name: duplicate app 'web' (first at line 8) (document 1)"
    ]


def test_app_not_selected_by_its_service_is_an_error() -> None:
    text = MESH.replace("labels: {app: api, version: v1}", "labels: {name: api}")
    assert _errors(text) == [
        "mesh.yaml:18: spec.apps[1].labels: "
        "not selected by Service 'api' (selector: app=api) (document 1)"
    ]


def test_app_of_a_missing_service_is_an_error() -> None:
    text = MESH.replace("service: api", "service: apis")
    assert _errors(text) == [
        "mesh.yaml:17: spec.apps[1].service: "
        "no Service 'apis' in namespace 'shop' in this file (document 1)"
    ]


def test_app_port_must_be_a_port_of_its_service() -> None:
    text = MESH.replace("port: 9000\n---", "port: 9001\n---")
    assert _errors(text) == [
        "mesh.yaml:20: spec.apps[1].port: 9001 is not a port of Service 'api' [9000] (document 1)"
    ]


def test_gateway_must_name_a_gateway_in_the_file() -> None:
    text = MESH.replace("gateway: {name: edge,", "gateway: {name: egde,")
    assert _errors(text) == [
        "mesh.yaml:6: spec.gateway.name: "
        "no Gateway 'egde' in namespace 'shop' in this file (document 1)"
    ]


def test_dangling_backend_ref_is_an_error() -> None:
    text = MESH.replace(
        "backendRefs: [{name: web, port: 80}]", "backendRefs: [{name: wbe, port: 80}]"
    )
    assert _errors(text) == [
        "mesh.yaml:42: spec.rules[0].backendRefs[0].name: "
        "no Service 'wbe' in namespace 'shop' in this file (document 5)"
    ]


def test_backend_port_must_be_a_port_of_the_service() -> None:
    text = MESH.replace("{name: web, port: 80}", "{name: web, port: 8080}")
    (line,) = _errors(text)
    assert "spec.rules[0].backendRefs[0].port: 8080 is not a port of Service 'web' [80]" in line


def test_dangling_parent_ref_is_an_error() -> None:
    text = MESH.replace("parentRefs: [{name: edge}]", "parentRefs: [{kind: Service, name: edge}]")
    (line,) = _errors(text)
    assert line.startswith("mesh.yaml:41: spec.parentRefs[0].name: no Service 'edge'")


def test_duplicate_resource_is_an_error() -> None:
    (line,) = _errors(MESH + "---\n" + MESH.split("---\n")[1])
    assert line == "mesh.yaml:46: metadata.name: duplicate Service (first at line 24) (document 6)"


def test_exactly_one_mesh_document() -> None:
    assert _errors(MESH.split("---\n", 1)[1]) == [
        "mesh.yaml: no Mesh document (apiVersion: plait.dev/v1, kind: Mesh)"
    ]
    (line,) = _errors(MESH + "---\n" + MESH.split("---\n")[0])
    assert line.startswith("mesh.yaml:45: kind: a mesh file holds exactly one Mesh")


def test_unknown_mesh_field_is_an_error() -> None:
    text = MESH.replace("replicas: 2", "replicas: 2\n      replica: 3")
    assert _errors(text) == ["mesh.yaml:14: spec.apps[0].replica: unknown field (document 1)"]


def test_tcp_health_and_defaults() -> None:
    mesh = parse_mesh(MESH.replace("{httpGet: {path: /health}}", "{tcpSocket: {}}"), "m.yaml")
    assert mesh.apps[0].health == HealthCheck(None)
    both = MESH.replace("{httpGet: {path: /health}}", "{httpGet: {}, tcpSocket: {}}")
    assert _errors(both) == [
        "mesh.yaml:15: spec.apps[0].health: use either httpGet or tcpSocket (document 1)"
    ]


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_mesh_file(str(tmp_path / "missing.yaml"))
    assert str(info.value) == f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"


def test_mesh_and_resource_errors_are_reported_together() -> None:
    text = MESH.replace("replicas: 2", "replicas: -1").replace("port: 9000}", "port: 0}")
    assert _errors(text) == [
        "mesh.yaml:13: spec.apps[0].replicas: Input should be greater than or equal to 0 (document 1)",
        "mesh.yaml:30: spec.ports[0].port: Input should be greater than or equal to 1 (document 3)",
    ]
