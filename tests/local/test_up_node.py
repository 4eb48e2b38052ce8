"""`plait up` with `proxyMode: node`: one node proxy instead of a sidecar per app instance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from plait.config.errors import ConfigError, ConfigErrors
from plait.config.mesh import parse_mesh
from plait.local.ports import PortAllocator
from plait.local.up import Control, allocate, process_specs
from plait.proxy.node import parse_workload

MESH = """
apiVersion: plait.dev/v1
kind: Mesh
metadata: {name: shop}
spec:
  proxyMode: %s
  apps:
    - name: web
      service: web
      labels: {app: web, version: v1}
      command: [python, -m, http.server]
      port: 8080
      replicas: 2
      health: {httpGet: {path: /health}}
    - name: cart
      service: cart
      labels: {app: cart}
      command: [python, -m, http.server]
      port: 8081
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 8080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: cart}
spec: {selector: {app: cart}, ports: [{port: 8081}]}
"""


def test_default_is_a_sidecar_per_instance(tmp_path: Path) -> None:
    mesh = parse_mesh(MESH % "sidecar", "mesh.yaml")
    assert mesh.proxy_mode == "sidecar"
    sidecars, _ = allocate(mesh, PortAllocator(), None)
    proxies = process_specs(tmp_path, Control(1, 2, tmp_path / "control"), sidecars, None)[0]
    assert [p.name for p in proxies] == ["web-0/proxy", "web-1/proxy", "cart-0/proxy"]


def test_node_mode_runs_one_proxy_with_a_workload_per_instance(tmp_path: Path) -> None:
    mesh = parse_mesh(MESH % "node", "mesh.yaml")
    assert mesh.proxy_mode == "node"
    sidecars, _ = allocate(mesh, PortAllocator(), None)
    control = Control(1, 2, tmp_path / "control")
    proxies, apps = process_specs(tmp_path, control, sidecars, None, node_admin=15999)[:2]
    (node,) = proxies
    assert node.name == "node/proxy" and "--mode=node" in node.argv
    assert "--admin=127.0.0.1:15999" in node.argv
    # One join token per workload, written to a file by `configure`, never on the command line.
    files = json.loads(node.env["PLAIT_TOKEN_FILES"])
    assert sorted(files.values()) == ["default/cart", "default/web", "default/web"]
    assert "PLAIT_TOKEN_FOR" not in node.env
    for path in files:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(f"token for {files[path]}")
    workloads = [
        parse_workload(a.split("=", 1)[1]) for a in node.argv if a.startswith("--workload=")
    ]
    assert [w.name for w in workloads] == ["web-0", "web-1", "cart-0"]
    for sidecar, workload, app in zip(sidecars, workloads, apps, strict=True):
        assert workload.service == sidecar.app.service
        assert workload.labels == sidecar.app.labels
        assert workload.app == ("127.0.0.1", sidecar.app_port)
        assert workload.inbound == ("127.0.0.1", sidecar.inbound)
        # Each app keeps its own outbound port (HTTP_PROXY): local apps share 127.0.0.1.
        assert workload.outbound == ("127.0.0.1", sidecar.outbound)
        assert app.env["HTTP_PROXY"] == f"http://127.0.0.1:{sidecar.outbound}"
    assert workloads[0].app_health == "/health"
    assert workloads[2].token == "token for default/cart"


def test_unknown_proxy_mode_is_an_error() -> None:
    with pytest.raises((ConfigError, ConfigErrors), match="proxyMode"):
        parse_mesh(MESH % "daemonset", "mesh.yaml")
