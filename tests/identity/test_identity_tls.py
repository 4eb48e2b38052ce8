"""Mutual TLS over real loopback sockets: what is accepted, what is refused, and rotation."""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
import threading
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from plait.identity.ca import CertificateAuthority
from plait.identity.csr import generate_key, key_to_pem, load_key, make_csr
from plait.identity.spiffe import SpiffeId
from plait.identity.tls import (
    Identity,
    PeerVerificationError,
    RotatingServerContext,
    client_context,
    verify_peer,
)

WEB = SpiffeId("cluster.local", "default", "web")
DB = SpiffeId("cluster.local", "default", "db")


def identity(
    ca: CertificateAuthority, spiffe_id: SpiffeId, bundle: bytes | None = None, **kw: Any
) -> Identity:
    key = generate_key()
    chain = ca.sign_csr(make_csr(key, spiffe_id), spiffe_id, **kw)
    return Identity.from_pem(chain, key_to_pem(key), bundle or ca.trust_bundle_pem())


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def web(ca: CertificateAuthority) -> Identity:
    return identity(ca, WEB)


@pytest.fixture(scope="module")
def db(ca: CertificateAuthority) -> Identity:
    return identity(ca, DB)


def _facts(tls: ssl.SSLSocket) -> dict[str, Any]:
    try:
        peer: object = verify_peer(tls, None)
    except PeerVerificationError as exc:
        peer = exc
    return {
        "version": tls.version(),
        "alpn": tls.selected_alpn_protocol(),
        "cipher": tls.cipher()[0] if tls.cipher() else None,
        "peer": peer,
    }


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One TLS connection over loopback TCP; what each side saw (or its "error")."""
    server: dict[str, Any] = {}
    client: dict[str, Any] = {}
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            conn, _ = listener.accept()
            conn.settimeout(5)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    server.update(_facts(tls))
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError) as exc:
                server["error"] = exc
                conn.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=5) as raw,
                client_ctx.wrap_socket(raw) as tls,
            ):
                client.update(_facts(tls))
                # with TLS 1.3 the server judges our certificate after our handshake ends
                client["data"] = tls.recv(2)
        except (ssl.SSLError, OSError) as exc:
            client["error"] = exc
        thread.join(5)
    return server, client


def test_mutual_tls_negotiates_tls13_and_h2_and_each_side_learns_the_other(
    web: Identity, db: Identity
) -> None:
    server, client = handshake(db.server_context(), web.client_context())
    assert server["version"] == client["version"] == "TLSv1.3"
    assert server["alpn"] == client["alpn"] == "h2"
    assert server["peer"] == str(WEB)
    assert client["peer"] == str(DB)
    assert client["data"] == b"ok"


def test_tls12_is_accepted_with_ecdhe_and_an_aead_cipher_only(web: Identity, db: Identity) -> None:
    tls12 = client_context(web.cert_pem, web.key_pem, web.bundle_pem, alpn=["http/1.1"])
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    server, client = handshake(db.server_context(), tls12)
    assert client["version"] == "TLSv1.2" and client["alpn"] == "http/1.1"
    assert client["cipher"].startswith("ECDHE-ECDSA-")
    assert "GCM" in client["cipher"] or "CHACHA20" in client["cipher"]
    assert server["peer"] == str(WEB)


def test_a_tls11_client_is_refused(db: Identity) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname, old.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # so the client really offers TLS 1.1
    server, client = handshake(db.server_context(), old)
    assert "UNSUPPORTED_PROTOCOL" in str(server["error"])
    assert "PROTOCOL_VERSION" in str(client["error"])


def test_a_client_certificate_from_another_ca_is_refused(
    tmp_path: Path, ca: CertificateAuthority, db: Identity
) -> None:
    other = CertificateAuthority.create(tmp_path)
    both = ca.trust_bundle_pem() + other.trust_bundle_pem()
    stranger = identity(other, WEB, bundle=both)  # trusts our server, but we do not trust it
    server, client = handshake(db.server_context(), stranger.client_context())
    assert isinstance(server["error"], ssl.SSLCertVerificationError)
    # OpenSSL completes the client's chain from its bundle, so the stranger root is sent along
    assert server["error"].verify_message in (
        "self-signed certificate in certificate chain",
        "unable to get local issuer certificate",
    )
    assert "error" in client


def test_an_expired_client_certificate_is_refused(tmp_path: Path, db: Identity) -> None:
    past = datetime.now(UTC) - timedelta(days=2)
    ca_in_the_past = CertificateAuthority.create(tmp_path, clock=lambda: past)
    old_ca = CertificateAuthority.load(tmp_path)  # the same root, today's clock
    assert old_ca.trust_bundle_pem() == ca_in_the_past.trust_bundle_pem()
    bundle = db.bundle_pem + ca_in_the_past.trust_bundle_pem()
    expired = identity(ca_in_the_past, WEB, bundle=bundle, ttl=timedelta(hours=1))
    server_identity = Identity.from_pem(db.cert_pem, db.key_pem, bundle)
    server, _ = handshake(server_identity.server_context(), expired.client_context())
    assert isinstance(server["error"], ssl.SSLCertVerificationError)
    assert server["error"].verify_message == "certificate has expired"


def test_a_client_without_certificate_is_refused_unless_optional(db: Identity) -> None:
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=db.bundle_pem.decode())
    server, client = handshake(db.server_context(), anonymous)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in str(server["error"])
    assert "error" in client

    server, client = handshake(db.server_context(require_client_cert=False), anonymous)
    assert isinstance(server["peer"], PeerVerificationError)
    assert str(server["peer"]) == "no client certificate"
    assert server["peer"].reason == "no_certificate"
    assert client["data"] == b"ok"


def test_verify_peer_refuses_an_unexpected_spiffe_id(web: Identity, db: Identity) -> None:
    seen: list[object] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with db.server_context().wrap_socket(conn, server_side=True) as tls:
            tls.sendall(b"ok")
            tls.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    with (
        socket.create_connection(listener.getsockname(), timeout=5) as raw,
        web.client_context().wrap_socket(raw) as tls,
    ):
        assert verify_peer(tls, {str(DB)}) == str(DB)
        with pytest.raises(PeerVerificationError) as info:
            verify_peer(tls, {"spiffe://cluster.local/ns/default/sa/ratings"})
        seen.append(info.value)
        tls.sendall(b"x")
    thread.join(5)
    listener.close()
    (error,) = seen
    assert isinstance(error, PeerVerificationError) and error.reason == "unexpected_peer"
    assert str(error) == (
        "peer spiffe://cluster.local/ns/default/sa/db is not one of "
        "spiffe://cluster.local/ns/default/sa/ratings"
    )


def _sign_with_root(
    data_dir: Path, ca: CertificateAuthority, builder: x509.CertificateBuilder
) -> x509.Certificate:
    """Signs with the CA's root key straight from its file, bypassing sign_csr's rules."""
    root_info = ca.roots()[0]
    key = load_key((data_dir / "roots" / f"{root_info.fingerprint}.key").read_bytes())
    root = x509.load_pem_x509_certificate(ca.trust_bundle_pem())
    now = datetime.now(UTC)
    return (
        builder.issuer_name(root.subject)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def test_a_chained_certificate_without_spiffe_id_is_named_by_verify_peer(
    tmp_path: Path, web: Identity
) -> None:
    ca = CertificateAuthority.create(tmp_path)
    key = generate_key()
    dns_only = _sign_with_root(
        tmp_path,
        ca,
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "db")]))
        .public_key(key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("db")]), critical=False),
    )
    bundle = ca.trust_bundle_pem() + web.bundle_pem
    server_ctx = Identity.from_pem(web.cert_pem, web.key_pem, bundle).server_context()
    client_ctx = client_context(
        dns_only.public_bytes(serialization.Encoding.PEM), key_to_pem(key), bundle
    )
    server, _ = handshake(server_ctx, client_ctx)
    assert isinstance(server["peer"], PeerVerificationError)
    assert server["peer"].reason == "no_spiffe_id"
    assert str(server["peer"]).startswith("certificate has no SPIFFE ID")


def test_leaves_of_an_operator_intermediate_pass_peers_trusting_only_the_root(
    tmp_path: Path,
) -> None:
    root_ca = CertificateAuthority.create(tmp_path / "root")
    int_key = generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mesh intermediate")])
    intermediate = _sign_with_root(
        tmp_path / "root",
        root_ca,
        x509.CertificateBuilder()
        .subject_name(name)
        .public_key(int_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        ),
    )
    (tmp_path / "int.pem").write_bytes(intermediate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "int.key").write_bytes(key_to_pem(int_key))
    (tmp_path / "root.pem").write_bytes(root_ca.trust_bundle_pem())
    ca = CertificateAuthority.from_files(
        tmp_path / "int.pem", tmp_path / "int.key", tmp_path / "root.pem"
    )
    root_only = root_ca.trust_bundle_pem()
    server, client = handshake(
        identity(ca, DB, bundle=root_only).server_context(),
        identity(ca, WEB, bundle=root_only).client_context(),
    )
    assert (server["peer"], client["peer"]) == (str(WEB), str(DB))


def test_leaves_of_old_and_new_roots_talk_during_a_rotation(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    ca.prepare_rotation()
    old = identity(ca, DB)  # signed by the old root, already holding the two-root bundle
    ca.activate_rotation()
    new = identity(ca, WEB)
    server, client = handshake(old.server_context(), new.client_context())
    assert (server["peer"], client["peer"]) == (str(WEB), str(DB))
    server, client = handshake(new.server_context(), old.client_context())
    assert (server["peer"], client["peer"]) == (str(DB), str(WEB))


def test_identity_reads_its_certificate_and_caches_contexts(
    monkeypatch: pytest.MonkeyPatch, ca: CertificateAuthority, web: Identity, db: Identity
) -> None:
    leaf = x509.load_pem_x509_certificates(web.cert_pem)[0]
    assert web.spiffe_id == str(WEB)
    assert (web.serial, web.not_after) == (leaf.serial_number, leaf.not_valid_after_utc)
    assert web.not_after - web.not_before == timedelta(hours=24, seconds=60)
    assert "PRIVATE" not in repr(web)
    with pytest.raises(ValueError, match="does not belong to the certificate"):
        Identity.from_pem(web.cert_pem, db.key_pem, web.bundle_pem)

    made: list[str] = []
    real_mkdtemp = tempfile.mkdtemp

    def recording_mkdtemp(**kw: Any) -> str:
        made.append(real_mkdtemp(**kw))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    fresh = identity(ca, WEB)
    assert fresh.server_context() is fresh.server_context()
    assert fresh.client_context() is fresh.client_context()
    # one key check in from_pem, then one per context made; every key file is removed after
    assert len(made) == 3 and not any(Path(d).exists() for d in made)


def test_a_rotating_listener_serves_new_certificates_and_keeps_old_connections(
    ca: CertificateAuthority, web: Identity
) -> None:
    async def scenario() -> None:
        first = identity(ca, DB)
        rotating = RotatingServerContext(first)

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            verify_peer(writer.get_extra_info("ssl_object"), {str(WEB)})
            while data := await reader.read(100):
                writer.write(data)
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=rotating.context)
        address = server.sockets[0].getsockname()

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
            reader, writer = await asyncio.open_connection(*address, ssl=web.client_context())
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            return reader, writer, x509.load_der_x509_certificate(der).serial_number

        async def roundtrip(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bytes:
            w.write(b"ping")
            return await r.readexactly(4)

        async with server:
            r1, w1, serial1 = await connect()
            assert serial1 == first.serial and await roundtrip(r1, w1) == b"ping"
            second = identity(ca, DB)
            rotating.update(second)
            assert rotating.identity is second
            r2, w2, serial2 = await connect()
            assert serial2 == second.serial and await roundtrip(r2, w2) == b"ping"
            assert await roundtrip(r1, w1) == b"ping"  # the old connection is untouched
            for w in (w1, w2):
                w.close()
                await w.wait_closed()

    asyncio.run(asyncio.wait_for(scenario(), 10))
