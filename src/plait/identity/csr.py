"""A workload's side of issuance: its private key, the CSR it sends, and safe key files.

Private keys are made where they are used and never leave that process: the proxy sends only
the CSR (public key + proof of possession) and writes its key, if at all, into its own
directory with mode 0600.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from plait.identity.spiffe import SpiffeId

__all__ = ["generate_key", "key_to_pem", "load_key", "make_csr", "write_file_atomic"]


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 key: what Istio and SPIRE issue, fast to sign and to verify in TLS."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM CSR for `spiffe_id` (requested as its URI SAN), signed by `key`.

    The CA decides the identity from the join token or the current certificate, not from
    this request: the SAN here documents what the proxy expects, nothing more.
    """
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(san, critical=True)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: the file's 0600 mode protects it, as for Envoy's and SPIRE's."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Reads an unencrypted PEM EC private key; raises ValueError for anything else."""
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"expected an EC private key, got {type(key).__name__}")
    return key


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Writes `data` to `path` with exactly `mode`, so readers see the old or the new file whole.

    The temporary file is created with `mode` (never wider, whatever the umask), fsynced and
    renamed over `path`; the directory is fsynced so the rename survives a crash.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
        os.fsync(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
