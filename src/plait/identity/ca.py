"""The mesh's certificate authority: a root it made (or an operator's CA), SVIDs, root rotation.

Theory of operation. A CA made by `create()` keeps its roots in `data_dir`::

    ca.json               trust domain and the root table below (written atomically, 0600)
    roots/<sha256>.pem    each trusted root certificate (0644)
    roots/<sha256>.key    its private key (PKCS#8, 0600; the directories are 0700)

Every root in the table is in the trust bundle, in one of three states; these transitions are
the whole state machine (anything else raises CaError):

    operation            before                             after
    create()             -                                  A signing
    prepare_rotation()   A signing, no root pending         A signing, B pending
    activate_rotation()  A signing, B pending               A previous, B signing
    retire(A)            A previous, its leaves expired     A gone (files deleted)

A new root is trusted before anything it signs exists: the control plane pushes the bundle
after prepare and activates once proxies have it (`rotate()` does both at once, for a mesh
with no live traffic). Each root records `max_leaf_expiry`, the latest not_after it signed,
rounded up by LEAF_EXPIRY_SLACK so ca.json is rewritten at most about once an hour; retire
refuses a root while a leaf it signed may still be valid.

A CA from `from_files()` (an operator's root or intermediate) has no table: the bundle is its
certificate and the chain above it, and it is rotated by its operator (a new intermediate under
the same root needs no bundle change at all).
"""

from __future__ import annotations

import json
import secrets
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from plait.identity.csr import generate_key, key_to_pem, write_file_atomic
from plait.identity.spiffe import SpiffeId, validate_trust_domain

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_LEAF_TTL",
    "ROOT_LIFETIME",
    "CaError",
    "CertificateAuthority",
    "Clock",
    "CsrError",
    "RootInfo",
]

# 24 h: Istio's default workload certificate lifetime; short enough that revocation is rarely
# needed, long enough that a control-plane outage of hours does not take the mesh down.
DEFAULT_LEAF_TTL = timedelta(hours=24)
# 10 years: Istio's self-signed root lifetime; roots are rotated deliberately, not by expiry.
ROOT_LIFETIME = timedelta(days=3650)
# 60 s: certificates are valid from slightly before issuance, so a peer whose clock lags ours
# by up to a minute accepts a fresh certificate (Istio backdates by the same amount).
CLOCK_SKEW = timedelta(seconds=60)
# 1 h: granularity of the recorded max leaf expiry; retire waits at most this much longer.
LEAF_EXPIRY_SLACK = timedelta(hours=1)
# 2048 bits: the smallest RSA key accepted in a CSR (NIST SP 800-131A).
MIN_RSA_BITS = 2048

STATE_FILE = "ca.json"
ROOTS_DIR = "roots"

Clock = Callable[[], datetime]
CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


class CaError(Exception):
    """The CA cannot do what was asked: bad files, wrong state, or a refused retirement."""


class CsrError(ValueError):
    """A certificate signing request is malformed, badly signed, or has an unacceptable key."""


@dataclass(frozen=True, slots=True)
class RootInfo:
    """A trusted root as `plait status` shows it."""

    fingerprint: str  # SHA-256 of the DER certificate, lower-case hex
    state: str  # "pending" | "signing" | "previous"
    not_after: datetime
    max_leaf_expiry: datetime | None


@dataclass(slots=True)
class _Root:
    cert: x509.Certificate
    key: CaKey
    state: str
    max_leaf_expiry: datetime | None = None

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.cert)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _hash_for(key: CaKey) -> hashes.HashAlgorithm | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None  # Ed25519 signs the message itself
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()  # match the hash strength to P-384/P-521 (RFC 5480 section 4)
    return hashes.SHA256()


def _ski(cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _new_root(now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed ECDSA P-256 root; the random CN suffix tells rotated roots apart."""
    key = generate_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "plait"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"plait root CA {secrets.token_hex(4)}"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,  # ECDHE-only suites: the key never encrypts (RFC 8446, 5246)
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _serial() -> int:
    """A random positive 128-bit serial (CA/B Forum asks for at least 64 random bits)."""
    while not (serial := secrets.randbits(128)):
        pass
    return serial


def _check_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise CsrError(f"malformed CSR: {exc}") from None
    if not csr.is_signature_valid:
        raise CsrError("CSR signature does not verify: the sender does not hold the key")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise CsrError(f"CSR key curve {key.curve.name} is not P-256 or P-384")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrError(f"CSR RSA key has {key.key_size} bits, fewer than {MIN_RSA_BITS}")
    else:
        raise CsrError(f"CSR key type {type(key).__name__} is not ECDSA or RSA")
    return csr


def _load_key(path: Path) -> CaKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    ):
        raise CaError(f"{path}: unsupported CA key type {type(key).__name__}")
    return key


def _same_key(cert: x509.Certificate, key: CaKey) -> bool:
    return cert.public_key() == key.public_key()


class CertificateAuthority:
    """Signs workload SVIDs and owns the trust bundle; not shared by several processes.

    Methods are thread-safe (one lock) so a control plane may sign in a worker thread.
    """

    def __init__(
        self,
        trust_domain: str,
        *,
        roots: list[_Root] | None = None,
        operator: tuple[x509.Certificate, CaKey, list[x509.Certificate]] | None = None,
        data_dir: Path | None = None,
        clock: Clock = _utcnow,
    ) -> None:
        """Use create(), load(), load_or_create() or from_files(), not this."""
        self.trust_domain = validate_trust_domain(trust_domain)
        self._roots = roots or []
        self._operator = operator
        self._data_dir = data_dir
        self._clock = clock
        self._lock = threading.RLock()

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls, data_dir: Path, trust_domain: str = "cluster.local", *, clock: Clock = _utcnow
    ) -> CertificateAuthority:
        """Makes a new root in `data_dir`; refuses to overwrite an existing CA there."""
        data_dir = Path(data_dir)
        if (data_dir / STATE_FILE).exists():
            raise CaError(f"{data_dir / STATE_FILE} exists: refusing to replace a CA")
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (data_dir / ROOTS_DIR).mkdir(mode=0o700, exist_ok=True)
        ca = cls(trust_domain, data_dir=data_dir, clock=clock)
        with ca._lock:
            ca._add_root("signing")
        return ca

    @classmethod
    def load(cls, data_dir: Path, *, clock: Clock = _utcnow) -> CertificateAuthority:
        """Loads a CA made by create() from `data_dir`."""
        data_dir = Path(data_dir)
        try:
            state = json.loads((data_dir / STATE_FILE).read_text())
            roots = [cls._load_root(data_dir, entry) for entry in state["roots"]]
            trust_domain = state["trust_domain"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CaError(f"cannot load the CA from {data_dir}: {exc}") from None
        states = [r.state for r in roots]
        if states.count("signing") != 1 or states.count("pending") > 1:
            raise CaError(f"{data_dir / STATE_FILE}: needs one signing root, at most one pending")
        return cls(trust_domain, roots=roots, data_dir=data_dir, clock=clock)

    @classmethod
    def load_or_create(
        cls, data_dir: Path, trust_domain: str = "cluster.local", *, clock: Clock = _utcnow
    ) -> CertificateAuthority:
        """The control plane's start-up: the CA in `data_dir`, made at first start."""
        if not (Path(data_dir) / STATE_FILE).exists():
            return cls.create(data_dir, trust_domain, clock=clock)
        ca = cls.load(data_dir, clock=clock)
        if ca.trust_domain != trust_domain:
            raise CaError(f"the CA in {data_dir} is for {ca.trust_domain!r}, not {trust_domain!r}")
        return ca

    @classmethod
    def from_files(
        cls,
        cert_path: Path,
        key_path: Path,
        chain_path: Path | None = None,
        *,
        trust_domain: str = "cluster.local",
        clock: Clock = _utcnow,
    ) -> CertificateAuthority:
        """An operator's CA (`--ca-cert/--ca-key [--ca-chain]`): a root, or an intermediate
        with the chain above it (extra certificates after the first in `cert_path` count too).
        """
        try:
            certs = x509.load_pem_x509_certificates(Path(cert_path).read_bytes())
            chain = (
                x509.load_pem_x509_certificates(Path(chain_path).read_bytes()) if chain_path else []
            )
            key = _load_key(Path(key_path))
        except (OSError, ValueError) as exc:
            raise CaError(f"cannot load the operator CA: {exc}") from None
        cert, chain = certs[0], certs[1:] + chain
        if not _same_key(cert, key):
            raise CaError(f"{key_path} is not the private key of {cert_path}")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise CaError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE)")
        return cls(trust_domain, operator=(cert, key, chain), clock=clock)

    @staticmethod
    def _load_root(data_dir: Path, entry: dict[str, Any]) -> _Root:
        fp, state = entry["fingerprint"], entry["state"]
        if state not in ("pending", "signing", "previous"):
            raise ValueError(f"root {fp} has unknown state {state!r}")
        cert = x509.load_pem_x509_certificate((data_dir / ROOTS_DIR / f"{fp}.pem").read_bytes())
        key_path = data_dir / ROOTS_DIR / f"{fp}.key"
        if key_path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(f"{key_path} is accessible by group or others: chmod 600 it")
        key = _load_key(key_path)
        if _fingerprint(cert) != fp or not _same_key(cert, key):
            raise ValueError(f"root {fp}: certificate or key does not match its name")
        expiry = entry.get("max_leaf_expiry")
        return _Root(cert, key, state, datetime.fromisoformat(expiry) if expiry else None)

    # -- signing --------------------------------------------------------------------------

    def trust_bundle_pem(self) -> bytes:
        """Every certificate a peer must trust: all roots (pending, signing, previous)."""
        with self._lock:
            if self._operator:
                cert, _, chain = self._operator
                return _pem([cert, *chain])
            return _pem([r.cert for r in self._roots])

    def sign_csr(
        self, csr_pem: bytes, spiffe_id: SpiffeId, ttl: timedelta = DEFAULT_LEAF_TTL
    ) -> bytes:
        """Issues an X.509-SVID for `spiffe_id` over the CSR's key; returns leaf + intermediates.

        The identity comes only from `spiffe_id` (which the caller authenticated); SANs and
        subject in the CSR are ignored. Raises CsrError for a bad CSR, CaError if expired.
        """
        if spiffe_id.trust_domain != self.trust_domain:
            raise CaError(f"{spiffe_id} is outside the trust domain {self.trust_domain}")
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        csr = _check_csr(csr_pem)
        with self._lock:
            issuer, key, intermediates, ca_not_after = self._signer()
            now = self._clock()
            not_after = min(now + ttl, ca_not_after)  # a leaf never outlives its chain
            if not_after <= now:
                raise CaError("the signing CA certificate has expired")
            leaf = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))  # identity is the SAN (X509-SVID spec section 2)
                .issuer_name(issuer.subject)
                .public_key(csr.public_key())
                .serial_number(_serial())
                .not_valid_before(now - CLOCK_SKEW)
                .not_valid_after(not_after)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(_key_usage(cert_sign=False), critical=True)
                .add_extension(
                    x509.ExtendedKeyUsage(
                        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                    ),
                    critical=False,
                )
                # critical: the subject is empty (RFC 5280 section 4.2.1.6)
                .add_extension(
                    x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
                    critical=True,
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False
                )
                .add_extension(_ski(issuer), critical=False)
                .sign(key, _hash_for(key))  # type: ignore[arg-type]
            )
            self._record_leaf(not_after)
        return _pem([leaf, *intermediates])

    def _signer(self) -> tuple[x509.Certificate, CaKey, list[x509.Certificate], datetime]:
        """The signing certificate, its key, the intermediates a leaf's chain carries, and
        when the first certificate of the chain expires."""
        if self._operator:
            cert, key, chain = self._operator
            intermediates = [c for c in [cert, *chain] if c.subject != c.issuer]
            return cert, key, intermediates, min(c.not_valid_after_utc for c in [cert, *chain])
        root = self._root_in("signing")
        assert root is not None, "a managed CA always has a signing root"
        return root.cert, root.key, [], root.cert.not_valid_after_utc

    def _record_leaf(self, not_after: datetime) -> None:
        root = self._root_in("signing") if not self._operator else None
        if root and (root.max_leaf_expiry is None or not_after > root.max_leaf_expiry):
            root.max_leaf_expiry = min(not_after + LEAF_EXPIRY_SLACK, root.cert.not_valid_after_utc)
            self._save()

    # -- rotation -------------------------------------------------------------------------

    def roots(self) -> list[RootInfo]:
        """The trusted roots, oldest first (an operator CA: its certificate, as signing)."""
        with self._lock:
            if self._operator:
                cert = self._operator[0]
                return [RootInfo(_fingerprint(cert), "signing", cert.not_valid_after_utc, None)]
            return [
                RootInfo(r.fingerprint, r.state, r.cert.not_valid_after_utc, r.max_leaf_expiry)
                for r in self._roots
            ]

    def prepare_rotation(self) -> str:
        """Makes a new root and adds it to the bundle without signing with it; its fingerprint."""
        with self._lock:
            self._check_managed("prepare a rotation")
            if self._root_in("pending"):
                raise CaError("a rotation is already prepared: activate it first")
            return self._add_root("pending")

    def activate_rotation(self) -> str:
        """Switches signing to the prepared root (the old one stays trusted); its fingerprint."""
        with self._lock:
            self._check_managed("activate a rotation")
            pending, signing = self._root_in("pending"), self._root_in("signing")
            if pending is None or signing is None:
                raise CaError("no rotation is prepared: call prepare_rotation() first")
            signing.state, pending.state = "previous", "signing"
            self._save_or_undo(lambda: self._set_states(signing, "signing", pending, "pending"))
            return pending.fingerprint

    def rotate(self) -> str:
        """prepare_rotation() and activate_rotation() at once: only for a mesh without traffic,
        since peers that have not yet received the new bundle reject the new root's leaves."""
        with self._lock:
            self.prepare_rotation()
            return self.activate_rotation()

    def retire(self, fingerprint: str) -> None:
        """Drops a previous root from the bundle and deletes it, once its leaves have expired."""
        with self._lock:
            self._check_managed("retire a root")
            root = next((r for r in self._roots if r.fingerprint == fingerprint), None)
            if root is None:
                raise CaError(f"no trusted root has fingerprint {fingerprint}")
            if root.state != "previous":
                raise CaError(f"root {fingerprint} is {root.state}: only a previous root retires")
            now = self._clock()
            if root.max_leaf_expiry is not None and now < root.max_leaf_expiry:
                raise CaError(
                    f"root {fingerprint} may have certificates valid until "
                    f"{root.max_leaf_expiry.isoformat()}: retire it after that"
                )
            index = self._roots.index(root)
            self._roots.remove(root)
            # the commit point: the files below are garbage from here on
            self._save_or_undo(lambda: self._roots.insert(index, root))
            assert self._data_dir is not None
            for suffix in (".key", ".pem"):
                (self._data_dir / ROOTS_DIR / f"{fingerprint}{suffix}").unlink(missing_ok=True)

    def _check_managed(self, action: str) -> None:
        if self._operator:
            raise CaError(f"cannot {action} of an operator-provided CA: its operator rotates it")

    def _root_in(self, state: str) -> _Root | None:
        return next((r for r in self._roots if r.state == state), None)

    def _add_root(self, state: str) -> str:
        assert self._data_dir is not None
        cert, key = _new_root(self._clock())
        root = _Root(cert, key, state)
        roots_dir = self._data_dir / ROOTS_DIR
        write_file_atomic(roots_dir / f"{root.fingerprint}.key", key_to_pem(key), 0o600)
        write_file_atomic(roots_dir / f"{root.fingerprint}.pem", _pem([cert]), 0o644)
        self._roots.append(root)
        # the commit point: before it, the new files are ignored
        self._save_or_undo(lambda: self._roots.remove(root))
        return root.fingerprint

    @staticmethod
    def _set_states(a: _Root, a_state: str, b: _Root, b_state: str) -> None:
        a.state, b.state = a_state, b_state

    def _save_or_undo(self, undo: Callable[[], None]) -> None:
        """Persists the table; if that fails, `undo` restores the in-memory one to match disk."""
        try:
            self._save()
        except BaseException:
            undo()
            raise

    def _save(self) -> None:
        assert self._data_dir is not None
        state = {
            "version": 1,
            "trust_domain": self.trust_domain,
            "roots": [
                {
                    "fingerprint": r.fingerprint,
                    "state": r.state,
                    "max_leaf_expiry": r.max_leaf_expiry.isoformat() if r.max_leaf_expiry else None,
                }
                for r in self._roots
            ],
        }
        data = json.dumps(state, indent=2).encode() + b"\n"
        write_file_atomic(self._data_dir / STATE_FILE, data, 0o600)
