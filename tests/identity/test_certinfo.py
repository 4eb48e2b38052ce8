"""certinfo reads what `cryptography` reads, for the certificates plait issues and others."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from plait.identity.ca import CertificateAuthority
from plait.identity.certinfo import first_pem_certificate, parse_der
from plait.identity.csr import generate_key, key_and_csr_in_child, load_key, make_csr
from plait.identity.spiffe import SpiffeId, peer_spiffe_id

WEB = SpiffeId("cluster.local", "default", "web")


def _same(pem: bytes) -> None:
    reference = x509.load_pem_x509_certificates(pem)[0]
    info = parse_der(first_pem_certificate(pem))
    assert info.serial == reference.serial_number
    assert info.not_before == reference.not_valid_before_utc
    assert info.not_after == reference.not_valid_after_utc
    try:
        san = reference.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = tuple(san.value.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        uris = ()
    assert info.uris == uris
    try:
        aki = reference.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
        assert info.authority_key_id == aki.value.key_identifier
    except x509.ExtensionNotFound:
        assert info.authority_key_id is None


def test_plait_issued_certificates_read_like_cryptography(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca")
    key = generate_key()
    chain = ca.sign_csr(make_csr(key, WEB), WEB)
    _same(chain)
    _same(ca.trust_bundle_pem())
    assert peer_spiffe_id(
        x509.load_pem_x509_certificates(chain)[0].public_bytes(serialization.Encoding.DER)
    ) == str(WEB)


def _self_signed(not_after: datetime, sans: list[x509.GeneralName] | None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1, tzinfo=UTC))
        .not_valid_after(not_after)
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    "not_after",
    [datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), datetime(2051, 6, 1, tzinfo=UTC)],
    ids=["utc-time", "generalized-time"],  # RFC 5280: GeneralizedTime from 2050 on
)
def test_times_both_encodings(not_after: datetime) -> None:
    _same(_self_signed(not_after, [x509.DNSName("a.example")]))


def test_several_or_no_uri_sans() -> None:
    two = [
        x509.UniformResourceIdentifier("spiffe://a/ns/x/sa/y"),
        x509.DNSName("b.example"),
        x509.UniformResourceIdentifier("spiffe://a/ns/x/sa/z"),
    ]
    pem = _self_signed(datetime.now(UTC) + timedelta(days=1), two)
    _same(pem)
    der = first_pem_certificate(pem)
    assert peer_spiffe_id(der) is None  # an SVID has exactly one URI SAN
    _same(_self_signed(datetime.now(UTC) + timedelta(days=1), None))


@pytest.mark.parametrize(
    "der",
    [b"", b"\x30", b"\x30\x05\x02\x01", b"\x02\x01\x01", b"\x30\x84\xff\xff\xff\xff"],
)
def test_malformed_input_is_a_value_error(der: bytes) -> None:
    with pytest.raises(ValueError):
        parse_der(der)


def test_truncated_real_certificate_is_a_value_error(tmp_path: Path) -> None:
    pem = _self_signed(datetime.now(UTC) + timedelta(days=1), None)
    der = first_pem_certificate(pem)
    for cut in (10, len(der) // 2, len(der) - 1):
        with pytest.raises(ValueError):
            parse_der(der[:cut])
    with pytest.raises(ValueError):
        first_pem_certificate(b"no certificate here")


def test_key_and_csr_from_a_child_process() -> None:
    key_pem, csr_pem = key_and_csr_in_child(WEB)
    key = load_key(key_pem)
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
