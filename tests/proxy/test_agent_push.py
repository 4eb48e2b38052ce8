"""The agent's handling of pushes (`ControlAgent._on_message`), fed messages by hand.

Its pure core: validate whole, swap, ACK; or NACK and keep the last good config. The writer is
a fake that records the frames the agent sends back. The control plane's side of the same
exchanges runs for real in tests/integration/test_push_protocol.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from plait.config import wire
from plait.config.resources import parse_resources
from plait.config.snapshot import Node, Snapshot
from plait.control.policy_compiler import compile_policies
from plait.proxy.agent import ControlAgent
from plait.proxy.runtime import ConfigHolder

NODE = Node(name="web-0", service="web", labels={"app": "web"})


class FakeTransport:
    def is_closing(self) -> bool:
        return False


class FakeWriter:
    """Collects what the agent writes, decoded."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.frames = wire.FrameReader()
        self.sent: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.sent.extend(self.frames.feed(data))


def cluster(name: str, *ports: int) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "default",
        "ports": [80],
        "endpoints": [{"address": "10.0.0.1", "port": p, "labels": {"app": name}} for p in ports],
    }


def route_to(service: str) -> dict[str, Any]:
    return {
        "name": "web",
        "namespace": "default",
        "parent_kind": "Service",
        "parent_name": "web",
        "hostnames": [],
        "rules": [
            {
                "matches": [],
                "backends": [{"service": service, "namespace": "default", "port": 80, "weight": 1}],
            }
        ],
    }


def snapshot(version: str, routes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "version": version,
        "clusters": [cluster("web", 8080), cluster("api", 9090)],
        "routes": routes or [],
    }


def agent(app: tuple[str, int] | None = None) -> tuple[ControlAgent, FakeWriter]:
    holder = ConfigHolder(Snapshot(node=NODE), app=app)
    a = ControlAgent(("127.0.0.1", 1), NODE, holder, {}, None)
    writer = FakeWriter()
    a._writer = writer  # type: ignore[assignment]  # what _session sets after connecting
    return a, writer


def current(a: ControlAgent) -> Snapshot:
    return a.config.current.snapshot


def test_snapshot_then_delta_are_applied_whole_and_acked() -> None:
    a, writer = agent()
    a._on_message(snapshot("1"))
    a._on_message(
        {
            "type": "delta",
            "version": "2",
            "base": "1",
            "upsert": {"routes": [route_to("api")]},
            "remove": {"clusters": ["default/web"]},
        }
    )
    assert writer.sent == [{"type": "ack", "version": "1"}, {"type": "ack", "version": "2"}]
    assert a.state.version == "2" and current(a).version == "2"
    assert [c.name for c in current(a).clusters] == ["api"]
    assert [r.rules[0].backends[0].service for r in current(a).routes] == ["api"]


def test_delta_on_another_base_is_nacked_with_reason_base_and_nothing_changes() -> None:
    a, writer = agent()
    a._on_message(snapshot("1"))
    before = current(a)
    a._on_message(
        {"type": "delta", "version": "3", "base": "2", "upsert": {"routes": [route_to("api")]}}
    )
    nack = writer.sent[-1]
    assert nack["type"] == "nack" and nack["reason"] == "base" and nack["version"] == "3"
    assert "delta base 2 != applied 1" in nack["error"]
    assert a.state.version == "1" and current(a) is before
    # The control plane answers with a full snapshot, which applies on any base.
    a._on_message(snapshot("3", [route_to("api")]))
    assert writer.sent[-1] == {"type": "ack", "version": "3"}
    assert current(a).version == "3" and len(current(a).routes) == 1


def test_snapshot_that_does_not_validate_is_nacked_and_the_last_good_one_stays() -> None:
    a, writer = agent()
    a._on_message(snapshot("1", [route_to("api")]))
    good = current(a)
    a._on_message(snapshot("2", [route_to("missing")]))  # a route to a cluster it lacks
    nack = writer.sent[-1]
    assert nack["type"] == "nack" and nack["reason"] == "invalid" and nack["version"] == "2"
    assert "no service default/missing in clusters" in nack["error"]
    assert current(a) is good and a.state.version == "1"


# A JWKS the control plane's validation accepts (an object with a list of key objects) that a
# proxy cannot verify with: no RSA, EC or OKP signature key. The same case runs end to end,
# with a real proxy, in tests/integration/test_push_protocol.py.
UNUSABLE_JWKS = json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]})
REQUEST_AUTHN = f"""
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {{name: jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  jwtRules: [{{issuer: "https://issuer.example", jwks: '{UNUSABLE_JWKS}'}}]
"""


@pytest.mark.parametrize("push", ["delta", "snapshot"])
def test_policy_the_proxy_cannot_enforce_is_nacked_and_the_last_good_one_stays(push: str) -> None:
    a, writer = agent(app=("127.0.0.1", 9))
    a._on_message(snapshot("1"))
    good = current(a)
    policies = compile_policies(
        parse_resources(REQUEST_AUTHN, "authn.yaml"), {"app": "web"}, "default"
    )
    a._on_message(
        {"type": "workload", "data": {"policies": policies.to_dict(), "mtls_mode": "STRICT"}}
    )
    if push == "delta":
        a._on_message({"type": "delta", "version": "2", "base": "1", "upsert": {}, "remove": {}})
    else:
        a._on_message(snapshot("2"))
    nack = writer.sent[-1]
    assert nack["type"] == "nack" and nack["version"] == "2"
    assert "JWKS has no usable signature key" in nack["error"]
    assert current(a) is good and a.state.version == "1"
