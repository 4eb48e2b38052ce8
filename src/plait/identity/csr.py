"""A workload's side of issuance: its private key, the CSR it sends, and safe key files.

Private keys are made where they are used and never leave that process: the proxy sends only
the CSR (public key + proof of possession) and writes its key, if at all, into its own
directory with mode 0600.

The proxy makes its key and CSR with `key_and_csr_in_child()`: a short-lived child process
(`python -m plait.identity.csr`) does the `cryptography` work, so the long-lived proxy never
imports that package (about 10 MiB of RSS for each sidecar, for a few milliseconds of work
a day). The key travels over a pipe between the two processes and nowhere else.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from plait.identity.spiffe import SpiffeId

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "generate_key",
    "key_and_csr_in_child",
    "key_to_pem",
    "load_key",
    "make_csr",
    "write_file_atomic",
]


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 key: what Istio and SPIRE issue, fast to sign and to verify in TLS."""
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM CSR for `spiffe_id` (requested as its URI SAN), signed by `key`.

    The CA decides the identity from the join token or the current certificate, not from
    this request: the SAN here documents what the proxy expects, nothing more.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

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
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Reads an unencrypted PEM EC private key; raises ValueError for anything else."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

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


_SEPARATOR = b"\n--\n"


def key_and_csr_in_child(spiffe_id: SpiffeId, timeout: float = 30.0) -> tuple[bytes, bytes]:
    """(key PEM, CSR PEM) for a fresh key, made by a child process (see the module doc).

    Blocks for the child's lifetime (about 0.2 s, mostly interpreter start): call it where a
    pause does not hold up traffic (start-up, or a worker thread).
    """
    done = subprocess.run(
        [sys.executable, "-m", "plait.identity.csr", str(spiffe_id)],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"key generation failed: {done.stderr.decode(errors='replace')}")
    key_pem, _, csr_pem = done.stdout.partition(_SEPARATOR)
    if not key_pem or not csr_pem:
        raise RuntimeError("key generation printed no key and CSR")
    return key_pem, csr_pem


def _main(argv: list[str]) -> int:
    key = generate_key()
    csr = make_csr(key, SpiffeId.parse(argv[0]))
    sys.stdout.buffer.write(key_to_pem(key) + _SEPARATOR + csr)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
