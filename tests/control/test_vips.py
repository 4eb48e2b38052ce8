"""Service VIPs: derived from the name, stable, unique, inside the range."""

from __future__ import annotations

import ipaddress

import pytest

from plait.config import resources as r
from plait.config.snapshot import Node, Snapshot
from plait.control.compiler import CompileError, compile_snapshot
from plait.control.vips import VipRangeError, allocate_vips, parse_service_cidr


def test_vips_are_stable_and_independent_of_other_services() -> None:
    alone = allocate_vips([("default", "reviews")])
    many = allocate_vips([("default", f"svc{i}") for i in range(50)] + [("default", "reviews")])
    assert alone[("default", "reviews")] == many[("default", "reviews")]
    assert allocate_vips([("default", "reviews")]) == alone


def test_vips_are_unique_and_inside_the_range_even_when_crowded() -> None:
    keys = [("ns", f"s{i}") for i in range(13)]  # a /28 has 13 usable addresses here
    vips = allocate_vips(keys, "10.1.2.0/28")
    network = ipaddress.IPv4Network("10.1.2.0/28")
    assert len(set(vips.values())) == 13
    for vip in vips.values():
        address = ipaddress.IPv4Address(vip)
        assert address in network
        assert address not in (network.network_address, network.broadcast_address)
        assert address != network.network_address + 1


def test_too_many_services_or_a_bad_range_is_an_error() -> None:
    with pytest.raises(VipRangeError, match="room for 13"):
        allocate_vips([("ns", f"s{i}") for i in range(14)], "10.1.2.0/28")
    for bad in ("10.1.2.0/30", "10.1.2.1/24", "fd00::/64", "nonsense"):
        with pytest.raises(VipRangeError):
            parse_service_cidr(bad)


def _service(name: str) -> r.Service:
    return r.Service.model_validate(
        {
            "apiVersion": "plait.dev/v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 9080}]},
        }
    )


def test_compiled_clusters_carry_their_vip_through_the_snapshot_format() -> None:
    snapshot = compile_snapshot([_service("reviews"), _service("ratings")], [], Node(), "1")
    vips = {c.name: c.vip for c in snapshot.clusters}
    assert vips == {
        "reviews": allocate_vips([("default", "reviews")])[("default", "reviews")],
        "ratings": allocate_vips([("default", "ratings")])[("default", "ratings")],
    }
    again = Snapshot.from_dict(snapshot.to_dict())
    assert {c.name: c.vip for c in again.clusters} == vips
    assert vips["reviews"] in again.clusters[1].hostnames or vips["reviews"] in (
        again.clusters[0].hostnames
    )
    with pytest.raises(CompileError, match="service CIDR"):
        compile_snapshot([_service("reviews")], [], Node(), "1", service_cidr="bad")
