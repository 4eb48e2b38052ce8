"""Snapshot parsing: errors name the field path."""

from __future__ import annotations

import pytest

from plait.config.snapshot import Snapshot, SnapshotError

GOOD = {
    "version": "3",
    "node": {"name": "p", "service": "productpage", "labels": {"version": "v1"}},
    "clusters": [{"name": "reviews", "ports": [9080], "endpoints": [{"address": "127.0.0.1", "port": 1}]}],
    "routes": [
        {
            "name": "r",
            "parent_kind": "Service",
            "parent_name": "reviews",
            "rules": [{"matches": [{"path": {"type": "Exact", "value": "/x"}}], "backends": [{"service": "reviews"}]}],
        }
    ],
}


def test_round_trip() -> None:
    snap = Snapshot.from_dict(GOOD)
    assert Snapshot.from_dict(snap.to_dict()) == snap


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["clusters"][0]["endpoints"][0].update(port="x"), "clusters[0].endpoints[0].port: expected int"),
        (lambda d: d["clusters"][0]["endpoints"][0].update(port=70000), "clusters[0].endpoints[0].port: port 70000"),
        (lambda d: d["clusters"][0].update(colour="red"), "clusters[0].colour: unknown field"),
        (lambda d: d["routes"][0]["rules"][0]["backends"][0].update(service="nope"), "routes[0].rules[0].backends[0].service: no service"),
        (lambda d: d["routes"][0]["rules"][0]["matches"][0]["path"].update(type="Regex"), "routes[0].rules[0].matches[0].path.type"),
        (lambda d: d["clusters"].append(dict(d["clusters"][0])), "clusters[1].name: duplicate"),
        (lambda d: d["clusters"][0]["endpoints"][0].update(port=True), "expected an integer, got a boolean"),
        (lambda d: d.update(node=[1]), "node: expected Mapping"),
    ],
)
def test_errors_name_the_field(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    import copy

    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(SnapshotError, match=__import__("re").escape(message)):
        Snapshot.from_dict(data)
