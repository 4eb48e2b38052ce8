"""Join tokens: valid once, until they expire, and only as their issuer wrote them."""

from __future__ import annotations

import base64
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from plait.identity.spiffe import SpiffeId
from plait.identity.tokens import (
    DEFAULT_TOKEN_TTL,
    MemoryUsedTokens,
    TokenError,
    TokenIssuer,
    load_or_create_secret,
)

SECRET = b"s" * 32


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_valid_token_redeems_to_its_claims() -> None:
    clock = Clock()
    issuer = TokenIssuer(SECRET, clock=clock)
    claims = issuer.redeem(issuer.create("reviews", "bookinfo"))
    assert (claims.service, claims.namespace, claims.service_account) == (
        "reviews",
        "bookinfo",
        "reviews",
    )
    assert claims.expires_at == clock.now + DEFAULT_TOKEN_TTL
    assert claims.spiffe_id("cluster.local") == SpiffeId("cluster.local", "bookinfo", "reviews")
    explicit = issuer.redeem(issuer.create("reviews", "bookinfo", service_account="bookinfo-sa"))
    assert explicit.service_account == "bookinfo-sa"


def test_a_token_works_once() -> None:
    issuer = TokenIssuer(SECRET)
    token = issuer.create("web", "default")
    issuer.redeem(token)
    with pytest.raises(TokenError, match="^join token already used$"):
        issuer.redeem(token)


def test_single_use_holds_across_issuers_sharing_the_used_set() -> None:
    used = MemoryUsedTokens()
    first, second = TokenIssuer(SECRET, used), TokenIssuer(SECRET, used)
    token = first.create("web", "default")
    second.redeem(token)
    with pytest.raises(TokenError, match="already used"):
        first.redeem(token)


def test_an_expired_token_is_refused_and_not_recorded() -> None:
    clock, used = Clock(), MemoryUsedTokens()
    issuer = TokenIssuer(SECRET, used, clock=clock)
    token = issuer.create("web", "default", ttl=timedelta(minutes=5))
    clock.now += timedelta(minutes=5)
    with pytest.raises(TokenError, match="^join token expired$"):
        issuer.redeem(token)
    assert len(used) == 0


def _tamper_claims(token: str, **changes: object) -> str:
    prefix, claims, mac = token.split(".")
    raw = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    raw.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(raw).encode()).rstrip(b"=").decode()
    return f"{prefix}.{encoded}.{mac}"


def test_tampered_tokens_are_invalid() -> None:
    issuer = TokenIssuer(SECRET)
    token = issuer.create("web", "default")
    forged = [
        _tamper_claims(token, sa="admin"),
        _tamper_claims(token, exp=4_000_000_000),
        token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
        TokenIssuer(b"x" * 32).create("web", "default"),
        token.replace("pjt1.", "pjt2.", 1),
        token + ".",
        "",
        "pjt1..",
        "pjt1.é.é",
        "x" * 10_000,
    ]
    for bad in forged:
        with pytest.raises(TokenError, match="^invalid join token$"):
            issuer.redeem(bad)
    issuer.redeem(token)  # the original is still good


def test_create_validates_names_and_ttl() -> None:
    issuer = TokenIssuer(SECRET)
    with pytest.raises(ValueError, match="namespace 'Prod'"):
        issuer.create("web", "Prod")
    with pytest.raises(ValueError, match="ttl must be positive"):
        issuer.create("web", "default", ttl=timedelta(0))
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenIssuer(b"short")


def test_used_jtis_of_expired_tokens_can_be_pruned() -> None:
    clock = Clock()
    used = MemoryUsedTokens()
    issuer = TokenIssuer(SECRET, used, clock=clock)
    issuer.redeem(issuer.create("a", "default", ttl=timedelta(minutes=1)))
    issuer.redeem(issuer.create("b", "default", ttl=timedelta(hours=2)))
    assert used.prune(clock.now + timedelta(hours=1)) == 1
    assert len(used) == 1


def test_secret_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "control" / "join-secret"
    secret = load_or_create_secret(path)
    assert len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == secret
    path.chmod(0o640)
    with pytest.raises(ValueError, match="accessible by group or others"):
        load_or_create_secret(path)
