"""JWT authentication: valid tokens name a principal; every kind of bad token is a 401."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from plait.config.policy import ClaimToHeader, JwtHeader, JwtRule
from plait.proxy.filters.jwt_authn import CLOCK_SKEW, JwksCache, JwksError, JwtAuthenticator, KeySet

ISSUER = "https://issuer.example"
NOW = 1_700_000_000.0
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()


def jwk(algorithm: Any, key: Any, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return data | {"kid": kid}


JWKS = json.dumps(
    {
        "keys": [
            jwk(RSAAlgorithm, RSA_KEY, "rsa"),  # no `alg`: any RSA algorithm
            jwk(ECAlgorithm, EC_KEY, "ec"),
            jwk(OKPAlgorithm, ED_KEY, "ed"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},  # skipped: a JWKS is public
        ]
    }
)


def token(
    claims: dict[str, Any] | None = None,
    *,
    key: Any = RSA_KEY,
    alg: str = "RS256",
    kid: str | None = "rsa",
) -> str:
    payload = {"iss": ISSUER, "sub": "alice", "aud": "bookinfo", "exp": NOW + 3600} | (claims or {})
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def bearer(tok: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"reviews"), (b"authorization", f"Bearer {tok}".encode())]


def authenticator(**kw: Any) -> JwtAuthenticator:
    fields: dict[str, Any] = {"issuer": ISSUER, "jwks": JWKS, "audiences": ("bookinfo",)}
    return JwtAuthenticator([JwtRule(**fields | kw)], clock=lambda: NOW)


def test_valid_token_names_the_principal_and_strips_the_header() -> None:
    result = authenticator().authenticate(bearer(token({"groups": ["admins"]})))
    assert result.ok and result.status is None
    assert result.principal == f"{ISSUER}/alice"
    assert result.claims["groups"] == ["admins"]
    assert result.remove_headers == (b"authorization",)


@pytest.mark.parametrize(
    ("key", "alg", "kid"),
    [
        (EC_KEY, "ES256", "ec"),
        (ED_KEY, "EdDSA", "ed"),
        (RSA_KEY, "PS256", "rsa"),
        (RSA_KEY, "RS256", None),
    ],
)
def test_ec_ed25519_pss_and_kidless_tokens_verify(key: Any, alg: str, kid: str | None) -> None:
    assert authenticator().authenticate(bearer(token(key=key, alg=alg, kid=kid))).ok


def test_no_token_passes_without_principal() -> None:
    auth = authenticator()
    for headers in (
        [(b"host", b"x")],
        [(b"authorization", b"Basic dTpw")],
        [(b"authorization", b"Bearer ")],
    ):
        result = auth.authenticate(headers)
        assert result.ok and result.principal is None and result.reason == "no token"


def _none_token() -> str:
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64({'iss': ISSUER, 'sub': 'mallory'})}."


def _hs256_with_public_key() -> str:
    # The classic key-confusion attack: the RSA public key used as an HMAC secret.
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = base64.urlsafe_b64encode(b'{"alg":"HS256","kid":"rsa"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(json.dumps({"iss": ISSUER, "sub": "m"}).encode()).rstrip(b"=")
    import hashlib
    import hmac

    sig = base64.urlsafe_b64encode(
        hmac.new(pem, header + b"." + body, hashlib.sha256).digest()
    ).rstrip(b"=")
    return (header + b"." + body + b"." + sig).decode()


@pytest.mark.parametrize(
    ("tok", "reason"),
    [
        (token({"exp": NOW - 600}), "Jwt is expired"),
        (token({"nbf": NOW + 600}), "Jwt not yet valid"),
        (token({"iss": "https://evil.example"}), "Jwt issuer is not configured"),
        (token({"aud": "other"}), "Audiences in Jwt are not allowed"),
        (token({"aud": ["a", "b"]}), "Audiences in Jwt are not allowed"),
        (token(key=OTHER_RSA_KEY), "Jwt verification fails"),
        (token(kid="nope"), "Jwks doesn't have key to match kid or alg from Jwt"),
        (
            token(key=EC_KEY, alg="ES256", kid="rsa"),
            "Jwks doesn't have key to match kid or alg from Jwt",
        ),
        (token({"exp": "tomorrow"}), "Jwt exp claim is not a number"),
        (_none_token(), "Jwt algorithm 'none' is not allowed"),
        (_hs256_with_public_key(), "Jwt algorithm 'HS256' is not supported"),
        ("not.a.jwt", "Jwt is not in the form of Header.Payload.Signature"),
        ("garbage", "Jwt is not in the form of Header.Payload.Signature"),
    ],
)
def test_invalid_tokens_are_401(tok: str, reason: str) -> None:
    result = authenticator().authenticate(bearer(tok))
    assert not result.ok and result.status == 401 and result.principal is None
    assert result.reason == reason


def test_tampered_payload_fails_the_signature() -> None:
    header, _, sig = token().split(".")
    forged = (
        base64.urlsafe_b64encode(json.dumps({"iss": ISSUER, "sub": "root"}).encode())
        .rstrip(b"=")
        .decode()
    )
    assert (
        authenticator().authenticate(bearer(f"{header}.{forged}.{sig}")).reason
        == "Jwt verification fails"
    )


def test_clock_skew_is_tolerated_and_no_more() -> None:
    auth = authenticator()
    assert auth.authenticate(bearer(token({"exp": NOW - CLOCK_SKEW + 1}))).ok
    assert not auth.authenticate(bearer(token({"exp": NOW - CLOCK_SKEW - 1}))).ok


def test_any_audience_when_none_configured() -> None:
    assert authenticator(audiences=()).authenticate(bearer(token({"aud": "whatever"}))).ok


def test_named_header_replaces_the_default_location() -> None:
    auth = authenticator(from_headers=(JwtHeader("x-jwt-assertion"),), from_params=())
    assert (
        auth.authenticate([(b"x-jwt-assertion", token().encode())]).principal == f"{ISSUER}/alice"
    )
    assert auth.authenticate(bearer(token())).principal is None  # not read from Authorization


def test_token_in_a_place_its_issuers_rule_does_not_read_is_401() -> None:
    ours = JwtRule(issuer=ISSUER, jwks=JWKS, from_headers=(JwtHeader("x-jwt"),), from_params=())
    theirs = JwtRule(issuer="https://other.example", jwks=JWKS)  # reads Authorization
    result = JwtAuthenticator([ours, theirs], clock=lambda: NOW).authenticate(bearer(token()))
    assert result.status == 401 and result.reason == "Jwt issuer is not configured"


def test_scheme_is_case_insensitive_and_query_param_works() -> None:
    auth = authenticator()
    assert auth.authenticate([(b"authorization", f"bearer {token()}".encode())]).ok
    result = auth.authenticate([], query=f"a=1&access_token={token()}".encode())
    assert result.ok and result.principal and result.remove_headers == ()


def test_cookie_location() -> None:
    auth = authenticator(from_cookies=("session",), from_headers=(), from_params=())
    assert auth.authenticate([(b"cookie", f"a=b; session={token()}".encode())]).ok


def test_forward_original_token_keeps_the_header() -> None:
    assert (
        authenticator(forward_original_token=True).authenticate(bearer(token())).remove_headers
        == ()
    )


def test_outputs_and_spoofed_output_headers() -> None:
    auth = authenticator(
        output_payload_to_header="x-jwt-payload",
        output_claim_to_headers=(ClaimToHeader("x-user", "sub"), ClaimToHeader("x-admin", "admin")),
    )
    tok = token({"admin": True})
    result = auth.authenticate(bearer(tok))
    added = dict(result.add_headers)
    assert added[b"x-user"] == b"alice" and added[b"x-admin"] == b"true"
    assert added[b"x-jwt-payload"] == tok.split(".")[1].encode()
    assert set(result.remove_headers) >= {b"x-jwt-payload", b"x-user", b"x-admin", b"authorization"}
    anonymous = auth.authenticate([(b"x-user", b"root")])
    assert anonymous.ok and b"x-user" in anonymous.remove_headers


def test_every_token_must_verify() -> None:
    auth = authenticator(from_headers=(JwtHeader("authorization", "Bearer "), JwtHeader("x-jwt")))
    headers = bearer(token()) + [(b"x-jwt", token(key=OTHER_RSA_KEY).encode())]
    assert auth.authenticate(headers).status == 401


def test_bad_inline_jwks_fails_at_build_time() -> None:
    with pytest.raises(JwksError, match="no usable signature key"):
        JwtAuthenticator([JwtRule(issuer=ISSUER, jwks='{"keys": []}')])
    with pytest.raises(JwksError, match=r"keys\[0\]"):
        KeySet.parse('{"keys": [{"kty": "RSA", "n": "!!", "e": "AQAB"}]}')


def test_remote_jwks_is_401_until_fetched_then_cached() -> None:
    calls: list[str] = []
    answers: list[bytes | Exception] = [
        OSError("connection refused"),
        JWKS.encode(),
        OSError("down"),
    ]

    def fetch(uri: str, timeout: float) -> bytes:
        calls.append(uri)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    clock = [0.0]
    cache = JwksCache(fetch, ttl=300, retry=5, clock=lambda: clock[0])
    auth = JwtAuthenticator(
        [JwtRule(issuer=ISSUER, jwks_uri="https://issuer.example/jwks")],
        cache.get,
        clock=lambda: NOW,
    )
    cache.want(auth.jwks_uris)
    assert (
        auth.authenticate(bearer(token())).reason
        == "Jwks from https://issuer.example/jwks is not fetched yet"
    )

    asyncio.run(cache.refresh())  # fails: still nothing
    assert "connection refused" in cache.error("https://issuer.example/jwks")
    assert not auth.authenticate(bearer(token())).ok
    asyncio.run(cache.refresh())  # not due yet (retry in 5 s): no call
    assert len(calls) == 1
    clock[0] = 6
    asyncio.run(cache.refresh())
    assert auth.authenticate(bearer(token())).ok
    clock[0] = 400  # TTL passed and the fetch fails: the last good set keeps serving
    asyncio.run(cache.refresh())
    assert auth.authenticate(bearer(token())).ok and len(calls) == 3


def test_real_clock_default() -> None:
    auth = JwtAuthenticator([JwtRule(issuer=ISSUER, jwks=JWKS)])
    fresh = jwt.encode(
        {"iss": ISSUER, "sub": "a", "exp": time.time() + 60}, RSA_KEY, algorithm="RS256"
    )
    assert auth.authenticate(bearer(fresh)).ok


def test_verified_tokens_are_cached_but_expiry_still_applies() -> None:
    lookups: list[str] = []
    keys = KeySet.parse(JWKS)

    def fetch(uri: str) -> KeySet:
        lookups.append(uri)
        return keys

    now = [NOW]
    rule = JwtRule(issuer=ISSUER, jwks_uri="https://issuer.example/jwks")
    auth = JwtAuthenticator([rule], fetch, clock=lambda: now[0])
    tok = token({"exp": NOW + 120})
    assert auth.authenticate(bearer(tok)).ok and auth.authenticate(bearer(tok)).ok
    assert len(lookups) == 1  # the second request did not verify the signature again
    now[0] = NOW + 120 + CLOCK_SKEW + 1
    assert auth.authenticate(bearer(tok)).reason == "Jwt is expired"
    # The cache is keyed by the exact token: a tampered copy is verified (and fails).
    header, payload, sig = tok.split(".")
    assert auth.authenticate(bearer(f"{header}.{payload}.{sig[:-4]}AAAA")).status == 401


def test_jwks_can_be_read_from_a_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from plait.proxy.filters.jwt_authn import fetch_url

    path = tmp_path / "jwks.json"
    path.write_text('{"keys": []}')
    assert fetch_url(path.as_uri(), 1.0) == b'{"keys": []}'
