"""The few facts a proxy reads from an X.509 certificate, without the `cryptography` package.

A proxy needs a certificate's serial number, validity, SPIFFE ID (its URI SAN) and authority
key id; OpenSSL has already verified the chain. Importing `cryptography` for that costs a
sidecar about 10 MiB of RSS for its lifetime, so this module walks the DER (RFC 5280 section
4.1, X.690 encoding rules) for exactly those fields and nothing else. It parses, it never
verifies: trust decisions stay with OpenSSL. Malformed input raises ValueError.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["CertInfo", "first_pem_certificate", "parse_der"]

_SEQUENCE, _INTEGER, _OCTET_STRING, _OID = 0x30, 0x02, 0x04, 0x06
_UTC_TIME, _GENERALIZED_TIME, _BOOLEAN = 0x17, 0x18, 0x01
_VERSION, _EXTENSIONS = 0xA0, 0xA3  # [0] EXPLICIT version, [3] EXPLICIT extensions
_URI = 0x86  # GeneralName uniformResourceIdentifier [6] IMPLICIT IA5String
_KEY_ID = 0x80  # AuthorityKeyIdentifier keyIdentifier [0] IMPLICIT OCTET STRING
_SAN_OID = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17 subjectAltName
_AKI_OID = bytes([0x55, 0x1D, 0x23])  # 2.5.29.35 authorityKeyIdentifier
_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----(.+?)-----END CERTIFICATE-----", re.S)


@dataclass(frozen=True, slots=True)
class CertInfo:
    serial: int
    not_before: datetime
    not_after: datetime
    uris: tuple[str, ...]  # URI SANs, in order
    authority_key_id: bytes | None


def first_pem_certificate(pem: bytes) -> bytes:
    """The DER of the first certificate in a PEM bundle (the leaf of a chain)."""
    match = _PEM.search(pem)
    if match is None:
        raise ValueError("no PEM certificate found")
    try:
        return base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except ValueError:
        raise ValueError("malformed PEM certificate") from None


def parse_der(der: bytes) -> CertInfo:
    """Serial, validity, URI SANs and authority key id of a DER certificate."""
    try:
        return _parse(der)
    except IndexError:
        raise ValueError("truncated certificate") from None


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the element at `at`."""
    tag = data[at]
    length = data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[at : at + count], "big")
        at += count
    end = at + length
    if end > len(data):
        raise ValueError("truncated certificate")
    return tag, at, end


def _expect(data: bytes, at: int, tag: int, what: str) -> tuple[int, int]:
    found, start, end = _tlv(data, at)
    if found != tag:
        raise ValueError(f"malformed certificate: expected {what}")
    return start, end


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    items = []
    while start < end:
        item = _tlv(data, start)
        items.append(item)
        start = item[2]
    return items


def _time(data: bytes, tag: int, start: int, end: int) -> datetime:
    text = data[start:end].decode("ascii")
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; years 50-99 are 19xx (RFC 5280 section 4.1.2.5.1)
        year = int(text[:2])
        text = ("19" if year >= 50 else "20") + text
    elif tag != _GENERALIZED_TIME:
        raise ValueError("malformed certificate: expected a time")
    if len(text) != 15 or not text.endswith("Z"):
        raise ValueError("malformed certificate: time must be YYYYMMDDHHMMSSZ")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def _parse(der: bytes) -> CertInfo:
    cert_start, cert_end = _expect(der, 0, _SEQUENCE, "a certificate")
    tbs_start, tbs_end = _expect(der, cert_start, _SEQUENCE, "tbsCertificate")
    fields = _children(der, tbs_start, tbs_end)
    if fields and fields[0][0] == _VERSION:
        fields = fields[1:]
    if len(fields) < 6 or fields[0][0] != _INTEGER or fields[3][0] != _SEQUENCE:
        raise ValueError("malformed certificate: unexpected tbsCertificate layout")
    serial = int.from_bytes(der[fields[0][1] : fields[0][2]], "big", signed=True)
    validity = _children(der, fields[3][1], fields[3][2])
    if len(validity) != 2:
        raise ValueError("malformed certificate: validity must hold two times")
    not_before = _time(der, *validity[0])
    not_after = _time(der, *validity[1])
    uris: tuple[str, ...] = ()
    authority_key_id = None
    for tag, start, _ in fields[6:]:
        if tag != _EXTENSIONS:
            continue
        seq_start, seq_end = _expect(der, start, _SEQUENCE, "extensions")
        for _, ext_start, ext_end in _children(der, seq_start, seq_end):
            parts = _children(der, ext_start, ext_end)
            if not parts or parts[0][0] != _OID or parts[-1][0] != _OCTET_STRING:
                raise ValueError("malformed certificate: bad extension")
            oid = der[parts[0][1] : parts[0][2]]
            value_start = parts[-1][1]
            if oid == _SAN_OID:
                names_start, names_end = _expect(der, value_start, _SEQUENCE, "GeneralNames")
                uris = tuple(
                    der[s:e].decode("ascii")
                    for t, s, e in _children(der, names_start, names_end)
                    if t == _URI
                )
            elif oid == _AKI_OID:
                aki_start, aki_end = _expect(der, value_start, _SEQUENCE, "AuthorityKeyId")
                for t, s, e in _children(der, aki_start, aki_end):
                    if t == _KEY_ID:
                        authority_key_id = der[s:e]
    return CertInfo(serial, not_before, not_after, uris, authority_key_id)
