"""`plait up` mesh files: an app's `tcpOutbound` becomes a proxy flag and an app variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from plait.config.errors import ConfigError, ConfigErrors
from plait.config.mesh import TcpOutbound, parse_mesh
from plait.local.ports import PortAllocator
from plait.local.up import Control, allocate, process_specs

MESH = """
apiVersion: plait.dev/v1
kind: Mesh
metadata: {name: shop}
spec:
  apps:
    - name: web
      service: web
      labels: {app: web}
      command: [python, -m, http.server]
      port: 8080
      replicas: 2
      tcpOutbound:
        - {service: redis, port: %d, env: REDIS_ADDR}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 8080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: redis}
spec: {selector: {app: redis}, ports: [{port: 6379, protocol: tcp}]}
"""


def test_tcp_outbound_gives_each_replica_a_local_port_and_tells_the_app(tmp_path: Path) -> None:
    mesh = parse_mesh(MESH % 6379, "mesh.yaml")
    assert mesh.apps[0].tcp_outbound == (TcpOutbound("redis", 6379, "REDIS_ADDR"),)
    sidecars, _ = allocate(mesh, PortAllocator(), None)
    control = Control(1, 2, tmp_path / "control")
    proxies, apps = process_specs(tmp_path, control, sidecars, None)[:2]
    seen = set()
    for sidecar, proxy, app in zip(sidecars, proxies, apps, strict=True):
        (port,) = sidecar.tcp_ports
        seen.add(port)
        assert f"--tcp-outbound=127.0.0.1:{port}=redis.default:6379" in proxy.argv
        assert app.env["REDIS_ADDR"] == f"127.0.0.1:{port}"
    assert len(seen) == 2  # replicas do not share a listener


def test_tcp_outbound_to_a_port_the_service_lacks_is_an_error() -> None:
    with pytest.raises((ConfigError, ConfigErrors), match="6380 is not a port of Service 'redis'"):
        parse_mesh(MESH % 6380, "mesh.yaml")
