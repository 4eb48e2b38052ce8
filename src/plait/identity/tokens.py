"""Join tokens: a short-lived, single-use proof that a new proxy may get a given identity.

A token is `pjt1.<claims>.<mac>`: base64url JSON claims (service, namespace, service account,
expiry, random `jti`) and their HMAC-SHA256 under the control plane's secret. Nothing is stored
when a token is made; redeeming checks the MAC (constant time), then the expiry, then records
the `jti` in a UsedTokens set, whose test-and-add is atomic so a token works once even across
control-plane replicas. An expired token fails on its expiry, so used jtis past their expiry can
be pruned.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from plait.identity.csr import write_file_atomic
from plait.identity.spiffe import SpiffeId, validate_name

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "JoinClaims",
    "MemoryUsedTokens",
    "TokenError",
    "TokenIssuer",
    "UsedTokens",
    "load_or_create_secret",
]

# 1 h: long enough to start a proxy by hand after `plait token create`, short enough that a
# token leaked in a shell history is soon worthless (Linkerd/SPIRE join tokens: minutes to hours).
DEFAULT_TOKEN_TTL = timedelta(hours=1)
# 32 bytes: SHA-256's output size, the shortest key RFC 2104 (section 3) recommends.
SECRET_BYTES = 32
# 4 KiB: far above any real token; longer input is refused before any decoding work.
MAX_TOKEN_LENGTH = 4096
PREFIX = "pjt1"  # plait join token, format 1; a fixed prefix lets secret scanners spot leaks


class TokenError(Exception):
    """A join token was refused: invalid, expired, or already used (the message says which)."""


@dataclass(frozen=True, slots=True)
class JoinClaims:
    """What a valid join token grants: one identity, until `expires_at`."""

    service: str
    namespace: str
    service_account: str
    jti: str
    expires_at: datetime

    def spiffe_id(self, trust_domain: str) -> SpiffeId:
        """The identity the CA should sign for the redeeming proxy."""
        return SpiffeId(trust_domain, self.namespace, self.service_account)


class UsedTokens(Protocol):
    """The single-use record; the control plane backs it with its store (a create-if-absent
    transaction in etcd terms) so that a token is spent once across replicas and restarts."""

    def add_if_absent(self, jti: str, expires_at: datetime) -> bool:
        """Records `jti`; True if it was new, False if it was already used."""
        ...


class MemoryUsedTokens:
    """An in-process UsedTokens: enough for one control plane that may forget on restart."""

    def __init__(self) -> None:
        self._expiry: dict[str, datetime] = {}
        self._lock = threading.Lock()

    def add_if_absent(self, jti: str, expires_at: datetime) -> bool:
        with self._lock:
            if jti in self._expiry:
                return False
            self._expiry[jti] = expires_at
            return True

    def prune(self, now: datetime) -> int:
        """Forgets jtis whose tokens have expired (they fail on expiry anyway); how many."""
        with self._lock:
            old = [jti for jti, expiry in self._expiry.items() if expiry <= now]
            for jti in old:
                del self._expiry[jti]
            return len(old)

    def __len__(self) -> int:
        return len(self._expiry)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=b"-_", validate=True)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class TokenIssuer:
    """Makes and redeems join tokens under one secret; thread-safe if `used` is."""

    def __init__(
        self,
        secret: bytes,
        used: UsedTokens | None = None,
        *,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"the join-token secret must have at least {SECRET_BYTES} bytes")
        self._secret = secret
        self.used: UsedTokens = used if used is not None else MemoryUsedTokens()
        self._clock = clock

    def create(
        self,
        service: str,
        namespace: str,
        ttl: timedelta = DEFAULT_TOKEN_TTL,
        service_account: str | None = None,
    ) -> str:
        """A token for `service` in `namespace`; the service account defaults to the service's
        name, so each service gets its own identity rather than a shared `default`."""
        validate_name("service", service)
        validate_name("namespace", namespace)
        account = validate_name("service account", service_account or service)
        if ttl <= timedelta(0):
            raise ValueError("ttl must be positive")
        claims = {
            "svc": service,
            "ns": namespace,
            "sa": account,
            "exp": int((self._clock() + ttl).timestamp()),
            "jti": _b64encode(secrets.token_bytes(16)),  # 128 random bits: never repeats
        }
        payload = f"{PREFIX}.{_b64encode(json.dumps(claims, separators=(',', ':')).encode())}"
        return f"{payload}.{_b64encode(self._mac(payload))}"

    def verify(self, token: str) -> JoinClaims:
        """Checks MAC and expiry without spending the token: for callers that record the jti
        themselves (an async store); raises TokenError."""
        parts = token.split(".") if len(token) <= MAX_TOKEN_LENGTH else []
        if len(parts) != 3 or parts[0] != PREFIX:
            raise TokenError("invalid join token")
        payload = f"{parts[0]}.{parts[1]}"
        try:
            mac = _b64decode(parts[2])
        except (binascii.Error, ValueError):
            raise TokenError("invalid join token") from None
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise TokenError("invalid join token")
        try:
            raw = json.loads(_b64decode(parts[1]))
            claims = JoinClaims(
                service=str(raw["svc"]),
                namespace=str(raw["ns"]),
                service_account=str(raw["sa"]),
                jti=str(raw["jti"]),
                expires_at=datetime.fromtimestamp(int(raw["exp"]), UTC),
            )
        except (binascii.Error, ValueError, KeyError, TypeError, OverflowError):
            # the MAC matched, so only a bug on our side gets here; refuse all the same
            raise TokenError("invalid join token") from None
        if self._clock() >= claims.expires_at:
            raise TokenError("join token expired")
        return claims

    def redeem(self, token: str) -> JoinClaims:
        """verify() and spend the token: a second redeem raises TokenError("...already used")."""
        claims = self.verify(token)
        if not self.used.add_if_absent(claims.jti, claims.expires_at):
            raise TokenError("join token already used")
        return claims

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()


def load_or_create_secret(path: Path) -> bytes:
    """The token secret in `path`, made (random, mode 0600) at first start.

    Linked into place, so control planes starting at once agree on one secret; a file that
    group or others can access is refused: anyone who reads it can mint identities.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        write_file_atomic(tmp, secrets.token_bytes(SECRET_BYTES), 0o600)
        try:
            with contextlib.suppress(FileExistsError):  # another process won the race
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(
            f"{path}: the join-token secret is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
        )
    secret = path.read_bytes()
    if len(secret) < SECRET_BYTES:
        raise ValueError(f"{path} holds fewer than {SECRET_BYTES} bytes")
    return secret
