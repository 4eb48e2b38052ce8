"""The push protocol against a real `plait control`: what each change sends, and to whom.

The subscription client here is written from the protocol (`plait.config.wire`), not borrowed
from the proxy's agent, so these tests pin the control plane's side of it: a route change is a
delta of one route, an endpoint change a delta of the clusters it touches, a reconnect or a
NACK earns a full snapshot, and a client that stops heartbeating is dropped with its workload.
One test runs a real proxy: a snapshot the control plane accepts but the proxy cannot use is
NACKed there and its last good config stays in force.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from meshkit import Mesh, http_json, wait_until

from plait.config import wire
from plait.identity.ca import CertificateAuthority
from plait.identity.csr import generate_key, key_to_pem, make_csr
from plait.identity.spiffe import SpiffeId
from plait.identity.tls import client_context

SERVICES = 30
ENDPOINTS_PER_SERVICE = 10
HEARTBEAT = 0.5


# --- a raw subscription client ---------------------------------------------------------------


class PushClient:
    """One subscription over TLS, with a certificate issued straight from the mesh's CA.

    Blocking and single-threaded: it heartbeats (when `heartbeats` is on) only while it waits
    in `receive`, which is where the tests spend their time. `close()` is idempotent.
    """

    def __init__(
        self,
        mesh: Mesh,
        name: str,
        service: str = "probe",
        labels: dict[str, str] | None = None,
        endpoint: tuple[str, int] | None = None,
    ) -> None:
        self.mesh = mesh
        self.node = {
            "name": name,
            "service": service,
            "namespace": "default",
            "labels": labels or {"app": service},
            "gateway": "",
        }
        self.endpoint = {"address": endpoint[0], "port": endpoint[1]} if endpoint else None
        ca = CertificateAuthority.load(mesh.tmp / "control" / "ca")
        spiffe = SpiffeId(ca.trust_domain, "default", service)
        key = generate_key()
        # 1 h: shorter than the control plane's own leaves, so signing here leaves the CA's
        # state file (which records the latest leaf expiry) untouched.
        chain = ca.sign_csr(make_csr(key, spiffe), spiffe, timedelta(hours=1))
        self.tls = client_context(
            chain, key_to_pem(key), ca.trust_bundle_pem(), alpn=("plait-push",)
        )
        self.sock: ssl.SSLSocket | None = None
        self.state = wire.ResourceState()
        self.heartbeats = True
        self.last_sent = 0.0

    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.mesh.push_port), timeout=5)
        self.sock = self.tls.wrap_socket(raw, server_hostname=None)
        self.sock.settimeout(0.1)
        self.frames = wire.FrameReader()
        self.inbox: list[dict[str, Any]] = []
        self.send(wire.hello(self.node, {}, self.endpoint, self.state.version, "healthy"))

    def send(self, message: dict[str, Any]) -> None:
        assert self.sock is not None
        self.sock.sendall(wire.encode(message))
        self.last_sent = time.monotonic()

    def receive(self, timeout: float = 5.0, quiet_ok: bool = False) -> dict[str, Any] | None:
        """The next message; None when the control plane closed the connection (or, with
        `quiet_ok`, when nothing came within `timeout`)."""
        assert self.sock is not None
        deadline = time.monotonic() + timeout
        while not self.inbox:
            if time.monotonic() > deadline:
                if quiet_ok:
                    return None
                raise AssertionError(f"{self.node['name']}: nothing received in {timeout} s")
            if self.heartbeats and time.monotonic() - self.last_sent >= HEARTBEAT:
                self.send({"type": "heartbeat"})
            try:
                data = self.sock.recv(256 * 1024)
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError):
                return None
            if not data:
                return None
            self.inbox.extend(self.frames.feed(data))
        return self.inbox.pop(0)

    def next_config(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next snapshot or delta (workload, bundle and other messages are skipped)."""
        while True:
            message = self.receive(timeout)
            assert message is not None, "the control plane closed the connection"
            if message["type"] in ("snapshot", "delta"):
                return message

    def apply(self, message: dict[str, Any]) -> None:
        """Apply a push as the proxy's agent would, and ACK it."""
        if message["type"] == "snapshot":
            self.state = wire.ResourceState.from_snapshot_dict(message["version"], message)
        else:
            assert message["base"] == self.state.version, message
            self.state = self.state.apply_delta(message)
        self.send({"type": "ack", "version": message["version"]})

    def sync(self) -> None:
        """Take and ACK the first snapshot after connecting, then `settle()`."""
        snapshot = self.next_config()
        assert snapshot["type"] == "snapshot", snapshot["type"]
        self.apply(snapshot)
        self.settle()

    def settle(self) -> None:
        """Apply pushes until the control plane has compiled every write so far (an apply
        returns before its debounced compile) and this client has ACKed the result."""
        revision = http_json(f"{self.mesh.api}/healthz")["revision"]
        deadline = time.monotonic() + 10
        while True:
            row = proxy_row(self.mesh, self.node["name"])
            if row and row["synced"] and row["compiled_revision"] >= revision:
                return
            assert time.monotonic() < deadline, f"{self.node['name']} never synced: {row}"
            message = self.receive(0.2, quiet_ok=True)
            if message is not None and message["type"] in ("snapshot", "delta"):
                self.apply(message)

    def endpoints(self, cluster: str) -> list[dict[str, Any]]:
        return list(self.state.items["clusters"][f"default/{cluster}"]["endpoints"])

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)  # grace 3 s: heartbeat and registry
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def quick_mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path, grace=1.5)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def clients() -> Iterator[list[PushClient]]:
    """Clients appended here are closed at teardown."""
    opened: list[PushClient] = []
    yield opened
    for client in opened:
        client.close()


def open_client(clients: list[PushClient], mesh: Mesh, name: str, **kwargs: Any) -> PushClient:
    client = PushClient(mesh, name, **kwargs)
    clients.append(client)
    client.connect()
    return client


# --- resources --------------------------------------------------------------------------------


def apply_json(mesh: Mesh, documents: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = http_json(
        f"{mesh.api}/api/v1/apply",
        "POST",
        json.dumps(documents).encode(),
        {"Authorization": f"Bearer {mesh.token}", "Content-Type": "application/json"},
        timeout=30,
    )
    return result


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "plait.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
    }


def workload(name: str, app: str, n: int) -> dict[str, Any]:
    return {
        "apiVersion": "plait.dev/v1",
        "kind": "Workload",
        "metadata": {"name": name},
        "spec": {"address": f"10.0.{n // 256}.{n % 256}", "port": 9080, "labels": {"app": app}},
    }


def route(parent: str, backend: str) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": parent},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 80}],
            "rules": [{"backendRefs": [{"name": backend, "port": 80}]}],
        },
    }


def populate(mesh: Mesh) -> None:
    """SERVICES services svc-00.., each selecting ENDPOINTS_PER_SERVICE static Workloads."""
    names = [f"svc-{i:02d}" for i in range(SERVICES)]
    workloads = [
        workload(f"w-{n:04d}", names[n % SERVICES], n)
        for n in range(SERVICES * ENDPOINTS_PER_SERVICE)
    ]
    apply_json(mesh, [service(n) for n in names] + workloads)


def proxy_row(mesh: Mesh, name: str) -> dict[str, Any] | None:
    return next((p for p in mesh.proxies() if p["name"] == name), None)


def changed_keys(delta: dict[str, Any]) -> dict[str, list[str]]:
    """What a delta carries: {"upsert clusters": [keys], "remove routes": [keys], ...}."""
    out = {}
    for kind, items in (delta.get("upsert") or {}).items():
        out[f"upsert {kind}"] = sorted(wire.resource_key(kind, x) for x in items)
    for kind, keys in (delta.get("remove") or {}).items():
        out[f"remove {kind}"] = sorted(keys)
    return out


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_route_change_in_a_mesh_of_many_endpoints_sends_one_route_and_no_cluster(
    mesh: Mesh, clients: list[PushClient]
) -> None:
    populate(mesh)
    client = open_client(clients, mesh, "probe-0")
    client.sync()
    clusters = client.state.items["clusters"].values()
    assert sum(len(c["endpoints"]) for c in clusters) == SERVICES * ENDPOINTS_PER_SERVICE
    full = wire.encode(client.state.to_snapshot_dict(client.node))

    apply_json(mesh, [route("svc-00", "svc-01")])
    delta = client.next_config()

    assert delta["type"] == "delta" and delta["base"] == client.state.version
    assert changed_keys(delta) == {"upsert routes": ["default/svc-00/Service/svc-00"]}
    assert len(wire.encode(delta)) * 50 < len(full)
    client.apply(delta)
    assert (
        client.state.items["routes"]["default/svc-00/Service/svc-00"]["rules"][0]["backends"][0][
            "service"
        ]
        == "svc-01"
    )


@pytest.mark.timeout(30)
def test_endpoint_change_sends_only_the_clusters_it_touches(
    mesh: Mesh, clients: list[PushClient]
) -> None:
    populate(mesh)
    apply_json(mesh, [route("svc-00", "svc-01")])
    client = open_client(clients, mesh, "probe-0")
    client.sync()

    # A static Workload joins svc-03.
    apply_json(mesh, [workload("extra", "svc-03", 9999)])
    delta = client.next_config()
    assert changed_keys(delta) == {"upsert clusters": ["default/svc-03"]}
    client.apply(delta)
    assert "extra" in {e["workload"] for e in client.endpoints("svc-03")}

    # A proxy registers its workload in svc-04 when it connects, and withdraws it with `bye`.
    registered = open_client(
        clients, mesh, "svc-04-proxy", service="svc-04", endpoint=("127.0.0.9", 15006)
    )
    registered.sync()
    delta = client.next_config()
    assert changed_keys(delta) == {"upsert clusters": ["default/svc-04"]}
    client.apply(delta)
    added = [e for e in client.endpoints("svc-04") if e["workload"] == "svc-04-proxy"]
    assert added and added[0]["identity"] == "spiffe://cluster.local/ns/default/sa/svc-04"

    registered.send({"type": "bye"})
    delta = client.next_config()
    assert changed_keys(delta) == {"upsert clusters": ["default/svc-04"]}
    client.apply(delta)
    assert "svc-04-proxy" not in {e["workload"] for e in client.endpoints("svc-04")}


@pytest.mark.timeout(30)
def test_reconnecting_client_gets_a_full_snapshot(mesh: Mesh, clients: list[PushClient]) -> None:
    apply_json(mesh, [service("a"), service("b")])
    client = open_client(clients, mesh, "probe-0")
    client.sync()
    first = client.state.version

    # Reconnect saying which version it holds: still a full snapshot, of the same version.
    client.close()
    client.connect()
    again = client.next_config()
    assert again["type"] == "snapshot" and again["version"] == first
    client.apply(again)

    # Changes made while it was away arrive whole too, never as a delta on its old version.
    # (Another client shows when the change has been compiled.)
    observer = open_client(clients, mesh, "observer-0")
    observer.sync()
    client.close()
    apply_json(mesh, [route("a", "b")])
    observer.settle()
    client.connect()
    latest = client.next_config()
    assert latest["type"] == "snapshot" and int(latest["version"]) > int(first)
    assert [r["name"] for r in latest["routes"]] == ["a"]


@pytest.mark.timeout(30)
def test_nacking_client_gets_a_full_snapshot_next_and_its_error_shows_in_status(
    mesh: Mesh, clients: list[PushClient]
) -> None:
    apply_json(mesh, [service("a"), service("b")])
    client = open_client(clients, mesh, "probe-0")
    client.sync()

    apply_json(mesh, [route("a", "b")])
    delta = client.next_config()
    assert delta["type"] == "delta"
    error = "routes[0]: refused on purpose by the test"
    client.send({"type": "nack", "version": delta["version"], "reason": "invalid", "error": error})

    row = wait_until(
        lambda: (r := proxy_row(mesh, "probe-0")) and r["last_nack"] and r, 5, "last_nack"
    )
    assert row["last_nack"] == error and row["synced"] is False
    status = subprocess.run(
        [sys.executable, "-m", "plait", "status", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "PLAIT_SERVER": mesh.api, "PLAIT_TOKEN": mesh.token},
        check=True,
    )
    listed = {p["name"]: p for p in json.loads(status.stdout)}
    assert listed["probe-0"]["last_nack"] == error

    # Its state is its last good one, so the next change comes whole, and the ACK clears it.
    apply_json(mesh, [route("a", "a")])
    full = client.next_config()
    assert full["type"] == "snapshot"
    client.apply(full)
    wait_until(lambda: (r := proxy_row(mesh, "probe-0")) and r["synced"], 5, "synced")
    assert proxy_row(mesh, "probe-0")["last_nack"] is None  # type: ignore[index]


@pytest.mark.timeout(30)
def test_delta_on_another_base_is_nacked_and_the_control_plane_resends_it_whole(
    mesh: Mesh, clients: list[PushClient]
) -> None:
    """The control plane's half of base recovery; the proxy's half is tests/proxy/test_agent_push.py."""
    apply_json(mesh, [service("a"), service("b")])
    client = open_client(clients, mesh, "probe-0")
    client.sync()

    apply_json(mesh, [route("a", "b")])
    delta = client.next_config()
    assert delta["type"] == "delta"
    client.send(
        {"type": "nack", "version": delta["version"], "reason": "base", "error": "base mismatch"}
    )

    full = client.next_config()  # at once: no further change is needed
    assert full["type"] == "snapshot" and full["version"] == delta["version"]
    client.apply(full)
    wait_until(lambda: (r := proxy_row(mesh, "probe-0")) and r["synced"], 5, "synced")


# A JWKS the control plane accepts (a JSON object with a list of key objects) but a proxy
# cannot verify a token with: its only key is symmetric ("oct"); the proxy takes RSA, EC and
# OKP signature keys only, and refuses a policy it cannot enforce.
UNUSABLE_JWKS = json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]})


@pytest.mark.timeout(60)
def test_snapshot_a_real_proxy_cannot_use_is_nacked_and_its_last_good_config_stays(
    mesh: Mesh,
) -> None:
    apply_json(mesh, [service("web")])
    _, app_port = mesh.app("web-0")
    _, ports = mesh.proxy("web-0", "web", "app=web", app_port=app_port)
    wait_until(lambda: mesh.converged({"web-0"}), 10, "convergence")
    admin = f"http://127.0.0.1:{ports['admin']}"
    good = http_json(f"{admin}/config_dump")["snapshot"]["version"]

    apply_json(
        mesh,
        [
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "RequestAuthentication",
                "metadata": {"name": "jwt"},
                "spec": {
                    "selector": {"matchLabels": {"app": "web"}},
                    "jwtRules": [{"issuer": "https://issuer.example", "jwks": UNUSABLE_JWKS}],
                },
            }
        ],
    )
    row = wait_until(lambda: (r := proxy_row(mesh, "web-0")) and r["last_nack"] and r, 10, "a NACK")
    assert "JWKS has no usable signature key" in row["last_nack"]
    assert row["synced"] is False

    snapshot = http_json(f"{admin}/config_dump")["snapshot"]
    assert snapshot["version"] == good
    assert "issuer.example" not in json.dumps(snapshot["policies"])
    with httpx.Client(timeout=5, headers={"host": "web"}) as c:
        r = c.get(f"http://127.0.0.1:{ports['outbound']}/still-serving")
    assert r.status_code == 200 and r.json()["name"] == "web-0"

    # Withdrawing the bad policy: the next push is whole, applies, and clears the NACK.
    subprocess.run(
        [sys.executable, "-m", "plait", "delete", "requestauthentication", "jwt"],
        capture_output=True,
        timeout=20,
        env={**os.environ, "PLAIT_SERVER": mesh.api, "PLAIT_TOKEN": mesh.token},
        check=True,
    )
    wait_until(lambda: mesh.converged({"web-0"}), 10, "reconvergence")
    assert proxy_row(mesh, "web-0")["last_nack"] is None  # type: ignore[index]


@pytest.mark.timeout(30)
def test_client_that_stops_heartbeating_is_dropped_after_the_grace_and_its_workload_removed(
    quick_mesh: Mesh, clients: list[PushClient]
) -> None:
    mesh = quick_mesh
    apply_json(mesh, [service("svc-04")])
    observer = open_client(clients, mesh, "observer-0")
    observer.sync()
    hung = open_client(
        clients, mesh, "svc-04-proxy", service="svc-04", endpoint=("127.0.0.9", 15006)
    )
    hung.sync()
    observer.apply(observer.next_config())
    assert [e["workload"] for e in observer.endpoints("svc-04")] == ["svc-04-proxy"]

    # Hung, not gone: its socket stays open, but it sends nothing more (no heartbeat, no bye).
    hung.heartbeats = False
    while proxy_row(mesh, "svc-04-proxy") is not None:
        assert time.monotonic() - hung.last_sent < mesh.grace + 3, "never dropped"
        observer.send({"type": "heartbeat"})
        time.sleep(0.2)
    assert time.monotonic() - hung.last_sent >= mesh.grace
    while hung.receive(2) is not None:  # what was pushed to it before, then the close
        pass

    # Its registered workload goes after the registry's grace, as for a vanished proxy.
    delta = observer.next_config(timeout=mesh.grace + 3)
    assert changed_keys(delta) == {"upsert clusters": ["default/svc-04"]}
    observer.apply(delta)
    assert observer.endpoints("svc-04") == []
    assert proxy_row(mesh, "observer-0") is not None  # the heartbeating client stayed
