"""RequestAuthentication (Istio semantics): verify end-user JWTs and name the request principal.

istio.io/latest/docs/reference/config/security/request_authentication/ and Envoy's jwt_authn:

- a request without a token passes, with no principal; AuthorizationPolicy decides what such a
  request may do (a `requestPrincipals` rule then denies it with 403);
- a request whose token fails answers 401: malformed, `alg: none` or an algorithm its key does
  not allow, an issuer no rule names (or a token in a place that issuer's rule does not read),
  an unknown `kid`, a bad signature, expired or not yet valid (RFC 7519 sections 4.1.4-4.1.5,
  with `CLOCK_SKEW`), an audience outside the rule's `audiences` (when it lists any), or keys
  from a `jwks_uri` not fetched yet;
- a valid token yields the principal `iss/sub` and its claims; unless `forward_original_token`,
  the header that carried it is removed before the request goes on.

Every token found must verify (stricter than Envoy, where several tokens are undefined).
Signatures are checked by PyJWT with the algorithms each key allows (RFC 7518 section 3.1):
never `none`, never HMAC (a JWKS is public). Keys come inline or from `JwksCache`, which fetches
in a thread and never blocks a request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from plait.config.policy import DEFAULT_JWKS_TIMEOUT_MS, JwtRule

if TYPE_CHECKING:
    from jwt.api_jws import PyJWS

__all__ = [
    "CLOCK_SKEW",
    "AuthnResult",
    "JwksCache",
    "JwksError",
    "JwtAuthenticator",
    "KeySet",
    "fetch_url",
]

Headers = Sequence[tuple[bytes, bytes]]

# 60 s: Envoy jwt_authn's default `clock_skew_seconds`, which Istio keeps; it absorbs clock drift
# between the issuer and this host and applies to `exp` and `nbf` only.
CLOCK_SKEW = 60.0
# RFC 7518 section 3.1 algorithms each key type may verify, when the JWK names no `alg`.
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_OKP = {"Ed25519": "EdDSA", "Ed448": "EdDSA"}
_ASYMMETRIC = _RSA | set(_EC.values()) | {"EdDSA"}
# Verified tokens are remembered, as Envoy's jwt_cache does (its default size is 100): a client
# sends the same token many times and a signature check costs ~100 us. Signature, issuer and
# location are trusted for `JWT_CACHE_TTL` s (so a key removed from a JWKS stops working by
# then); `exp`, `nbf` and audiences are checked on every request.
JWT_CACHE_SIZE = 100
JWT_CACHE_TTL = 300.0

_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


def _pyjwt() -> ModuleType:
    """PyJWT, imported on first use: it pulls in `cryptography` (about 10 MiB of RSS), which a
    proxy without RequestAuthentication never needs."""
    import jwt

    return jwt


@functools.cache
def _jws() -> PyJWS:
    from jwt.api_jws import PyJWS

    return PyJWS()


class JwksError(ValueError):
    """A JWKS that cannot be used; the message says which key and why."""


@dataclass(frozen=True, slots=True)
class _Key:
    kid: str | None
    algorithms: frozenset[str]
    key: Any  # a `cryptography` public key


class KeySet:
    """The usable verification keys of one JWKS (RFC 7517), parsed once."""

    __slots__ = ("keys",)

    def __init__(self, keys: Iterable[_Key]) -> None:
        self.keys = tuple(keys)

    @classmethod
    def parse(cls, text: str | bytes) -> KeySet:
        """Keys for signing (`use` absent or `sig`) of asymmetric types; others are skipped."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise JwksError(f"JWKS is not valid JSON: {e}") from None
        raw = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(raw, list):
            raise JwksError('a JWKS is a JSON object with a "keys" list')
        keys = []
        for i, jwk in enumerate(raw):
            if not isinstance(jwk, dict):
                raise JwksError(f"keys[{i}]: expected an object")
            if jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            algorithms = _algorithms(jwk)
            if not algorithms:
                continue
            jwt = _pyjwt()
            try:
                key = jwt.PyJWK(jwk, algorithm=min(algorithms)).key
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as e:
                raise JwksError(f"keys[{i}]: {e}") from None
            kid = jwk.get("kid")
            keys.append(_Key(kid if isinstance(kid, str) else None, algorithms, key))
        if not keys:
            raise JwksError("JWKS has no usable signature key (RSA, EC or OKP)")
        return cls(keys)

    def candidates(self, kid: str | None, alg: str) -> list[_Key]:
        """Keys that may have signed a token with this header (`kid` narrows when present)."""
        return [k for k in self.keys if alg in k.algorithms and (kid is None or k.kid == kid)]


def _algorithms(jwk: Mapping[str, Any]) -> frozenset[str]:
    alg = jwk.get("alg")
    if alg is not None:
        return frozenset({alg}) if alg in _ASYMMETRIC else frozenset()
    if jwk["kty"] == "RSA":
        return _RSA
    table = _EC if jwk["kty"] == "EC" else _OKP
    found = table.get(jwk.get("crv", ""))
    return frozenset({found}) if found else frozenset()


@dataclass(frozen=True, slots=True)
class AuthnResult:
    """`ok` False means answer `status` (401) with `reason`; else apply the header edits."""

    ok: bool
    status: int | None = None
    principal: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: _NO_CLAIMS)
    reason: str = ""
    remove_headers: tuple[bytes, ...] = ()  # lower-case names to drop before the app sees them
    add_headers: tuple[tuple[bytes, bytes], ...] = ()


class _Failed(Exception):
    """One token failed; carries the 401 reason."""


@dataclass(frozen=True, slots=True)
class _Location:
    kind: str  # "header", "param" or "cookie"
    name: str
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class _Rule:
    rule: JwtRule
    locations: frozenset[_Location]
    keys: KeySet | None  # inline keys; None: ask the cache for `rule.jwks_uri`


class JwtAuthenticator:
    """Verifies tokens for one workload's JWT rules; built once per snapshot, shared by streams.

    Its only mutable state is the cache of verified tokens (see `JWT_CACHE_SIZE`), touched from
    the event loop's thread alone.

    Building it parses inline JWKS, so a bad one raises `JwksError` while the snapshot is still
    being validated (NACK) rather than on a request. `fetch_jwks(uri)` returns the cached
    `KeySet` for a `jwks_uri`, or None while none has been fetched (`JwksCache.get`).
    """

    __slots__ = (
        "_by_issuer",
        "_headers",
        "_params",
        "_cookies",
        "_output",
        "_anonymous",
        "_fetch",
        "_clock",
        "_verified",
    )

    def __init__(
        self,
        rules: Sequence[JwtRule],
        fetch_jwks: Callable[[str], KeySet | None] | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch_jwks
        self._clock = clock
        self._verified: dict[str, tuple[_Rule, dict[str, Any], float]] = {}
        self._by_issuer: dict[str, list[_Rule]] = {}
        prefixes: dict[bytes, set[str]] = {}
        self._params: set[str] = set()
        self._cookies: set[str] = set()
        output: set[bytes] = set()
        for i, rule in enumerate(rules):
            locations = {_Location("header", h.name, h.prefix) for h in rule.from_headers}
            locations |= {_Location("param", p) for p in rule.from_params}
            locations |= {_Location("cookie", c) for c in rule.from_cookies}
            for h in rule.from_headers:
                prefixes.setdefault(h.name.encode("latin-1"), set()).add(h.prefix)
            self._params.update(rule.from_params)
            self._cookies.update(rule.from_cookies)
            try:
                keys = KeySet.parse(rule.jwks) if rule.jwks else None
            except JwksError as e:
                raise JwksError(f"jwt_rules[{i}] ({rule.policy}): {e}") from None
            self._by_issuer.setdefault(rule.issuer, []).append(
                _Rule(rule, frozenset(locations), keys)
            )
            if rule.output_payload_to_header:
                output.add(rule.output_payload_to_header.encode("latin-1"))
            output.update(c.header.encode("latin-1") for c in rule.output_claim_to_headers)
        # Header name -> its prefixes, longest first: one header yields at most one token.
        self._headers = {n: sorted(p, key=len, reverse=True) for n, p in prefixes.items()}
        self._output = tuple(sorted(output))
        # Headers we set for the app are never taken from the caller.
        self._anonymous = AuthnResult(ok=True, reason="no token", remove_headers=self._output)

    @property
    def enabled(self) -> bool:
        return bool(self._by_issuer)

    @property
    def jwks_uris(self) -> dict[str, float]:
        """Each `jwks_uri` to keep fetched, with its fetch timeout in seconds."""
        return {
            r.rule.jwks_uri: r.rule.jwks_timeout_ms / 1000
            for rules in self._by_issuer.values()
            for r in rules
            if r.keys is None
        }

    def authenticate(self, headers: Headers, query: bytes = b"") -> AuthnResult:
        """Find and verify the request's tokens; `query` is the target after `?`, if any."""
        if not self._by_issuer:
            return self._anonymous
        tokens = self._extract(headers, query)
        if not tokens:
            return self._anonymous
        remove = list(self._output)
        add: list[tuple[bytes, bytes]] = []
        principal, claims = None, _NO_CLAIMS
        for location, token in tokens:
            try:
                rule, payload = self._verify(token, location)
            except _Failed as e:
                return AuthnResult(ok=False, status=401, reason=str(e), remove_headers=self._output)
            if principal is None:
                principal = f"{payload['iss']}/{_string(payload.get('sub'))}"
                claims = payload
            if location.kind == "header" and not rule.forward_original_token:
                remove.append(location.name.encode("latin-1"))
            add += _outputs(rule, token, payload)
        return AuthnResult(
            ok=True,
            principal=principal,
            claims=claims,
            reason="token verified",
            remove_headers=tuple(remove),
            add_headers=tuple(add),
        )

    # extraction --------------------------------------------------------------------------------
    def _extract(self, headers: Headers, query: bytes) -> list[tuple[_Location, str]]:
        found: list[tuple[_Location, str]] = []
        for name, raw in headers:
            if name in self._headers:
                value = raw.decode("latin-1")
                for prefix in self._headers[name]:
                    # RFC 9110 section 11.1: the auth scheme ("Bearer") is case-insensitive.
                    if value[: len(prefix)].lower() == prefix.lower():
                        if tok := value[len(prefix) :].strip():
                            location = _Location("header", name.decode("latin-1"), prefix)
                            found.append((location, tok))
                        break
            elif name == b"cookie" and self._cookies:
                for part in raw.decode("latin-1").split(";"):
                    key, eq, value = part.strip().partition("=")
                    if eq and key in self._cookies and value:
                        found.append((_Location("cookie", key), value))
        if self._params and query:
            for pair in query.decode("latin-1").split("&"):
                key, eq, value = pair.partition("=")
                if eq and key in self._params and value:
                    found.append((_Location("param", key), unquote(value)))
        return found

    # verification ------------------------------------------------------------------------------
    def _verify(self, token: str, location: _Location) -> tuple[JwtRule, dict[str, Any]]:
        cached = self._verified.get(token)
        if cached is not None and location in cached[0].locations and self._clock() < cached[2]:
            self._check_claims(cached[1], cached[0].rule)  # time passes: exp is checked again
            return cached[0].rule, cached[1]
        header, unverified = _unverified(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _Failed("Jwt algorithm 'none' is not allowed")
        if alg not in _ASYMMETRIC:
            raise _Failed(f"Jwt algorithm {alg!r} is not supported")
        issuer = unverified.get("iss")
        candidates = self._by_issuer.get(issuer, []) if isinstance(issuer, str) else []
        rules = [r for r in candidates if location in r.locations]
        if not rules:
            raise _Failed("Jwt issuer is not configured")
        first: _Failed | None = None
        for rule in rules:  # several rules may name one issuer; any of them may accept the token
            try:
                payload = self._check_signature(token, header, alg, rule)
                if payload.get("iss") != issuer:  # what was routed on is what was signed
                    raise _Failed("Jwt verification fails")
                self._check_claims(payload, rule.rule)
            except _Failed as e:
                first = first or e
                continue
            self._remember(token, rule, payload)
            return rule.rule, payload
        assert first is not None
        raise first

    def _remember(self, token: str, rule: _Rule, payload: dict[str, Any]) -> None:
        if len(self._verified) >= JWT_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]  # the oldest entry
        self._verified[token] = (rule, payload, self._clock() + JWT_CACHE_TTL)

    def _check_signature(
        self, token: str, header: Mapping[str, Any], alg: str, rule: _Rule
    ) -> dict[str, Any]:
        """The payload as PyJWT read it from a token whose signature it verified."""
        keys = rule.keys
        if keys is None:
            keys = self._fetch(rule.rule.jwks_uri) if self._fetch is not None else None
            if keys is None:
                raise _Failed(f"Jwks from {rule.rule.jwks_uri} is not fetched yet")
        kid = header.get("kid")
        candidates = keys.candidates(kid if isinstance(kid, str) else None, alg)
        if not candidates:
            raise _Failed("Jwks doesn't have key to match kid or alg from Jwt")
        jwt = _pyjwt()
        for key in candidates:
            try:
                verified = _jws().decode_complete(token, key.key, algorithms=[alg])
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as e:
                raise _Failed(f"Jwt verification fails: {e}") from None
            try:
                payload = json.loads(verified["payload"])
            except ValueError:
                raise _Failed("Jwt payload is not a JSON object") from None
            if not isinstance(payload, dict):
                raise _Failed("Jwt payload is not a JSON object")
            return payload
        raise _Failed("Jwt verification fails")

    def _check_claims(self, payload: Mapping[str, Any], rule: JwtRule) -> None:
        now = self._clock()
        exp, nbf = payload.get("exp"), payload.get("nbf")
        for name, value in (("exp", exp), ("nbf", nbf)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise _Failed(f"Jwt {name} claim is not a number")
        if exp is not None and now > exp + CLOCK_SKEW:
            raise _Failed("Jwt is expired")
        if nbf is not None and now + CLOCK_SKEW < nbf:
            raise _Failed("Jwt not yet valid")
        if rule.audiences:
            aud = payload.get("aud")
            auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(a in rule.audiences for a in auds if isinstance(a, str)):
                raise _Failed("Audiences in Jwt are not allowed")


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload, read only to pick the rule and key; PyJWT re-reads what it verifies.

    The standard library does this in microseconds where PyJWT's strict reader takes about a
    hundred; a token it reads differently fails PyJWT's verification anyway.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise _Failed("Jwt is not in the form of Header.Payload.Signature")
    try:
        header, payload = (
            json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in parts[:2]
        )
    except (ValueError, binascii.Error):
        raise _Failed("Jwt is not in the form of Header.Payload.Signature") from None
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise _Failed("Jwt header and payload must be JSON objects")
    return header, payload


def _string(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _outputs(rule: JwtRule, token: str, payload: Mapping[str, Any]) -> list[tuple[bytes, bytes]]:
    """Istio's outputPayloadToHeader (the base64url payload) and outputClaimToHeaders."""
    out = []
    if rule.output_payload_to_header:
        out.append((rule.output_payload_to_header.encode("latin-1"), token.split(".")[1].encode()))
    for c in rule.output_claim_to_headers:
        value = payload.get(c.claim)
        if isinstance(value, bool):
            out.append((c.header.encode("latin-1"), b"true" if value else b"false"))
        elif isinstance(value, str | int | float):
            text = str(value)
            if text.isprintable():  # never a CR/LF into a header (RFC 9110 section 5.5)
                out.append((c.header.encode("latin-1"), text.encode("utf-8")))
    return out


# --- remote JWKS ---------------------------------------------------------------------------------

MAX_JWKS_BYTES = 1 << 20  # 1 MiB: real key sets are a few KiB


def fetch_url(uri: str, timeout: float) -> bytes:
    """GET a JWKS (blocking; run it in a thread)."""
    import urllib.request  # only proxies with remote key sets pay for it

    request = urllib.request.Request(uri, headers={"accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http(s) checked)
        body: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(body) > MAX_JWKS_BYTES:
        raise JwksError(f"JWKS from {uri} is larger than {MAX_JWKS_BYTES} bytes")
    return body


@dataclass(slots=True)
class _Entry:
    timeout: float
    keys: KeySet | None = None
    due: float = 0.0
    error: str = ""


class JwksCache:
    """The last good key set of each `jwks_uri`, refreshed every `ttl` seconds.

    `get` never blocks: it returns what was fetched (or None) and marks the URI as wanted.
    `run()` is the refresh loop; its owner (the proxy's task group) cancels it on shutdown.
    A failed fetch keeps the last good set and is retried after `retry` seconds.
    """

    __slots__ = ("_fetch", "_ttl", "_retry", "_clock", "_entries")

    def __init__(
        self,
        fetch: Callable[[str, float], bytes] = fetch_url,
        *,
        ttl: float = 300.0,  # 5 min: a rotated-in key works within minutes (istiod: 20 min)
        retry: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._retry = retry
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def want(self, uris: Mapping[str, float]) -> None:
        """Keep these URIs (with fetch timeouts, `JwtAuthenticator.jwks_uris`) fetched."""
        for uri, timeout in uris.items():
            self._entries.setdefault(uri, _Entry(timeout))

    def get(self, uri: str) -> KeySet | None:
        entry = self._entries.get(uri)
        if entry is None:
            self._entries[uri] = _Entry(DEFAULT_JWKS_TIMEOUT_MS / 1000)
            return None
        return entry.keys

    def error(self, uri: str) -> str:
        entry = self._entries.get(uri)
        return entry.error if entry else ""

    async def refresh(self) -> None:
        """Fetch every URI whose set is due, in threads, concurrently."""
        now = self._clock()
        due = [(uri, e) for uri, e in self._entries.items() if e.due <= now]
        await asyncio.gather(*(self._refresh_one(uri, e) for uri, e in due))

    async def _refresh_one(self, uri: str, entry: _Entry) -> None:
        try:
            body = await asyncio.to_thread(self._fetch, uri, entry.timeout)
            entry.keys = KeySet.parse(body)
            entry.error = ""
            entry.due = self._clock() + self._ttl
        except Exception as e:  # any failure: keep the last good set, try again soon
            entry.error = f"{type(e).__name__}: {e}"
            entry.due = self._clock() + self._retry

    async def run(self, tick: float = 1.0) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(tick)
