"""The CA: root and SVID fields as specified, operator CAs, and the root-rotation state machine."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from plait.identity.ca import (
    CLOCK_SKEW,
    DEFAULT_LEAF_TTL,
    ROOT_LIFETIME,
    CaError,
    CertificateAuthority,
    CsrError,
)
from plait.identity.csr import (
    generate_key,
    key_to_pem,
    load_key,
    make_csr,
    write_file_atomic,
)
from plait.identity.spiffe import SpiffeId

WEB = SpiffeId("cluster.local", "default", "web")


class Clock:
    """A settable clock for the CA."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


def issue(ca: CertificateAuthority, spiffe_id: SpiffeId = WEB, **kwargs: timedelta) -> bytes:
    return ca.sign_csr(make_csr(generate_key(), spiffe_id), spiffe_id, **kwargs)


def certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def verify(chain_pem: bytes, bundle_pem: bytes, at: datetime | None = None) -> list[str]:
    """Verifies a leaf chain against a bundle as an RFC 5280 client certificate; its URI SANs."""
    leaf, *intermediates = certs(chain_pem)
    verifier = (
        PolicyBuilder()
        .store(Store(certs(bundle_pem)))
        .time(at or datetime.now(UTC))
        .build_client_verifier()
    )
    verified = verifier.verify(leaf, intermediates)
    return [
        s.value for s in verified.subjects or [] if isinstance(s, x509.UniformResourceIdentifier)
    ]


def ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


# -- the root and its files ---------------------------------------------------------------


def test_created_root_is_a_p256_ca_for_ten_years_with_private_key_file(tmp_path: Path) -> None:
    clock = Clock()
    ca = CertificateAuthority.create(tmp_path / "ca", clock=clock)
    (root,) = certs(ca.trust_bundle_pem())
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey)
    assert root.public_key().curve.name == "secp256r1"
    assert root.subject == root.issuer
    assert root.not_valid_after_utc - root.not_valid_before_utc == ROOT_LIFETIME + CLOCK_SKEW
    bc = ext(root, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = ext(root, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = ext(root, x509.SubjectKeyIdentifier).value.digest
    assert ext(root, x509.AuthorityKeyIdentifier).value.key_identifier == ski

    fingerprint = ca.roots()[0].fingerprint
    key_file = tmp_path / "ca" / "roots" / f"{fingerprint}.key"
    cert_file = tmp_path / "ca" / "roots" / f"{fingerprint}.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert_file.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "ca" / "roots").stat().st_mode) == 0o700
    assert load_key(key_file.read_bytes()).public_key() == root.public_key()
    assert not [p for p in (tmp_path / "ca").rglob(".*")]  # no temporary files left


def test_create_refuses_to_replace_and_load_or_create_reuses(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path, "mesh.example")
    with pytest.raises(CaError, match="refusing to replace"):
        CertificateAuthority.create(tmp_path)
    again = CertificateAuthority.load_or_create(tmp_path, "mesh.example")
    assert again.trust_bundle_pem() == ca.trust_bundle_pem()
    with pytest.raises(CaError, match="is for 'mesh.example', not 'cluster.local'"):
        CertificateAuthority.load_or_create(tmp_path, "cluster.local")


def test_load_refuses_a_root_key_others_can_read(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    (tmp_path / "roots" / f"{ca.roots()[0].fingerprint}.key").chmod(0o644)
    with pytest.raises(CaError, match="accessible by group or others"):
        CertificateAuthority.load(tmp_path)


def test_key_files_are_written_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_file_atomic(tmp_path / "k.pem", key_to_pem(generate_key()), 0o600)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600


# -- the SVID -----------------------------------------------------------------------------


def test_svid_has_exactly_the_specified_fields(tmp_path: Path) -> None:
    clock = Clock()
    ca = CertificateAuthority.create(tmp_path, clock=clock)
    key = generate_key()
    (leaf,) = certs(ca.sign_csr(make_csr(key, WEB), WEB))
    (root,) = certs(ca.trust_bundle_pem())

    assert leaf.public_key() == key.public_key()
    assert leaf.subject == x509.Name([])
    assert leaf.issuer == root.subject
    san = ext(leaf, x509.SubjectAlternativeName)
    assert san.critical  # the subject is empty (RFC 5280 4.2.1.6)
    assert list(san.value) == [x509.UniformResourceIdentifier(str(WEB))]
    ku = ext(leaf, x509.KeyUsage)
    assert ku.critical
    assert ku.value == x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    eku = ext(leaf, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    bc = ext(leaf, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    root_ski = ext(root, x509.SubjectKeyIdentifier).value.digest
    assert ext(leaf, x509.AuthorityKeyIdentifier).value.key_identifier == root_ski

    assert leaf.not_valid_before_utc == clock.now - timedelta(seconds=60)
    assert (
        leaf.not_valid_after_utc == clock.now + timedelta(hours=24) == clock.now + DEFAULT_LEAF_TTL
    )
    assert verify(ca.sign_csr(make_csr(key, WEB), WEB), ca.trust_bundle_pem()) == [str(WEB)]


def test_serials_are_random_positive_and_at_most_128_bits(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    serials = {certs(issue(ca))[0].serial_number for _ in range(8)}
    assert len(serials) == 8
    assert all(0 < s < 2**128 for s in serials)
    assert max(serials).bit_length() > 100  # random, not a counter


def test_csr_sans_are_ignored_the_ca_signs_only_the_id_it_was_told(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    key = generate_key()
    forged = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin")]))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(
                        "spiffe://cluster.local/ns/kube-system/sa/admin"
                    ),
                    x509.DNSName("evil.example"),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    (leaf,) = certs(ca.sign_csr(forged, WEB))
    assert leaf.subject == x509.Name([])
    assert list(ext(leaf, x509.SubjectAlternativeName).value) == [
        x509.UniformResourceIdentifier(str(WEB))
    ]
    assert leaf.public_key() == key.public_key()  # the CSR's key is what is signed


def test_csr_with_a_bad_signature_or_weak_key_is_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(generate_key(), WEB)).public_bytes(
            serialization.Encoding.DER
        )
    )
    der[-2] ^= 0x01  # inside the ECDSA signature's s value
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CsrError, match="signature does not verify"):
        ca.sign_csr(tampered, WEB)

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(weak, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(CsrError, match="1024 bits"):
        ca.sign_csr(csr, WEB)
    with pytest.raises(CsrError, match="malformed CSR"):
        ca.sign_csr(b"not a csr", WEB)


def test_ids_outside_the_trust_domain_are_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    other = SpiffeId("other.domain", "default", "web")
    with pytest.raises(CaError, match="outside the trust domain cluster.local"):
        ca.sign_csr(make_csr(generate_key(), other), other)


def test_leaf_never_outlives_its_ca(tmp_path: Path) -> None:
    clock = Clock()
    ca = CertificateAuthority.create(tmp_path, clock=clock)
    (root,) = certs(ca.trust_bundle_pem())
    clock.now = root.not_valid_after_utc - timedelta(hours=1)
    (leaf,) = certs(issue(ca))
    assert leaf.not_valid_after_utc == root.not_valid_after_utc
    clock.now = root.not_valid_after_utc + timedelta(seconds=1)
    with pytest.raises(CaError, match="has expired"):
        issue(ca)


def test_csr_requests_the_spiffe_id_as_its_uri_san() -> None:
    csr = x509.load_pem_x509_csr(make_csr(generate_key(), WEB))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(WEB)]


# -- operator CAs -------------------------------------------------------------------------


def _ca_cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def _write(path: Path, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        b"".join(
            key_to_pem(i)
            if isinstance(i, ec.EllipticCurvePrivateKey)
            else i.public_bytes(serialization.Encoding.PEM)
            for i in items
        )
    )
    return path


def test_operator_root_signs_and_is_the_bundle(tmp_path: Path) -> None:
    key = generate_key()
    root = _ca_cert("corp root", key, None)
    ca = CertificateAuthority.from_files(
        _write(tmp_path / "ca.pem", root), _write(tmp_path / "ca.key", key)
    )
    chain = issue(ca)
    assert len(certs(chain)) == 1  # a root is not sent along
    assert certs(ca.trust_bundle_pem()) == [root]
    assert verify(chain, ca.trust_bundle_pem()) == [str(WEB)]


def test_operator_intermediate_leaf_verifies_through_the_chain(tmp_path: Path) -> None:
    root_key, int_key = generate_key(), generate_key()
    root = _ca_cert("corp root", root_key, None)
    intermediate = _ca_cert("mesh intermediate", int_key, (root, root_key))
    ca = CertificateAuthority.from_files(
        _write(tmp_path / "int.pem", intermediate),
        _write(tmp_path / "int.key", int_key),
        _write(tmp_path / "chain.pem", root),
    )
    chain = issue(ca)
    leaf, sent = certs(chain)
    assert sent == intermediate and leaf.issuer == intermediate.subject
    assert certs(ca.trust_bundle_pem()) == [intermediate, root]
    root_only = root.public_bytes(serialization.Encoding.PEM)
    assert verify(chain, root_only) == [str(WEB)]  # a peer trusting only the root accepts it


def test_operator_files_must_be_a_ca_and_its_key(tmp_path: Path) -> None:
    key = generate_key()
    root = _ca_cert("corp root", key, None)
    with pytest.raises(CaError, match="is not the private key"):
        CertificateAuthority.from_files(
            _write(tmp_path / "c.pem", root), _write(tmp_path / "k", generate_key())
        )
    ca = CertificateAuthority.create(tmp_path / "managed")
    leaf_key = generate_key()
    leaf_pem = ca.sign_csr(make_csr(leaf_key, WEB), WEB)
    with pytest.raises(CaError, match="is not a CA certificate"):
        CertificateAuthority.from_files(
            _write(tmp_path / "leaf.pem", *certs(leaf_pem)), _write(tmp_path / "k2", leaf_key)
        )
    op = CertificateAuthority.from_files(tmp_path / "c.pem", _write(tmp_path / "k3", key))
    with pytest.raises(CaError, match="operator-provided CA"):
        op.prepare_rotation()


# -- rotation -----------------------------------------------------------------------------


def test_rotation_trusts_the_new_root_before_it_signs_and_retires_the_old_after(
    tmp_path: Path,
) -> None:
    clock = Clock()
    ca = CertificateAuthority.create(tmp_path, clock=clock)
    old_fp = ca.roots()[0].fingerprint
    old_leaf = issue(ca)

    new_fp = ca.prepare_rotation()
    bundle = ca.trust_bundle_pem()
    assert [r.fingerprint for r in ca.roots()] == [old_fp, new_fp]
    assert [r.state for r in ca.roots()] == ["signing", "pending"]
    assert verify(old_leaf, bundle) == [str(WEB)]
    still_old = certs(issue(ca))[0]
    assert still_old.issuer == certs(bundle)[0].subject  # pending roots do not sign

    assert ca.activate_rotation() == new_fp
    assert [r.state for r in ca.roots()] == ["previous", "signing"]
    assert ca.trust_bundle_pem() == bundle  # activation changes no one's trust
    new_leaf = issue(ca)
    assert certs(new_leaf)[0].issuer == certs(bundle)[1].subject
    assert verify(new_leaf, bundle) == [str(WEB)]
    assert verify(old_leaf, bundle) == [str(WEB)]

    with pytest.raises(CaError, match="may have certificates valid until"):
        ca.retire(old_fp)
    with pytest.raises(CaError, match="is signing: only a previous root retires"):
        ca.retire(new_fp)

    # the state survives a restart
    reloaded = CertificateAuthority.load(tmp_path, clock=clock)
    assert reloaded.roots() == ca.roots()
    with pytest.raises(CaError, match="may have certificates valid until"):
        reloaded.retire(old_fp)

    clock.now += DEFAULT_LEAF_TTL + timedelta(hours=1)
    reloaded.retire(old_fp)
    assert [r.fingerprint for r in reloaded.roots()] == [new_fp]
    assert certs(reloaded.trust_bundle_pem()) == [certs(bundle)[1]]
    assert sorted(p.name for p in (tmp_path / "roots").iterdir()) == [
        f"{new_fp}.key",
        f"{new_fp}.pem",
    ]
    with pytest.raises(VerificationError):
        verify(old_leaf, reloaded.trust_bundle_pem(), at=clock.now - DEFAULT_LEAF_TTL)
    assert CertificateAuthority.load(tmp_path).roots()[0].fingerprint == new_fp


def test_rotation_steps_out_of_order_are_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    with pytest.raises(CaError, match="no rotation is prepared"):
        ca.activate_rotation()
    ca.prepare_rotation()
    with pytest.raises(CaError, match="already prepared"):
        ca.prepare_rotation()
    with pytest.raises(CaError, match="no trusted root has fingerprint"):
        ca.retire("00" * 32)


def test_a_root_that_never_signed_retires_at_once_after_rotate(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path)
    old_fp = ca.roots()[0].fingerprint
    new_fp = ca.rotate()
    assert [r.state for r in ca.roots()] == ["previous", "signing"]
    ca.retire(old_fp)
    assert [r.fingerprint for r in ca.roots()] == [new_fp]
