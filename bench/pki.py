"""mTLS material for the Envoy and HAProxy pairs, from plait's own CA.

Every pair in the benchmark presents the same kind of certificate plait's proxies get: an
X.509-SVID (ECDSA P-256, one URI SAN `spiffe://cluster.local/ns/default/sa/<account>`)
signed by a `plait.identity.ca.CertificateAuthority`, so the handshakes cost the same.
Files are written once per run under the run's temporary directory: `<account>.crt`
(leaf + intermediates), `<account>.key` (0600), `<account>.pem` (both, for HAProxy, which
wants certificate and key in one file) and `bundle.pem` (the trust bundle).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from plait.identity.ca import CertificateAuthority
from plait.identity.csr import generate_key, key_to_pem, make_csr
from plait.identity.spiffe import SpiffeId

__all__ = ["Pki", "Svid"]


@dataclass(frozen=True)
class Svid:
    """One workload's certificate files."""

    spiffe_id: str
    cert: Path  # leaf + intermediates
    key: Path
    combined: Path  # cert chain then key: HAProxy's `crt` format


class Pki:
    """Issues SVIDs from a CA (a new one in `directory/ca`, or the one given)."""

    def __init__(self, directory: Path, ca: CertificateAuthority | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = ca or CertificateAuthority.create(directory / "ca")
        self.bundle = directory / "bundle.pem"
        self.bundle.write_bytes(self.ca.trust_bundle_pem())
        self._issued: dict[str, Svid] = {}

    def spiffe_id(self, account: str, namespace: str = "default") -> str:
        return str(SpiffeId(self.ca.trust_domain, namespace, account))

    def issue(self, account: str, namespace: str = "default") -> Svid:
        """The SVID of service account `account` (issued once, then reused)."""
        if account in self._issued:
            return self._issued[account]
        spiffe = SpiffeId(self.ca.trust_domain, namespace, account)
        key = generate_key()
        chain = self.ca.sign_csr(make_csr(key, spiffe), spiffe)
        key_pem = key_to_pem(key)
        svid = Svid(
            str(spiffe),
            self.directory / f"{account}.crt",
            self.directory / f"{account}.key",
            self.directory / f"{account}.pem",
        )
        svid.cert.write_bytes(chain)
        for path, data in ((svid.key, key_pem), (svid.combined, chain + key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        self._issued[account] = svid
        return svid
