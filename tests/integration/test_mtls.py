"""Mutual TLS between real proxies: what crosses the wire, and what is refused.

One control plane, an app `web` behind its proxy, a caller proxy `client`; all on loopback.
Each refusal is checked three ways: the connection or request fails, a counter moved, and a
log line says why. Tools: tshark (packet capture) and testssl.sh; the Makefile's TEST_DEBS
installs both, and a test fails (never skips) when one is missing.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from meshkit import Mesh, Proc, free_port, http_json, send_request, wait_until

from plait.identity.ca import CertificateAuthority
from plait.identity.csr import generate_key, key_to_pem, make_csr
from plait.identity.spiffe import SpiffeId

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
"""

WEB_ID = "spiffe://cluster.local/ns/default/sa/web"
CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"


class WebMesh:
    """The module's mesh: `web` (app + proxy) and `client` (a caller's proxy)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mesh = Mesh(tmp)
        self.mesh.apply(SERVICES)
        _, self.app_port = self.mesh.app("web")
        self.web_proc, self.web = self.mesh.proxy("web-0", "web", "app=web", app_port=self.app_port)
        self.client_proc, self.client = self.mesh.proxy("client-0", "client", "app=client")
        wait_until(lambda: self.mesh.converged({"web-0", "client-0"}), 15, "convergence")
        wait_until(self._routable, 10, "client-0 to reach web")

    def _routable(self) -> bool:
        return self.call().status == 200

    def call(self, target: str = "/", headers: dict[str, str] | None = None) -> Any:
        """app -> client proxy -> (mTLS) -> web proxy -> web app."""
        return send_request(
            self.client["outbound"], target, headers={"host": "web", **(headers or {})}
        )

    def inbound_stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.mesh.admin(self.web, "/stats?format=json")["listeners"][
            "inbound"
        ]
        return stats

    def web_log(self) -> str:
        return (self.tmp / "web-0.proxy.log").read_text()

    def control_log(self) -> str:
        return (self.tmp / "control.log").read_text()


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebMesh]:
    m = WebMesh(tmp_path_factory.mktemp("mtls"))
    try:
        yield m
    finally:
        m.mesh.close()


def tool(command: str) -> str:
    """The path of a test tool; a missing one fails the test (`make test` installs it)."""
    path = shutil.which(command)
    if path is None:
        pytest.fail(
            f"{command} is not installed: run `make test` (TEST_DEBS) or apt-get install it"
        )
    return path


def counter(stats: dict[str, int], name: str) -> int:
    return int(stats.get(name, 0))


# certificates a test makes itself ---------------------------------------------------------


def issue(
    ca: CertificateAuthority, directory: Path, account: str, ttl: timedelta
) -> tuple[Path, Path]:
    """A workload certificate and key from `ca`, written to `directory` (cert.pem, key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    spiffe = SpiffeId("cluster.local", "default", account)
    cert = directory / "cert.pem"
    cert.write_bytes(ca.sign_csr(make_csr(key, spiffe), spiffe, ttl))
    key_path = directory / "key.pem"
    key_path.write_bytes(key_to_pem(key))
    key_path.chmod(0o600)
    return cert, key_path


def issue_without_spiffe_id(ca_dir: Path, directory: Path) -> tuple[Path, Path]:
    """A certificate signed by the mesh's root (read from the control plane's CA directory)
    that names its subject the old way, a common name, with no SPIFFE ID."""
    state = json.loads((ca_dir / "ca.json").read_text())
    fingerprint = next(r["fingerprint"] for r in state["roots"] if r["state"] == "signing")
    root = x509.load_pem_x509_certificate((ca_dir / "roots" / f"{fingerprint}.pem").read_bytes())
    root_key = serialization.load_pem_private_key(
        (ca_dir / "roots" / f"{fingerprint}.key").read_bytes(), None
    )
    key = generate_key()
    now = datetime.now(UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client")]))
        .issuer_name(root.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key_to_pem(key))
    return directory / "cert.pem", directory / "key.pem"


def mtls_exchange(port: int, bundle: Path, cert: tuple[Path, Path] | None) -> bytes:
    """Handshake with 127.0.0.1:port (presenting `cert`, if any), send a request, return the
    bytes answered; raises ssl.SSLError or OSError when the server refuses us."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(bundle))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw) as tls,
    ):
        # TLS 1.3: the server judges our certificate after our handshake "completes"; its
        # verdict (an alert, or a response) arrives with the first read.
        tls.sendall(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        return tls.recv(65536)


def refused_by_tls(port: int, bundle: Path, cert: tuple[Path, Path] | None) -> str:
    """The error a refused mTLS client sees; fails the test if it got an answer instead."""
    try:
        answer = mtls_exchange(port, bundle, cert)
    except (ssl.SSLError, OSError) as exc:
        return str(exc)
    assert answer == b"", f"the listener answered a client it should refuse: {answer[:100]!r}"
    return "closed"


# the wire ----------------------------------------------------------------------------------


def _probe(port: int) -> bool:
    """Open and close a TCP connection (a few packets for the capture to see)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    time.sleep(0.05)
    return True


class Capture:
    """tshark on loopback with a capture filter on some ports; stopped by `stop()`."""

    def __init__(self, pcap: Path, ports: list[int]) -> None:
        self.pcap = pcap
        self.tshark = tool("tshark")
        self.stderr = pcap.with_suffix(".stderr")
        port_filter = " or ".join(f"tcp port {p}" for p in ports)
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [self.tshark, "-i", "lo", "-f", port_filter, "-w", str(pcap)],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        wait_until(lambda: b"Capture started" in self.stderr.read_bytes(), 15, "tshark to start")
        # tshark says so a moment before packets really flow into the file: probe until they do.
        empty = pcap.stat().st_size
        wait_until(
            lambda: _probe(ports[0]) and pcap.stat().st_size > empty, 15, "packets in the capture"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # flushes the file
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def read(
        self, port: int, display_filter: str, *decode_as: str, fields: str = "frame.number"
    ) -> list[str]:
        """Values of `fields` for the captured packets on `port` that match `display_filter`."""
        argv = [
            self.tshark,
            "-r",
            str(self.pcap),
            "-Y",
            f"tcp.port == {port} && ({display_filter})",
        ]
        for proto in decode_as:
            argv += ["-d", f"tcp.port=={port},{proto}"]
        argv += ["-T", "fields", "-e", fields]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
        return [line for line in out.splitlines() if line.strip()]

    def payload(self, port: int) -> bytes:
        hexes = self.read(port, "tcp.len > 0", fields="tcp.payload")
        return b"".join(bytes.fromhex(h.replace(":", "")) for h in hexes)


@pytest.mark.timeout(90)
def test_traffic_between_proxies_is_tls_and_only_the_app_legs_are_plaintext(
    web: WebMesh, tmp_path: Path
) -> None:
    app_leg, mesh_leg = web.client["outbound"], web.web["inbound"]
    capture = Capture(tmp_path / "lo.pcap", [app_leg, mesh_leg, web.app_port])
    marker = "x-capture-marker-7f3a"
    try:
        for i in range(20):
            reply = web.call(f"/secret/{i}", {"x-marker": marker})
            assert reply.status == 200, reply
        time.sleep(0.5)  # the last packets reach the capture file
    finally:
        capture.stop()

    # The caller's app and its proxy speak HTTP; the app behind `web` gets HTTP too.
    assert len(capture.read(app_leg, "http.request", "http")) == 20
    assert len(capture.read(web.app_port, "http.request", "http")) == 20
    assert marker.encode() in capture.payload(app_leg)
    # Between the proxies: TLS application records, and not one byte of the requests.
    assert capture.read(mesh_leg, "http.request", "http") == []
    assert len(capture.read(mesh_leg, "tls.record.content_type == 23", "tls")) >= 40
    between = capture.payload(mesh_leg)
    assert len(between) > 20 * 100
    assert (
        marker.encode() not in between and b"/secret/" not in between and b"HTTP/1.1" not in between
    )


# refused connections -----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_plaintext_to_a_strict_inbound_port_is_closed_and_counted(web: WebMesh) -> None:
    before = counter(web.inbound_stats(), "tls.plaintext_refused")
    with socket.create_connection(("127.0.0.1", web.web["inbound"]), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: web\r\n\r\n")
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert answer == b""
    assert counter(web.inbound_stats(), "tls.plaintext_refused") == before + 1
    assert "plaintext connection refused (mTLS mode STRICT)" in web.web_log()


@pytest.mark.timeout(30)
def test_client_certificate_from_another_ca_is_refused(web: WebMesh, tmp_path: Path) -> None:
    stranger = CertificateAuthority.create(tmp_path / "other-ca")
    cert = issue(stranger, tmp_path / "stranger", "client", timedelta(hours=1))
    before = counter(web.inbound_stats(), "tls.handshake_failed.untrusted_certificate")

    error = refused_by_tls(web.web["inbound"], web.mesh.bundle, cert)

    assert "unknown ca" in error.lower() or error == "closed", error
    stats = web.inbound_stats()
    assert counter(stats, "tls.handshake_failed.untrusted_certificate") == before + 1
    assert "TLS handshake refused (untrusted_certificate)" in web.web_log()


@pytest.mark.timeout(30)
def test_expired_client_certificate_from_the_mesh_ca_is_refused(
    web: WebMesh, tmp_path: Path
) -> None:
    # The mesh's own CA, with its clock two hours back: a certificate that expired an hour ago.
    two_hours_ago = datetime.now(UTC) - timedelta(hours=2)
    mesh_ca = CertificateAuthority.load(web.tmp / "control" / "ca", clock=lambda: two_hours_ago)
    cert = issue(mesh_ca, tmp_path / "expired", "client", timedelta(minutes=30))
    before = counter(web.inbound_stats(), "tls.handshake_failed.expired_certificate")

    error = refused_by_tls(web.web["inbound"], web.mesh.bundle, cert)

    assert "expired" in error.lower() or error == "closed", error
    assert counter(web.inbound_stats(), "tls.handshake_failed.expired_certificate") == before + 1
    assert "TLS handshake refused (expired_certificate)" in web.web_log()


@pytest.mark.timeout(30)
def test_client_without_a_certificate_is_refused(web: WebMesh) -> None:
    before = counter(web.inbound_stats(), "tls.handshake_failed.no_client_certificate")
    refused_by_tls(web.web["inbound"], web.mesh.bundle, None)
    assert counter(web.inbound_stats(), "tls.handshake_failed.no_client_certificate") == before + 1
    assert "TLS handshake refused (no_client_certificate)" in web.web_log()


@pytest.mark.timeout(30)
def test_mesh_certificate_without_a_spiffe_id_is_refused(web: WebMesh, tmp_path: Path) -> None:
    cert = issue_without_spiffe_id(web.tmp / "control" / "ca", tmp_path / "cn-only")
    before = counter(web.inbound_stats(), "tls.peer_refused.no_spiffe_id")

    refused_by_tls(web.web["inbound"], web.mesh.bundle, cert)

    assert counter(web.inbound_stats(), "tls.peer_refused.no_spiffe_id") == before + 1
    assert "inbound caller refused: certificate has no SPIFFE ID" in web.web_log()


def static_caller(web: WebMesh, tmp: Path, service: str, identity: str) -> tuple[Proc, int, int]:
    """A proxy with a static snapshot (no control plane) and a copy of client-0's key and
    certificate, whose one service is web-0's inbound port, expected to prove `identity`.
    Returns (process, outbound port, admin port)."""
    state = tmp / "static.state"
    shutil.copytree(web.tmp / "client-0.state", state)
    endpoint = {"address": "127.0.0.1", "port": web.web["inbound"], "identity": identity}
    config = tmp / "static.json"
    config.write_text(json.dumps({"clusters": [{"name": service, "endpoints": [endpoint]}]}))
    outbound, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "plait", "proxy", f"--config={config}", "--access-log=off"]
    argv += [f"--ca-bundle={web.mesh.bundle}", f"--state-dir={state}"]
    argv += [f"--outbound=127.0.0.1:{outbound}", f"--admin=127.0.0.1:{admin}"]
    proc = Proc(argv, tmp / "static.proxy.log")
    web.mesh.procs.append(proc)
    wait_until(lambda: web.mesh.is_ready({"admin": admin}), 15, "the static proxy")
    return proc, outbound, admin


@pytest.mark.timeout(40)
def test_server_with_another_spiffe_id_than_expected_fails_upstream_with_uf(
    web: WebMesh, tmp_path: Path
) -> None:
    # The caller expects `payments` at web-0's address; web-0 proves `web` (validly signed).
    impostor_id = "spiffe://cluster.local/ns/default/sa/payments"
    proc, outbound, admin = static_caller(web, tmp_path, "payments", impostor_id)

    reply = send_request(outbound, "/", headers={"host": "payments"})

    assert reply.status == 503, reply
    assert reply.headers.get("x-plait-response-flags") == "UF", reply
    (host,) = http_json(f"http://127.0.0.1:{admin}/stats?format=json")["hosts"]
    assert host["identity"] == impostor_id
    assert host["cx_tls_fail"] > 0
    proc.stop()
    log = (tmp_path / "static.proxy.log").read_text()
    assert f"peer {WEB_ID} is not one of {impostor_id}" in log, log


# join tokens -------------------------------------------------------------------------------


def never_ready(mesh: Mesh, ports: dict[str, int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if mesh.is_ready(ports):
            return False
        time.sleep(0.2)
    return True


@pytest.mark.timeout(40)
def test_reused_join_token_is_refused_and_the_proxy_never_becomes_ready(web: WebMesh) -> None:
    token = web.mesh.join_token("batch")
    web.mesh.proxy("batch-0", "batch", "app=batch", token=token)
    proc, ports = web.mesh.proxy("batch-1", "batch", "app=batch", token=token, wait=False)

    wait_until(
        lambda: "proxy batch-1 refused: join token already used" in web.control_log(), 10, "refusal"
    )
    assert never_ready(web.mesh, ports, 2.0)
    assert "batch-1" not in {p["name"] for p in web.mesh.proxies()}
    assert "join token already used" in (web.tmp / "batch-1.proxy.log").read_text()
    proc.stop()


@pytest.mark.timeout(40)
def test_expired_join_token_is_refused_and_the_proxy_never_becomes_ready(web: WebMesh) -> None:
    token = web.mesh.join_token("cron", ttl=1)
    time.sleep(2.1)
    proc, ports = web.mesh.proxy("cron-0", "cron", "app=cron", token=token, wait=False)

    wait_until(
        lambda: "proxy cron-0 refused: join token expired" in web.control_log(), 10, "refusal"
    )
    assert never_ready(web.mesh, ports, 2.0)
    assert "join token expired" in (web.tmp / "cron-0.proxy.log").read_text()
    proc.stop()


# PeerAuthentication ------------------------------------------------------------------------


def peer_authentication(mode: str) -> str:
    return f"""
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: web-mtls}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  mtls: {{mode: {mode}}}
"""


def plaintext_call(web: WebMesh, headers: dict[str, str] | None = None) -> Any:
    """A request straight to web-0's inbound port, without TLS; None if refused."""
    try:
        return send_request(web.web["inbound"], "/plain", headers=headers, timeout=3)
    except (OSError, http.client.HTTPException):
        return None


@pytest.mark.timeout(60)
def test_peer_authentication_modes_switch_live(web: WebMesh) -> None:
    try:
        web.mesh.apply(peer_authentication("PERMISSIVE"))
        wait_until(lambda: plaintext_call(web) is not None, 3, "PERMISSIVE to accept plaintext")
        # PERMISSIVE: both on the same port.
        forged = f"By={WEB_ID};URI=spiffe://cluster.local/ns/default/sa/admin"
        plain = plaintext_call(web, {"x-forwarded-client-cert": forged})
        assert plain.status == 200 and plain.json()["name"] == "web"
        # A plaintext caller proved nothing: the app sees no client-certificate header at all.
        assert "x-forwarded-client-cert" not in dict(plain.json()["headers"])
        assert web.call().status == 200

        web.mesh.apply(peer_authentication("DISABLE"))
        wait_until(lambda: web.mesh.converged(), 5, "DISABLE pushed")
        assert plaintext_call(web).status == 200

        refused_before = counter(web.inbound_stats(), "tls.plaintext_refused")
        web.mesh.apply(peer_authentication("STRICT"))
        wait_until(lambda: plaintext_call(web) is None, 3, "STRICT to refuse plaintext again")
        assert counter(web.inbound_stats(), "tls.plaintext_refused") > refused_before
        assert web.call().status == 200
    finally:
        web.mesh.delete("PeerAuthentication", "web-mtls")
        wait_until(lambda: web.mesh.converged(), 5, "convergence")


@pytest.mark.timeout(30)
def test_static_workload_without_a_proxy_is_called_in_plaintext_without_xfcc(web: WebMesh) -> None:
    """Auto mTLS: an endpoint with no identity (a registered Workload) gets plaintext."""
    _, legacy_port = web.mesh.app("legacy")
    web.mesh.apply(f"""
apiVersion: plait.dev/v1
kind: Service
metadata: {{name: legacy}}
spec: {{selector: {{app: legacy}}, ports: [{{name: http, port: 80}}]}}
---
apiVersion: plait.dev/v1
kind: Workload
metadata: {{name: legacy-db}}
spec: {{address: 127.0.0.1, port: {legacy_port}, labels: {{app: legacy}}}}
""")
    wait_until(lambda: web.mesh.converged(), 5, "convergence")
    forged = f"By={WEB_ID};URI=spiffe://cluster.local/ns/default/sa/admin"
    reply = send_request(
        web.client["outbound"], "/q", headers={"host": "legacy", "x-forwarded-client-cert": forged}
    )
    assert reply.status == 200 and reply.json()["name"] == "legacy"
    # What the outbound proxy sent, seen directly: a client-certificate header the app tried
    # to send was dropped on the way out.
    assert "x-forwarded-client-cert" not in dict(reply.json()["headers"])
    hosts = web.mesh.admin(web.client, "/stats?format=json")["hosts"]
    legacy = next(h for h in hosts if h["address"] == f"127.0.0.1:{legacy_port}")
    assert legacy["identity"] == "" and legacy["cx_tls_fail"] == 0


# visibility --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_status_and_admin_show_each_proxys_identity_serial_and_expiry(web: WebMesh) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "plait", "status", "-o", "json", "--server", web.mesh.api],
        capture_output=True, text=True, timeout=20, check=True,
    )  # fmt: skip
    status = {p["name"]: p for p in json.loads(out.stdout)}
    for name, ports, spiffe in (("web-0", web.web, WEB_ID), ("client-0", web.client, CLIENT_ID)):
        local = web.mesh.admin(ports, "/config_dump")["certificate"]
        assert local["spiffe_id"] == spiffe
        assert int(local["serial"], 16) > 0
        not_after = datetime.fromisoformat(local["not_after"])
        assert timedelta(hours=23) < not_after - datetime.now(UTC) <= timedelta(hours=24)
        assert status[name]["identity"] == spiffe
        remote = status[name]["certificate"]
        assert remote is not None, status[name]
        assert (remote["serial"], remote["spiffe_id"], remote["not_after"]) == (
            local["serial"],
            spiffe,
            local["not_after"],
        )
    stats = web.inbound_stats()
    assert stats["tls.handshakes"] >= 1


@pytest.mark.timeout(240)
def test_testssl_finds_no_old_protocols_and_no_weak_ciphers(web: WebMesh, tmp_path: Path) -> None:
    testssl = tool("testssl")
    report = tmp_path / "testssl.json"
    result = subprocess.run(
        [testssl, "--quiet", "--color", "0", "-p", "-E", "--jsonfile", str(report),
         f"127.0.0.1:{web.web['inbound']}"],
        capture_output=True, text=True, timeout=200,  # ~15-30 s; more on a loaded machine
    )  # fmt: skip
    assert report.exists(), result.stdout + result.stderr
    findings = {f["id"]: f for f in json.loads(report.read_text())}
    text = result.stdout
    for old in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert findings[old]["finding"].startswith("not offered"), (old, findings[old], text)
    assert findings["TLS1_2"]["finding"].startswith("offered"), text
    assert findings["TLS1_3"]["finding"].startswith("offered"), text
    ciphers = [f["finding"] for k, f in findings.items() if k.startswith("cipher-")]
    assert ciphers, text
    weak = ("NULL", "EXP", "RC4", "DES", "MD5", "CBC", "anon", "ADH", "AECDH", "SHA ", "RSA ")
    for line in ciphers:
        assert not any(w in line for w in weak), line
