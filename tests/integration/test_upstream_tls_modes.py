"""DestinationRule `tls.mode` overrides auto mTLS: SIMPLE (TLS to a server outside the mesh,
verified against a CA file and a name) and DISABLE (plaintext even to an endpoint with an
identity)."""

from __future__ import annotations

import datetime
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _cert(
    subject: str, issuer_key: Any, issuer: x509.Name | None, key: Any, ca: bool, dns: str | None
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def tls_server(tmp: Path) -> tuple[int, Path, ThreadingHTTPServer]:
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test CA", ca_key, None, ca_key, True, None)
    leaf = _cert("db.example", ca_key, ca.subject, key, False, "db.example")
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 (stdlib name)
            self.send_response(200)
            self.send_header("content-length", "3")
            self.end_headers()
            self.wfile.write(b"tls")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "leaf.pem", tmp / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_address[1], tmp / "ca.pem", server


def test_simple_tls_to_a_server_outside_the_mesh(proxies: Any, tmp_path: Path) -> None:
    port, ca_file, server = tls_server(tmp_path)
    try:
        policy = {"tls_mode": "SIMPLE", "ca_file": str(ca_file), "sni": "db.example"}
        snap = {
            "clusters": [
                {
                    "name": "db",
                    "ports": [80],
                    "endpoints": [{"address": "127.0.0.1", "port": port}],
                    "policy": policy,
                }
            ]
        }
        proxy = proxies.start(snap)
        r = httpx.get(proxy.url() + "/", headers={"host": "db"}, timeout=5)
        assert r.status_code == 200 and r.text == "tls"
        # The wrong name fails verification: a connect failure, never plaintext.
        snap["clusters"][0]["policy"] = {**policy, "sni": "other.example"}
        proxy = proxies.start(snap)
        r = httpx.get(proxy.url() + "/", headers={"host": "db"}, timeout=5)
        assert r.status_code == 503 and r.headers["x-plait-response-flags"] == "UF"
    finally:
        server.shutdown()


def test_disable_sends_plaintext_even_to_an_endpoint_with_an_identity(
    proxies: Any, upstreams: Any
) -> None:
    app = upstreams.start("web")
    endpoint = {
        "address": "127.0.0.1",
        "port": app.port,
        "identity": "spiffe://cluster.local/ns/default/sa/web",
    }
    snap = {
        "clusters": [
            {
                "name": "web",
                "ports": [80],
                "endpoints": [endpoint],
                "policy": {"tls_mode": "DISABLE"},
            }
        ]
    }
    proxy = proxies.start(snap)
    r = httpx.get(proxy.url() + "/x", headers={"host": "web"}, timeout=5)
    assert r.status_code == 200 and r.json()["server"] == "web"
