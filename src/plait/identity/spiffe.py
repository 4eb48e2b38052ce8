"""SPIFFE IDs of plait workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

Parsing is strict on purpose: an ID is compared as a string in authorization policy, so two
spellings of one identity (upper case, a port, `%2F`, a trailing slash) must not both exist.
The rules are the SPIFFE ID spec's (no port, userinfo, query or fragment; lower-case trust
domain) narrowed to Kubernetes names for the two path segments, as Istio issues them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from plait.identity.certinfo import parse_der

if TYPE_CHECKING:
    from cryptography import x509

__all__ = ["SpiffeId", "peer_spiffe_id", "validate_name", "validate_trust_domain"]

SCHEME = "spiffe://"
# 2048 bytes: the SPIFFE ID spec's limit on a whole ID (section 2.3).
MAX_ID_LENGTH = 2048
# 255: a trust domain is a DNS name (SPIFFE ID spec section 2.1).
MAX_TRUST_DOMAIN_LENGTH = 255
# 63 / 253: Kubernetes namespaces and services are DNS labels, service accounts subdomains.
MAX_NAMESPACE_LENGTH = 63
MAX_SERVICE_ACCOUNT_LENGTH = 253

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")


_NAME_RULES = {
    "namespace": (_LABEL, MAX_NAMESPACE_LENGTH),
    "service": (_LABEL, MAX_NAMESPACE_LENGTH),
    "service account": (_SUBDOMAIN, MAX_SERVICE_ACCOUNT_LENGTH),
}


def validate_name(kind: str, value: str) -> str:
    """Checks a namespace, service or service-account name; returns it or raises ValueError."""
    pattern, limit = _NAME_RULES[kind]
    if not value:
        raise ValueError(f"{kind} is empty")
    if len(value) > limit:
        raise ValueError(f"{kind} {value!r} is longer than {limit} characters")
    if not pattern.fullmatch(value):
        allowed = "'-' or '.'" if pattern is _SUBDOMAIN else "'-'"
        raise ValueError(
            f"{kind} {value!r} must be lower-case letters, digits and {allowed}, "
            "starting and ending with a letter or digit"
        )
    return value


def validate_trust_domain(value: str) -> str:
    """Checks a trust domain name; returns it, or raises ValueError saying why."""
    if not value:
        raise ValueError("trust domain is empty")
    if len(value) > MAX_TRUST_DOMAIN_LENGTH:
        raise ValueError(f"trust domain is longer than {MAX_TRUST_DOMAIN_LENGTH} characters")
    if value != value.lower():
        raise ValueError(f"trust domain {value!r} must be lower case")
    if not _TRUST_DOMAIN.fullmatch(value):
        raise ValueError(
            f"trust domain {value!r} may contain only letters, digits, '.', '-' and '_'"
        )
    return value


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A workload identity; `str()` gives the URI that is the certificate's one URI SAN."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        validate_name("namespace", self.namespace)
        validate_name("service account", self.service_account)

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Parses `spiffe://<td>/ns/<ns>/sa/<sa>`; raises ValueError naming the broken part."""
        if len(uri) > MAX_ID_LENGTH:
            raise ValueError(f"SPIFFE ID is longer than {MAX_ID_LENGTH} characters")
        if not uri.startswith(SCHEME):
            raise ValueError(f"SPIFFE ID {uri!r} must start with {SCHEME!r}")
        for char, part in (("?", "a query"), ("#", "a fragment"), ("%", "percent-encoding")):
            if char in uri:
                raise ValueError(f"SPIFFE ID {uri!r} must not contain {part}")
        authority, slash, path = uri[len(SCHEME) :].partition("/")
        if "@" in authority:
            raise ValueError(f"SPIFFE ID {uri!r} must not contain userinfo")
        if ":" in authority:
            raise ValueError(f"SPIFFE ID {uri!r} must not contain a port")
        segments = path.split("/") if slash else []
        if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
            raise ValueError(f"SPIFFE ID {uri!r} must have the path /ns/<namespace>/sa/<account>")
        try:
            return cls(authority, segments[1], segments[3])
        except ValueError as exc:
            raise ValueError(f"SPIFFE ID {uri!r}: {exc}") from None


def peer_spiffe_id(cert: bytes | x509.Certificate) -> str | None:
    """The SPIFFE ID of a certificate (DER or parsed): its one `spiffe://` URI SAN, else None.

    An X.509-SVID carries exactly one URI SAN (X509-SVID spec section 2); a certificate with
    none or several has no SPIFFE identity. The path is not checked against plait's
    /ns/<ns>/sa/<sa> shape here, so IDs from other SPIFFE issuers compare as plain strings.
    """
    if isinstance(cert, bytes):
        uris: list[str] | tuple[str, ...] = parse_der(cert).uris  # no `cryptography` needed
    else:
        from cryptography import x509

        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return None
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith(SCHEME):
        return None
    return uris[0]
