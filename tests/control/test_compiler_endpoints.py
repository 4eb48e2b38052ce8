"""The compiler's endpoint selection: indexed by label, yet exactly what a scan would pick."""

from __future__ import annotations

import random

from plait.config import resources as r
from plait.config.snapshot import Node
from plait.control.compiler import Instance, compile_snapshot

NAMESPACES = ("default", "prod")
APPS = ("a", "b", "c")
VERSIONS = ("v1", "v2")


def _service(name: str, namespace: str, selector: dict[str, str]) -> r.Service:
    return r.Service.model_validate(
        {
            "apiVersion": "plait.dev/v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": selector, "ports": [{"port": 80}]},
        }
    )


def _workload(name: str, namespace: str, labels: dict[str, str], n: int) -> r.Workload:
    return r.Workload.model_validate(
        {
            "apiVersion": "plait.dev/v1",
            "kind": "Workload",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"address": f"10.0.0.{n}", "port": 9080, "labels": labels},
        }
    )


def _labels(rng: random.Random) -> dict[str, str]:
    labels = {"app": rng.choice(APPS)}
    if rng.random() < 0.7:
        labels["version"] = rng.choice(VERSIONS)
    if rng.random() < 0.2:
        labels["tier"] = "edge"
    return labels


def test_each_cluster_holds_exactly_the_selected_endpoints_in_input_order() -> None:
    rng = random.Random(7)
    instances = [
        Instance(f"i{n}", "x", rng.choice(NAMESPACES), _labels(rng), f"10.1.0.{n}", 15006)
        for n in range(60)
    ]
    workloads = [_workload(f"w{n}", rng.choice(NAMESPACES), _labels(rng), n) for n in range(60)]
    selectors = [{}, {"app": "a"}, {"app": "b", "version": "v2"}, {"version": "v1"},
                 {"app": "c", "tier": "edge"}, {"app": "nobody"}]  # fmt: skip
    services = [
        _service(f"s{i}-{ns}", ns, sel) for i, sel in enumerate(selectors) for ns in NAMESPACES
    ]

    snapshot = compile_snapshot([*services, *workloads], instances, Node(name="n"), "1")

    for service, cluster in zip(
        sorted(services, key=lambda s: (s.metadata.namespace, s.metadata.name)),
        snapshot.clusters,
        strict=True,
    ):
        ns, selector = service.metadata.namespace, service.spec.selector
        expected = [
            i.name for i in instances if i.namespace == ns and r.selects(selector, i.labels)
        ]
        expected += [
            w.metadata.name
            for w in workloads
            if w.metadata.namespace == ns and r.selects(selector, w.spec.labels)
        ]
        assert [e.workload for e in cluster.endpoints] == expected, service.metadata.name
    assert sum(len(c.endpoints) for c in snapshot.clusters) > 40  # the check is not vacuous
    # An empty selector selects nothing, as in Kubernetes.
    assert all(not c.endpoints for c in snapshot.clusters if c.name.startswith("s0-"))
