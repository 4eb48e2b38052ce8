"""SPIFFE IDs: one strict spelling per identity, and the one URI SAN of a certificate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from plait.identity.spiffe import SpiffeId, peer_spiffe_id


def test_parse_and_str_round_trip() -> None:
    uri = "spiffe://cluster.local/ns/bookinfo/sa/reviews-v2"
    sid = SpiffeId.parse(uri)
    assert sid == SpiffeId("cluster.local", "bookinfo", "reviews-v2")
    assert str(sid) == uri


def test_service_accounts_may_contain_dots() -> None:
    assert SpiffeId.parse("spiffe://td/ns/a/sa/b.c").service_account == "b.c"


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("https://cluster.local/ns/a/sa/b", "must start with 'spiffe://'"),
        ("SPIFFE://cluster.local/ns/a/sa/b", "must start with 'spiffe://'"),
        ("spiffe://Cluster.local/ns/a/sa/b", "must be lower case"),
        ("spiffe://cluster.local:8443/ns/a/sa/b", "must not contain a port"),
        ("spiffe://user@cluster.local/ns/a/sa/b", "must not contain userinfo"),
        ("spiffe://cluster.local/ns/a/sa/b?x=1", "must not contain a query"),
        ("spiffe://cluster.local/ns/a/sa/b#frag", "must not contain a fragment"),
        ("spiffe://cluster.local/ns/a/sa/%62", "must not contain percent-encoding"),
        ("spiffe://cluster.local/ns/a/sa/b/", "must have the path /ns/<namespace>/sa/<account>"),
        ("spiffe://cluster.local/ns/a/sa", "must have the path"),
        ("spiffe://cluster.local", "must have the path"),
        ("spiffe://cluster.local/sa/b/ns/a", "must have the path"),
        ("spiffe:///ns/a/sa/b", "trust domain is empty"),
        ("spiffe://clu$ter/ns/a/sa/b", "may contain only letters"),
        ("spiffe://cluster.local/ns//sa/b", "namespace is empty"),
        ("spiffe://cluster.local/ns/A/sa/b", "namespace 'A' must be lower-case"),
        ("spiffe://cluster.local/ns/a.b/sa/b", "namespace 'a.b' must be lower-case"),
        ("spiffe://cluster.local/ns/-a/sa/b", "starting and ending with a letter or digit"),
        ("spiffe://cluster.local/ns/a/sa/b_c", "service account 'b_c' must be lower-case"),
        ("spiffe://cluster.local/ns/" + "a" * 64 + "/sa/b", "longer than 63 characters"),
        ("spiffe://td/ns/a/sa/" + "b" * 2100, "longer than 2048 characters"),
    ],
)
def test_parse_rejects_with_the_reason(uri: str, reason: str) -> None:
    with pytest.raises(ValueError, match="SPIFFE ID|trust domain|namespace|account") as info:
        SpiffeId.parse(uri)
    assert reason in str(info.value)


def test_constructor_validates_its_parts() -> None:
    with pytest.raises(ValueError, match="namespace 'Prod'"):
        SpiffeId("cluster.local", "Prod", "web")


def _cert_with_uris(*uris: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "t")])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
    )
    if uris:
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans.append(x509.DNSName("example.com"))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_peer_spiffe_id_is_the_one_uri_san_from_der_or_parsed() -> None:
    cert = _cert_with_uris("spiffe://cluster.local/ns/a/sa/b")
    der = cert.public_bytes(serialization.Encoding.DER)
    assert peer_spiffe_id(der) == "spiffe://cluster.local/ns/a/sa/b"
    assert peer_spiffe_id(cert) == "spiffe://cluster.local/ns/a/sa/b"


@pytest.mark.parametrize(
    "uris",
    [
        (),
        ("spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a/sa/c"),
        ("https://cluster.local/ns/a/sa/b",),
    ],
    ids=["no-san", "two-uri-sans", "not-spiffe"],
)
def test_peer_spiffe_id_is_none_without_exactly_one_spiffe_uri(uris: tuple[str, ...]) -> None:
    assert peer_spiffe_id(_cert_with_uris(*uris)) is None
