"""Certificate rotation with real processes: six-second certificates under steady traffic.

`plait control --cert-ttl 6` issues certificates that live 6 s; proxies renew at about half
of that (with jitter) on their authenticated push channel. Traffic runs the whole time, on a
long-lived pooled connection (made with a certificate that has long expired by the end) and
on connections made fresh along the way (each with the certificate of the moment).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from meshkit import Mesh, wait_until

TTL = 6.0
SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
# A fresh pooled connection every 50 requests: steady traffic then keeps making new mTLS
# handshakes throughout the rotations (the 1 s idle timeout alone left it to chance).
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-fresh-connections}
spec:
  host: web
  trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 50}}}
"""


class RotatingMesh:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.started = time.monotonic()
        self.mesh = Mesh(tmp, control_args=["--cert-ttl", str(TTL)])
        self.mesh.apply(SERVICES)
        _, app_port = self.mesh.app("web")
        _, self.web = self.mesh.proxy("web-0", "web", "app=web", app_port=app_port)
        # Pooled connections idle for 1 s are closed, so the traffic keeps making new ones.
        self.client_proc, self.client = self.mesh.proxy(
            "client-0", "client", "app=client", extra=["--upstream-idle-timeout", "1"]
        )
        wait_until(lambda: self.mesh.converged({"web-0", "client-0"}), 15, "convergence")

    def certificate(self, ports: dict[str, int]) -> dict[str, Any]:
        cert: dict[str, Any] = self.mesh.admin(ports, "/config_dump")["certificate"]
        return cert


@pytest.fixture(scope="module")
def rotating(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RotatingMesh]:
    m = RotatingMesh(tmp_path_factory.mktemp("rotation"))
    try:
        yield m
    finally:
        m.mesh.close()


class Traffic:
    """GETs through the client proxy from a thread until stopped; counts what failed."""

    def __init__(self, outbound: int, pause: float) -> None:
        self.url = f"http://127.0.0.1:{outbound}/"
        self.pause = pause
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5, headers={"host": "web"}) as client:
            while not self._stop.is_set():
                try:
                    r = client.get(self.url)
                    if r.status_code == 200 and r.json()["name"] == "web":
                        self.ok += 1
                    else:
                        self.failures.append(
                            f"{r.status_code} {r.headers.get('x-plait-response-flags')}"
                        )
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def served_certificate(port: int, bundle: Path) -> x509.Certificate:
    """The certificate a TLS listener presents to a new connection (verified against the
    bundle); the client sends none, so an mTLS listener hangs up right after."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(bundle))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def inbound_handshakes(rotating: RotatingMesh) -> int:
    """Completed mTLS handshakes on web-0's inbound listener."""
    stats = rotating.mesh.admin(rotating.web, "/stats?format=json")["listeners"]["inbound"]
    return int(stats.get("tls.handshakes", 0))


@pytest.mark.timeout(90)
def test_certificates_rotate_under_steady_traffic_without_a_failed_request(
    rotating: RotatingMesh,
) -> None:
    proxies = {"web-0": rotating.web, "client-0": rotating.client}
    started = time.monotonic()
    first = {name: rotating.certificate(ports) for name, ports in proxies.items()}
    handshakes_before = inbound_handshakes(rotating)
    steady, sporadic = (
        Traffic(rotating.client["outbound"], 0.005),
        Traffic(rotating.client["outbound"], 1.3),
    )
    serials: dict[str, set[str]] = {name: set() for name in proxies}
    served: set[str] = set()

    def three_rotations_each() -> bool:
        for name, ports in proxies.items():
            serials[name].add(rotating.certificate(ports)["serial"])
        served.add(
            format(
                served_certificate(rotating.web["inbound"], rotating.mesh.bundle).serial_number, "x"
            )
        )
        return all(len(s - {first[n]["serial"]}) >= 3 for n, s in serials.items())

    try:
        wait_until(three_rotations_each, 45, "three rotations of both certificates", interval=0.5)
        time.sleep(1.0)  # traffic continues across the last rotation
    finally:
        steady.stop()
        sporadic.stop()
    last = {name: rotating.certificate(ports) for name, ports in proxies.items()}
    elapsed = time.monotonic() - started

    assert steady.failures == [] and sporadic.failures == []
    for name, now in last.items():
        rotations = now["rotations"] - first[name]["rotations"]
        assert rotations >= 3, (name, now)
        # About half the lifetime each (40-60 % with jitter): never a renewal per heartbeat.
        assert rotations <= elapsed / (0.4 * TTL) + 1, (name, rotations, elapsed)
        assert now["spiffe_id"] == first[name]["spiffe_id"]
    assert steady.ok > 100 and sporadic.ok >= 3
    # New connections got the certificate of the moment, not the one the listener started with.
    assert len(served - {first["web-0"]["serial"]}) >= 2, served
    assert inbound_handshakes(rotating) - handshakes_before >= 3
    # The control plane knows each proxy's current certificate.
    wait_until(
        lambda: (
            {p["name"]: p["certificate"]["serial"] for p in rotating.mesh.proxies()}
            == {name: rotating.certificate(ports)["serial"] for name, ports in proxies.items()}
        ),
        5,
        "the control plane to show the current serials",
    )


@pytest.mark.timeout(60)
def test_control_plane_renews_its_own_certificate_so_proxies_still_join_and_reconnect(
    rotating: RotatingMesh,
) -> None:
    # Past two lifetimes of the control plane's first certificate.
    time.sleep(max(0.0, rotating.started + 2 * TTL + 1 - time.monotonic()))
    push = served_certificate(rotating.mesh.push_port, rotating.mesh.bundle)
    assert push.not_valid_after_utc > datetime.now(UTC)

    rotating.mesh.proxy("late-0", "late", "app=late")  # bootstraps over the push channel

    rotating.client_proc.stop()
    rotating.client_proc.start()  # reconnects with the certificate in its state dir
    wait_until(
        lambda: (
            rotating.mesh.is_ready(rotating.client)
            and rotating.mesh.admin(rotating.client, "/config_dump")["control_plane"]["connected"]
        ),
        15,
        "client-0 to reconnect",
    )
