"""The proxy's workload certificate: its private key, its SVID, the trust bundle, rotation.

The key is made here and never leaves this process (nor its state dir, mode 0600, kept so
that a proxy restarted while the control plane is down still has an identity). The agent
asks `csr()` for a signing request, installs what the control plane returns with
`install()`, and renews when `renew_at` passes: at about half the lifetime, with jitter so
a fleet started together does not renew together. Each renewal uses a new key. Listeners
and pools read `identity`, `server_context` and `client_context()`; a rotation changes
what new connections use and leaves established ones alone.
"""

from __future__ import annotations

import logging
import random
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from plait.identity.certinfo import first_pem_certificate, parse_der
from plait.identity.csr import key_and_csr_in_child, write_file_atomic
from plait.identity.spiffe import SpiffeId
from plait.identity.tls import Identity, RotatingServerContext

__all__ = ["CertificateManager"]

log = logging.getLogger("plait.proxy.certificates")

# Renew at 50 % of the lifetime +-10 %: the "about half, with jitter"; a day-long
# certificate then has 12 h of slack for a control-plane outage.
RENEW_FRACTION = 0.5
RENEW_JITTER = 0.1
# Start making the next key this long before the renewal is due (agents check every few s).
KEYGEN_LEAD = 60.0
_PLACEHOLDER = SpiffeId("cluster.local", "default", "unknown")


class CertificateManager:
    """Holds the current identity and what depends on it; owned by the proxy."""

    def __init__(self, state_dir: Path | None, rng: random.Random | None = None) -> None:
        self.state_dir = state_dir
        self._rng = rng or random.Random()
        self._pending_key_pem: bytes | None = None
        # The next renewal's key and CSR, made ahead by a worker thread (see csr()).
        self._next: tuple[bytes, bytes] | None = None
        self._next_maker: threading.Thread | None = None
        self.identity: Identity | None = None
        self.server: RotatingServerContext | None = None
        self._client: ssl.SSLContext | None = None
        self.renew_at = 0.0
        self.rotations = 0
        self.on_rotate: list[Callable[[Identity], None]] = []
        if state_dir is not None:
            self._load()

    # state on disk -------------------------------------------------------------------
    def _paths(self) -> tuple[Path, Path, Path]:
        assert self.state_dir is not None
        return (
            self.state_dir / "cert.pem",
            self.state_dir / "key.pem",
            self.state_dir / "bundle.pem",
        )

    def _load(self) -> None:
        cert, key, bundle = self._paths()
        try:
            identity = Identity.from_pem(cert.read_bytes(), key.read_bytes(), bundle.read_bytes())
        except (OSError, ValueError):
            return
        if identity.not_after.timestamp() > time.time():
            self._set(identity)
            log.info("loaded certificate %s (expires %s)", identity.spiffe_id, identity.not_after)

    def _save(self, identity: Identity) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        cert, key, bundle = self._paths()
        write_file_atomic(key, identity.key_pem, 0o600)
        write_file_atomic(cert, identity.cert_pem, 0o644)
        write_file_atomic(bundle, identity.bundle_pem, 0o644)

    # signing requests ----------------------------------------------------------------
    def csr(self, spiffe_id: SpiffeId | None = None) -> bytes:
        """A CSR over a fresh key (kept until the certificate for it is installed).

        Keys are made by a child process (plait.identity.csr); shortly before a renewal
        is due a worker thread makes the next one, so the renewal does not pause the event
        loop for the child's start-up. The CSR's SAN is only a hint (the CA decides the
        identity), so a key made ahead serves any request.
        """
        maker = self._next_maker
        if maker is not None:
            maker.join()
            self._next_maker = None
        made, self._next = self._next, None
        if made is None or spiffe_id is not None:
            made = key_and_csr_in_child(spiffe_id or _PLACEHOLDER)
        self._pending_key_pem, csr_pem = made
        return csr_pem

    def _make_next_key(self) -> None:
        if self._next_maker is not None or self._next is not None:
            return

        def make() -> None:
            try:
                self._next = key_and_csr_in_child(_PLACEHOLDER)
            except Exception:  # noqa: BLE001 - csr() then makes one in line
                log.warning("could not make the next key ahead of time", exc_info=True)

        self._next_maker = threading.Thread(target=make, name="plait-keygen", daemon=True)
        self._next_maker.start()

    def install(self, chain_pem: bytes, bundle_pem: bytes) -> Identity:
        """Adopt a certificate for the key of the last `csr()`; raises ValueError if it is not."""
        if self._pending_key_pem is None:
            raise ValueError("no signing request is pending")
        identity = Identity.from_pem(chain_pem, self._pending_key_pem, bundle_pem)
        self._pending_key_pem = None
        self._save(identity)
        self._set(identity, issued=time.time())
        return identity

    def _set(
        self, identity: Identity, issued: float | None = None, new_certificate: bool = True
    ) -> None:
        first = self.identity is None
        self.identity = identity
        if self.server is None:
            # plait-tcp: a framed TCP stream from a peer proxy (plait.proxy.tcp).
            self.server = RotatingServerContext(identity, alpn=("h2", "http/1.1", "plait-tcp"))
        else:
            self.server.update(identity)
        self._client = identity.client_context(alpn=("http/1.1",))
        if not new_certificate:
            return  # same certificate, new trust bundle: same renewal time, not a rotation
        # The lifetime counts from issuance (`issued`, just now for a certificate the control
        # plane sent): CAs backdate not_before for clock skew (ours by 60 s), which would pull
        # the renewal of a short-lived certificate into the past. A certificate loaded from disk
        # counts from not_before: earlier, so never later than its schedule.
        not_before, not_after = identity.not_before.timestamp(), identity.not_after.timestamp()
        start = not_before if issued is None else min(max(not_before, issued), not_after)
        fraction = RENEW_FRACTION + self._rng.uniform(-RENEW_JITTER, RENEW_JITTER)
        self.renew_at = start + (not_after - start) * fraction
        if not first:
            self.rotations += 1
        for callback in self.on_rotate:
            callback(identity)

    def update_bundle(self, bundle_pem: bytes) -> bool:
        """Trust a new bundle (CA rotation) with the same certificate; True if it changed."""
        identity = self.identity
        if identity is None or identity.bundle_pem == bundle_pem:
            return False
        updated = Identity.from_pem(identity.cert_pem, identity.key_pem, bundle_pem)
        self._save(updated)
        self._set(updated, new_certificate=False)
        return True

    def renew_now(self) -> None:
        """The control plane asked for a new certificate (a new root signs now)."""
        self.renew_at = 0.0

    # readers -------------------------------------------------------------------------
    def client_context(self) -> ssl.SSLContext | None:
        return self._client

    def needs_renewal(self, now: float | None = None) -> bool:
        now = now or time.time()
        if self.identity is not None and now >= self.renew_at - KEYGEN_LEAD:
            self._make_next_key()  # ready by the time the renewal's csr() asks for it
        return self.identity is None or now >= self.renew_at

    def status(self) -> dict[str, object]:
        identity = self.identity
        if identity is None:
            return {"spiffe_id": None}
        return {
            "spiffe_id": identity.spiffe_id,
            "serial": format(identity.serial, "x"),
            "not_before": identity.not_before.isoformat(),
            "not_after": identity.not_after.isoformat(),
            "renew_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.renew_at)),
            "rotations": self.rotations,
            "issuer_key_id": _authority_key_id(identity.cert_pem),
            "trusted_roots": identity.bundle_pem.count(b"-----BEGIN CERTIFICATE-----"),
        }


def _authority_key_id(cert_pem: bytes) -> str | None:
    """Which root signed the certificate (its key id): shows a CA rotation taking effect."""
    key_id = parse_der(first_pem_certificate(cert_pem)).authority_key_id
    return key_id.hex() if key_id else None
