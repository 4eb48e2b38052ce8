"""The "h2" protocol hint: which endpoints may get HTTP/1.1 requests carried over HTTP/2.

Only a plait proxy turns an upgraded request back into HTTP/1.1, so the control plane marks
the endpoints plait proxies registered (they say so in their hello), and a caller upgrades a
cluster by default only when every endpoint carries the hint; a DestinationRule's
h2UpgradePolicy, or PLAIT_H2_UPGRADE, still decides either way.
"""

from __future__ import annotations

import pytest

from plait.config.resources import parse_resources
from plait.config.snapshot import Endpoint, Node, Snapshot, SnapshotError
from plait.config.traffic_policy import ClusterPolicy, PoolLimits
from plait.control.compiler import Instance, compile_snapshot
from plait.control.registry import WorkloadEntry
from plait.proxy import upstream
from plait.proxy.upstream import ClusterRuntime, HostRegistry

SERVICE = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: plait.dev/v1
kind: Workload
metadata: {name: legacy}
spec: {address: 10.0.0.9, port: 8080, labels: {app: web}}
"""


def _endpoints() -> dict[str, Endpoint]:
    registered = Instance(
        "web-0", "web", "default", {"app": "web"}, "10.0.0.1", 15006, "spiffe://t/x", "h2"
    )
    snap = compile_snapshot(
        parse_resources(SERVICE, "mesh.yaml"), [registered], Node("c-0", "c"), "1"
    )
    (web,) = [c for c in snap.clusters if c.name == "web"]
    return {e.workload: e for e in web.endpoints}


def test_registered_proxies_carry_the_hint_and_static_workloads_do_not() -> None:
    endpoints = _endpoints()
    assert endpoints["web-0"].protocol_hint == "h2"
    assert endpoints["legacy"].protocol_hint == ""


def test_the_hint_survives_the_registry_and_the_snapshot_round_trip() -> None:
    entry = WorkloadEntry(
        "w", "web", "default", {}, "10.0.0.1", 1, identity="id", protocol_hint="h2"
    )
    assert WorkloadEntry.from_json(entry.to_json()).protocol_hint == "h2"
    old = b'{"name": "w", "service": "s", "namespace": "d", "address": "a", "port": 1}'
    assert WorkloadEntry.from_json(old).protocol_hint == ""  # entries written before the hint
    ep = Endpoint("10.0.0.1", 15006, identity="id", protocol_hint="h2")
    snap = Snapshot.from_dict({"clusters": [{"name": "c", "ports": [80], "endpoints": []}]})
    raw = snap.to_dict()
    raw["clusters"][0]["endpoints"] = [
        {"address": ep.address, "port": ep.port, "protocol_hint": "h2"}
    ]
    assert Snapshot.from_dict(raw).clusters[0].endpoints[0].protocol_hint == "h2"


def test_an_unknown_hint_names_the_field() -> None:
    raw = {
        "clusters": [
            {
                "name": "c",
                "ports": [80],
                "endpoints": [{"address": "10.0.0.1", "port": 1, "protocol_hint": "h3"}],
            }
        ]
    }
    with pytest.raises(SnapshotError, match=r"clusters\[0\]\.endpoints\[0\]\.protocol_hint"):
        Snapshot.from_dict(raw)


def _runtime(hints: list[str], policy: str = "DEFAULT") -> ClusterRuntime:
    registry = HostRegistry()
    hosts = tuple(
        registry.host_for(Endpoint(f"10.0.0.{i}", 1, identity="id", protocol_hint=h))
        for i, h in enumerate(hints, 1)
    )
    pool = PoolLimits(h2_upgrade_policy=policy)
    return ClusterRuntime("web", "default", hosts, ClusterPolicy(connection_pool=pool))


@pytest.fixture
def shipped_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "UPGRADE_BETWEEN_PROXIES", None)


@pytest.mark.usefixtures("shipped_default")
def test_default_multiplexes_only_when_every_endpoint_is_a_plait_proxy() -> None:
    both = _runtime(["h2", "h2"])
    assert both.h2_multiplex and not both.h2_upgrade and both.h2_check
    assert not _runtime(["h2", ""]).h2_multiplex  # one Envoy (or app without proxy): no
    assert not _runtime([]).h2_multiplex
    assert not _runtime(["h2"], "DO_NOT_UPGRADE").h2_check
    upgraded = _runtime([""], "UPGRADE")  # the operator's word wins, for every request
    assert upgraded.h2_upgrade and not upgraded.h2_multiplex


def test_the_environment_overrides_the_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "UPGRADE_BETWEEN_PROXIES", False)
    assert not _runtime(["h2"]).h2_check
    assert _runtime(["h2"], "UPGRADE").h2_upgrade
    monkeypatch.setattr(upstream, "UPGRADE_BETWEEN_PROXIES", True)
    forced = _runtime([""])
    assert forced.h2_upgrade and not forced.h2_multiplex
