"""Per-port protocols in the proxy snapshot: parsed, checked, compiled, and the app's own."""

from __future__ import annotations

import pytest

from plait.config.resources import parse_resources
from plait.config.snapshot import Cluster, Node, Snapshot, SnapshotError
from plait.control.compiler import compile_snapshot

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: redis}
spec: {selector: {app: redis}, ports: [{port: 6379, protocol: tcp}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: api}
spec:
  selector: {app: api}
  ports: [{name: web, port: 80}, {name: rpc, port: 50051, protocol: grpc}]
"""


def _snapshot(clusters: list[dict[str, object]], node: dict[str, str] | None = None) -> Snapshot:
    return Snapshot.from_dict({"clusters": clusters, "node": node or {}})


def test_protocols_follow_the_ports_and_round_trip() -> None:
    snap = _snapshot([{"name": "api", "ports": [80, 50051], "protocols": ["http", "grpc"]}])
    (api,) = snap.clusters
    assert (api.protocol(80), api.protocol(50051), api.protocol(9)) == ("http", "grpc", "")
    assert Snapshot.from_dict(snap.to_dict()) == snap


def test_a_cluster_without_protocols_declares_none() -> None:
    (c,) = _snapshot([{"name": "old", "ports": [80]}]).clusters
    assert c.protocols == () and c.protocol(80) == ""
    assert "protocols" not in _snapshot([{"name": "old", "ports": [80]}]).to_dict()["clusters"][0]


@pytest.mark.parametrize(
    ("protocols", "error"),
    [
        (["tcp"], r"clusters\[0\]\.protocols: 1 protocols for 2 ports"),
        (["tcp", "udp"], r"clusters\[0\]\.protocols\[1\]: must be one of http, http2, grpc, tcp"),
        ("tcp", r"clusters\[0\]\.protocols: expected list"),
    ],
)
def test_bad_protocols_name_the_field(protocols: object, error: str) -> None:
    with pytest.raises(SnapshotError, match=error):
        _snapshot([{"name": "x", "ports": [1, 2], "protocols": protocols}])


def test_app_protocol_is_the_nodes_service_port_or_its_only_port() -> None:
    clusters: list[dict[str, object]] = [
        {"name": "api", "ports": [80, 50051], "protocols": ["http", "grpc"]},
        {"name": "redis", "ports": [6379], "protocols": ["tcp"]},
    ]
    api = _snapshot(clusters, {"service": "api"})
    assert api.app_protocol(50051) == "grpc"
    assert api.app_protocol(80) == "http"
    assert api.app_protocol(12345) == ""  # two ports, neither the app's: unknown
    redis = _snapshot(clusters, {"service": "redis"})
    assert redis.app_protocol(40000) == "tcp"  # the only port, whatever the app's port
    assert _snapshot(clusters, {"service": "nope"}).app_protocol(80) == ""


def test_the_compiler_carries_each_ports_protocol() -> None:
    resources = parse_resources(SERVICES, "s.yaml")
    snap = compile_snapshot(resources, [], Node("n", "api"), "1")
    clusters = {c.name: c for c in snap.clusters}
    assert clusters["redis"].protocols == ("tcp",)
    assert clusters["api"].protocols == ("http", "grpc")  # unset is the Service's default
    assert isinstance(clusters["api"], Cluster)
    assert Snapshot.from_dict(snap.to_dict()) == snap
