"""TLS for mesh traffic: mutual TLS against the trust bundle, then the peer's SPIFFE ID.

OpenSSL verifies the chain, validity and key usage during the handshake; the ssl module has no
hook to check a URI SAN there, so hostname checking is off and verify_peer() must run right
after the handshake, before a byte of application data is sent or passed on.

Certificates and keys reach OpenSSL through files, since `SSLContext.load_cert_chain` takes
only paths: PEM bytes are written into a fresh private directory (0700, files 0600; on
/dev/shm when there is one, so a key never lands on a disk), loaded, and the directory is
removed before the call returns. Paths given by the caller are loaded as they are. Trust
bundles load from memory.

Rotation: an Identity is immutable and caches its contexts; a new certificate is a new
Identity. Clients pick `identity.client_context()` per new connection; a listener keeps one
RotatingServerContext, which hands each new handshake the current identity's context.
Established connections keep the context they were made with.
"""

from __future__ import annotations

import os
import shutil
import ssl
import tempfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from plait.identity.certinfo import first_pem_certificate, parse_der
from plait.identity.spiffe import peer_spiffe_id

__all__ = [
    "DEFAULT_ALPN",
    "Identity",
    "PeerVerificationError",
    "PemSource",
    "RotatingServerContext",
    "client_context",
    "server_context",
    "verify_peer",
]

PemSource = bytes | os.PathLike[str]  # PEM bytes, or the path of a PEM file

# h2 first: one multiplexed connection between proxies beats a pool of HTTP/1.1 ones.
DEFAULT_ALPN = ("h2", "http/1.1")
# TLS 1.2 only with forward secrecy and AEAD (Mozilla "intermediate"); TLS 1.3 suites are all
# AEAD with forward secrecy, and OpenSSL's defaults for them stay.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class PeerVerificationError(Exception):
    """The peer's certificate chained to the bundle but is not an acceptable identity.

    `reason` is a short label for metrics: no_certificate, no_spiffe_id or unexpected_peer.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def server_context(
    cert_chain_pem: PemSource,
    key_pem: PemSource,
    bundle_pem: PemSource,
    *,
    require_client_cert: bool = True,
    alpn: Sequence[str] = DEFAULT_ALPN,
) -> ssl.SSLContext:
    """An inbound context; without `require_client_cert` a client certificate is optional
    (still verified when sent), for listeners that also serve callers outside the mesh."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # no session tickets: proxies pool long-lived connections, so resumption saves little,
    # while each ticket costs a write per handshake and would re-admit a peer without
    # checking its certificate against a bundle that may have changed since
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    _configure(ctx, cert_chain_pem, key_pem, bundle_pem, alpn)
    return ctx


def client_context(
    cert_chain_pem: PemSource,
    key_pem: PemSource,
    bundle_pem: PemSource,
    *,
    alpn: Sequence[str] = DEFAULT_ALPN,
) -> ssl.SSLContext:
    """An outbound context: verifies the server's chain, presents our certificate; the
    server's SPIFFE ID is checked by verify_peer(), not by hostname."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False  # SPIFFE IDs are URIs, not host names: verify_peer() checks
    ctx.verify_mode = ssl.CERT_REQUIRED
    _configure(ctx, cert_chain_pem, key_pem, bundle_pem, alpn)
    return ctx


def _configure(
    ctx: ssl.SSLContext,
    cert_chain: PemSource,
    key: PemSource,
    bundle: PemSource,
    alpn: Sequence[str],
) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # 1.3 is preferred: OpenSSL picks the highest
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # the bundle's certificates are the trust anchors, whether roots or intermediates (SPIFFE
    # bundle semantics; Python 3.13 sets this flag by default too)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if isinstance(bundle, bytes):
        if b"-----BEGIN CERTIFICATE-----" not in bundle:
            raise ValueError("the trust bundle holds no PEM certificate")
        ctx.load_verify_locations(cadata=bundle.decode("ascii"))
    else:
        ctx.load_verify_locations(cafile=os.fspath(bundle))
    with _pem_files(cert_chain, key) as (cert_path, key_path):
        ctx.load_cert_chain(cert_path, key_path)
    ctx.set_alpn_protocols(list(alpn))


@contextmanager
def _pem_files(cert_chain: PemSource, key: PemSource) -> Iterator[tuple[str, str]]:
    """Paths for load_cert_chain; PEM bytes live in a private directory for the duration."""
    if not isinstance(cert_chain, bytes) and not isinstance(key, bytes):
        yield os.fspath(cert_chain), os.fspath(key)
        return
    ram = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None
    directory = tempfile.mkdtemp(prefix="plait-tls-", dir=ram)  # mode 0700
    try:
        paths = []
        for name, source in (("cert.pem", cert_chain), ("key.pem", key)):
            if not isinstance(source, bytes):
                paths.append(os.fspath(source))
                continue
            path = os.path.join(directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(source)
            paths.append(path)
        yield paths[0], paths[1]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def verify_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: Collection[str] | None) -> str:
    """The peer's SPIFFE ID after a verified handshake; raises PeerVerificationError if it has
    none or (when `expected` is given) it is not one of `expected`."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        side = "client" if ssl_object.server_side else "server"
        raise PeerVerificationError("no_certificate", f"no {side} certificate")
    spiffe_id = peer_spiffe_id(der)
    if spiffe_id is None:
        raise PeerVerificationError(
            "no_spiffe_id", "certificate has no SPIFFE ID (exactly one spiffe:// URI SAN)"
        )
    if expected is not None and spiffe_id not in expected:
        raise PeerVerificationError(
            "unexpected_peer", f"peer {spiffe_id} is not one of {', '.join(sorted(expected))}"
        )
    return spiffe_id


@dataclass(frozen=True)
class Identity:
    """A workload's certificate, key and trust bundle, with its TLS contexts made once.

    `cert_pem` is the leaf followed by any intermediates. Build it with from_pem().
    """

    spiffe_id: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    bundle_pem: bytes
    not_before: datetime
    not_after: datetime
    serial: int
    _contexts: dict[tuple[object, ...], ssl.SSLContext] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes, bundle_pem: bytes) -> Identity:
        """Reads the leaf's SPIFFE ID, validity and serial; ValueError if the key is not the
        leaf's or the leaf has no SPIFFE ID."""
        leaf_der = first_pem_certificate(cert_pem)
        leaf = parse_der(leaf_der)
        spiffe_id = peer_spiffe_id(leaf_der)
        if spiffe_id is None:
            raise ValueError("the certificate has no SPIFFE ID")
        # OpenSSL checks that the key is the leaf's and that the bundle parses (without
        # importing `cryptography` into the proxy: see certinfo).
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            with _pem_files(cert_pem, key_pem) as (cert_path, key_path):
                probe.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise ValueError(
                f"the private key does not belong to the certificate ({exc})"
            ) from None
        if b"-----BEGIN CERTIFICATE-----" not in bundle_pem:
            raise ValueError("the trust bundle holds no PEM certificate")
        try:
            probe.load_verify_locations(cadata=bundle_pem.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed trust bundle ({exc})") from None
        return cls(
            spiffe_id,
            cert_pem,
            key_pem,
            bundle_pem,
            leaf.not_before,
            leaf.not_after,
            leaf.serial,
        )

    def server_context(
        self, *, require_client_cert: bool = True, alpn: Sequence[str] = DEFAULT_ALPN
    ) -> ssl.SSLContext:
        """The inbound context for this identity (made on first use, then shared)."""
        key = ("server", require_client_cert, tuple(alpn))
        if key not in self._contexts:
            self._contexts[key] = server_context(
                self.cert_pem,
                self.key_pem,
                self.bundle_pem,
                require_client_cert=require_client_cert,
                alpn=alpn,
            )
        return self._contexts[key]

    def client_context(self, *, alpn: Sequence[str] = DEFAULT_ALPN) -> ssl.SSLContext:
        """The outbound context for this identity (made on first use, then shared)."""
        key = ("client", tuple(alpn))
        if key not in self._contexts:
            self._contexts[key] = client_context(
                self.cert_pem, self.key_pem, self.bundle_pem, alpn=alpn
            )
        return self._contexts[key]


class RotatingServerContext:
    """One SSLContext for a listener whose certificate and bundle follow update().

    Each handshake switches to the current identity's context in OpenSSL's server-name
    callback (before certificates are chosen or verified), so a rotation reaches new
    connections without rebinding the listener. Not thread-safe against update(); a listener
    and its agent share one event loop.
    """

    def __init__(
        self,
        identity: Identity,
        *,
        require_client_cert: bool = True,
        alpn: Sequence[str] = DEFAULT_ALPN,
    ) -> None:
        self._require_client_cert = require_client_cert
        self._alpn = tuple(alpn)
        self._identity = identity
        # a context of its own: the identity's cached one must not carry our callback
        self.context = server_context(
            identity.cert_pem,
            identity.key_pem,
            identity.bundle_pem,
            require_client_cert=require_client_cert,
            alpn=alpn,
        )
        self.context.sni_callback = self._switch

    @property
    def identity(self) -> Identity:
        """The identity new handshakes use."""
        return self._identity

    def update(self, identity: Identity) -> None:
        """Makes `identity` the one new handshakes use; its context is built here, not in a
        handshake, so a bad certificate fails the rotation rather than a connection."""
        self._context_of(identity)
        self._identity = identity

    def _context_of(self, identity: Identity) -> ssl.SSLContext:
        return identity.server_context(
            require_client_cert=self._require_client_cert, alpn=self._alpn
        )

    def _switch(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        ssl_object.context = self._context_of(self._identity)
