"""Security policy compiled for one workload: plain frozen data the proxy's filters run on.

The control plane resolves which AuthorizationPolicy and RequestAuthentication resources select a
workload (`plait.control.policy_compiler`) and emits one `PolicySet`; the proxy reads it with
`PolicySet.from_dict` and builds its matchers once per snapshot (`plait.proxy.filters.authz`,
`plait.proxy.filters.jwt_authn`). Every rule about what a valid policy is (actions, condition
keys, ports, IP blocks, JWKS shape) lives here, so both planes enforce it alike: the compiler
runs its output through `from_dict` before sending it.

The dict shape keeps Istio's structure in snake_case, with `source`/`operation` flattened:
`{"authorization": [{"name", "namespace", "action", "rules": [{"from": [{"principals": [...]}],
"to": [{"paths": [...]}], "when": [{"key", "values", "not_values"}]}]}], "jwt_rules": [...]}`.
Errors name the field path (`authorization[1].rules[0].when[2].key: unknown condition key ...`).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "ACTIONS",
    "AuthzCondition",
    "AuthzOperation",
    "AuthzRule",
    "AuthzSource",
    "ClaimToHeader",
    "CompiledAuthzPolicy",
    "JwtHeader",
    "JwtRule",
    "PolicyError",
    "PolicySet",
    "check_ip_block",
    "check_jwks",
    "check_port",
    "parse_condition_key",
]

# Where a JWKS may come from: fetched over HTTP(S), or read from a file on the proxy's host
# (file:///etc/plait/jwks.json), re-read on the same schedule as a URL.
JWKS_SCHEMES = ("https://", "http://", "file://")

# CUSTOM (an external authorizer) has no plait implementation; refusing it beats ignoring it.
ACTIONS = ("ALLOW", "DENY", "AUDIT")

# Istio's condition keys (reference: security/conditions) that plait evaluates. Bracketed ones
# take names: `request.headers[x-token]`, `request.auth.claims[groups]`, `...claims[a][b]`.
PLAIN_KEYS = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.port",
    }
)
BRACKET_KEYS = frozenset({"request.headers", "request.auth.claims"})
IP_KEYS = frozenset({"source.ip", "remote.ip"})
_BRACKETS = re.compile(r"(\[[^\[\]]+\])+")
_TEMPLATE = re.compile(r"\{\*\*?\}")

# Envoy's default token locations when a JWT rule names none (jwt_authn JwtProvider docs).
DEFAULT_JWT_HEADER_NAME = "authorization"
DEFAULT_JWT_HEADER_PREFIX = "Bearer "
DEFAULT_JWT_PARAMS = ("access_token",)
# 5 s: Istio's default `timeout` for fetching a jwksUri.
DEFAULT_JWKS_TIMEOUT_MS = 5000


class PolicyError(ValueError):
    """A policy set the proxy cannot apply; the message starts with the field path."""


# --- rules shared by both planes -----------------------------------------------------------------


def parse_condition_key(key: str) -> tuple[str, tuple[str, ...]]:
    """Split `request.auth.claims[a][b]` into ("request.auth.claims", ("a", "b"))."""
    if key in PLAIN_KEYS:
        return key, ()
    base, bracket, _ = key.partition("[")
    names = key[len(base) :]
    if base in BRACKET_KEYS and bracket and _BRACKETS.fullmatch(names):
        parts = tuple(names[1:-1].split("]["))
        if base == "request.headers" and len(parts) != 1:
            raise ValueError(f"{key!r}: request.headers takes one header name")
        return base, parts
    supported = ", ".join(sorted(PLAIN_KEYS) + [f"{k}[name]" for k in sorted(BRACKET_KEYS)])
    raise ValueError(f"unknown condition key {key!r}; supported: {supported}")


def check_ip_block(value: str) -> str:
    """An address or CIDR block, as Istio's ipBlocks and `source.ip` take them."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR block") from None
    return value


def check_port(value: str) -> str:
    """A port as Istio writes it in policies: a decimal string, 1-65535."""
    if not (value.isascii() and value.isdigit() and 0 < int(value) < 65536):
        raise ValueError(f"{value!r} is not a port number (1-65535)")
    return value


def _check_path(value: str) -> str:
    # Istio 1.22+ reads `{*}` and `{**}` as path templates; matching them literally would differ.
    if _TEMPLATE.search(value):
        raise ValueError(f"{value!r}: path templates ({{*}}, {{**}}) are not supported")
    return value


def check_jwks(value: str) -> str:
    """RFC 7517 section 5: a JSON object whose `keys` is a list of objects."""
    try:
        data = json.loads(value)
    except ValueError as e:
        raise ValueError(f"not valid JSON: {e}") from None
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ValueError('a JWKS is a JSON object with a "keys" list of objects')
    return value


# --- reading ----------------------------------------------------------------------------------


class _Reader:
    """Reads one mapping, remembering its path so every error names the field."""

    __slots__ = ("data", "path", "seen")

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise PolicyError(f"{path or '<root>'}: expected a mapping, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type, default: Any = ...) -> Any:
        self.seen.add(key)
        value = self.data.get(key)
        if value is None:
            if default is ...:
                raise PolicyError(f"{self.where(key)}: required field is missing")
            return default
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise PolicyError(
                f"{self.where(key)}: expected {kind.__name__}, got {type(value).__name__}"
            )
        return value

    def items(self, key: str) -> list[tuple[str, Any]]:
        """A list field: (path of each element, element)."""
        return [(f"{self.where(key)}[{i}]", v) for i, v in enumerate(self.get(key, list, []))]

    def strings(
        self, key: str, check: Any = None, default: tuple[str, ...] = ()
    ) -> tuple[str, ...]:
        if self.data.get(key) is None:
            self.seen.add(key)
            return default
        out = []
        for where, v in self.items(key):
            if not isinstance(v, str):
                raise PolicyError(f"{where}: expected str, got {type(v).__name__}")
            out.append(_checked(check, v, where))
        return tuple(out)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise PolicyError(f"{self.where(unknown[0])}: unknown field")


def _checked(check: Any, value: Any, where: str) -> Any:
    if check is None:
        return value
    try:
        return check(value)
    except ValueError as e:
        raise PolicyError(f"{where}: {e}") from None


def _non_empty(obj: Any) -> dict[str, list[str]]:
    """The list fields of a source or operation that are set (the dict form leaves out the rest)."""
    return {f.name: list(getattr(obj, f.name)) for f in fields(obj) if getattr(obj, f.name)}


# --- AuthorizationPolicy -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthzSource:
    """`rules[].from[].source`: fields ANDed, values within a field ORed, `not_*` negated."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    request_principals: tuple[str, ...] = ()
    not_request_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()
    remote_ip_blocks: tuple[str, ...] = ()
    not_remote_ip_blocks: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str) -> AuthzSource:
        r = _Reader(data, path)
        values = {
            f.name: r.strings(f.name, check_ip_block if "ip_blocks" in f.name else None)
            for f in fields(cls)
        }
        r.done()
        if not any(values.values()):
            raise PolicyError(f"{path}: a source must set at least one field")  # Istio's rule
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return _non_empty(self)


@dataclass(frozen=True, slots=True)
class AuthzOperation:
    """`rules[].to[].operation`: fields ANDed, values within a field ORed, `not_*` negated."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str) -> AuthzOperation:
        r = _Reader(data, path)
        checks = {"ports": check_port, "not_ports": check_port}
        checks |= {"paths": _check_path, "not_paths": _check_path}
        values = {f.name: r.strings(f.name, checks.get(f.name)) for f in fields(cls)}
        r.done()
        if not any(values.values()):
            raise PolicyError(f"{path}: an operation must set at least one field")  # Istio's rule
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return _non_empty(self)


@dataclass(frozen=True, slots=True)
class AuthzCondition:
    """`rules[].when[]`: matches one of `values` (if any) and none of `not_values`."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str) -> AuthzCondition:
        r = _Reader(data, path)
        key = r.get("key", str)
        base, _ = _checked(parse_condition_key, key, f"{path}.key")
        check = check_ip_block if base in IP_KEYS else None
        check = check_port if base == "destination.port" else check
        cond = cls(key, r.strings("values", check), r.strings("not_values", check))
        r.done()
        if not cond.values and not cond.not_values:
            raise PolicyError(f"{path}: set values or not_values")  # Istio's rule
        return cond

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "values": list(self.values), "not_values": list(self.not_values)}


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """`from` AND `to` AND every `when`; entries of `from` (and of `to`) are ORed; `{}` matches all."""

    from_: tuple[AuthzSource, ...] = ()
    to: tuple[AuthzOperation, ...] = ()
    when: tuple[AuthzCondition, ...] = ()

    @classmethod
    def from_dict(cls, data: Any, path: str) -> AuthzRule:
        r = _Reader(data, path)
        rule = cls(
            from_=tuple(AuthzSource.from_dict(x, w) for w, x in r.items("from")),
            to=tuple(AuthzOperation.from_dict(x, w) for w, x in r.items("to")),
            when=tuple(AuthzCondition.from_dict(x, w) for w, x in r.items("when")),
        )
        r.done()
        return rule

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": [s.to_dict() for s in self.from_],
            "to": [o.to_dict() for o in self.to],
            "when": [c.to_dict() for c in self.when],
        }


@dataclass(frozen=True, slots=True)
class CompiledAuthzPolicy:
    """One AuthorizationPolicy that selects the workload; no rules: ALLOW matches nothing."""

    name: str
    namespace: str
    action: str = "ALLOW"
    rules: tuple[AuthzRule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_dict(cls, data: Any, path: str) -> CompiledAuthzPolicy:
        r = _Reader(data, path)
        action = r.get("action", str, "ALLOW")
        if action not in ACTIONS:
            extra = " (CUSTOM needs an external authorizer, which plait lacks)"
            raise PolicyError(
                f"{path}.action: must be one of {', '.join(ACTIONS)}"
                + (extra if action == "CUSTOM" else "")
            )
        policy = cls(
            name=r.get("name", str),
            namespace=r.get("namespace", str, "default"),
            action=action,
            rules=tuple(AuthzRule.from_dict(x, w) for w, x in r.items("rules")),
        )
        r.done()
        return policy

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "namespace": self.namespace,
            "action": self.action,
            "rules": [x.to_dict() for x in self.rules],
        }


# --- RequestAuthentication -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JwtHeader:
    """A header that carries the token after `prefix` (`Authorization: Bearer <token>`)."""

    name: str  # lower case
    prefix: str = ""

    @classmethod
    def from_dict(cls, data: Any, path: str) -> JwtHeader:
        r = _Reader(data, path)
        name = r.get("name", str)
        if not name:
            raise PolicyError(f"{path}.name: must not be empty")
        h = cls(name.lower(), r.get("prefix", str, ""))
        r.done()
        return h


@dataclass(frozen=True, slots=True)
class ClaimToHeader:
    """Copy a verified claim (string, number or boolean) into a request header for the app."""

    header: str  # lower case
    claim: str

    @classmethod
    def from_dict(cls, data: Any, path: str) -> ClaimToHeader:
        r = _Reader(data, path)
        c = cls(r.get("header", str).lower(), r.get("claim", str))
        r.done()
        if not c.header or not c.claim:
            raise PolicyError(f"{path}: header and claim must not be empty")
        return c


DEFAULT_JWT_HEADERS = (JwtHeader(DEFAULT_JWT_HEADER_NAME, DEFAULT_JWT_HEADER_PREFIX),)


@dataclass(frozen=True, slots=True)
class JwtRule:
    """One `jwtRules[]` entry: whose tokens are accepted, where they are read, how keys are got.

    Keys come inline (`jwks`, JSON text) or from `jwks_uri`, which the proxy fetches and caches.
    """

    issuer: str
    audiences: tuple[str, ...] = ()
    jwks: str = ""
    jwks_uri: str = ""
    jwks_timeout_ms: int = DEFAULT_JWKS_TIMEOUT_MS
    from_headers: tuple[JwtHeader, ...] = DEFAULT_JWT_HEADERS
    from_params: tuple[str, ...] = DEFAULT_JWT_PARAMS
    from_cookies: tuple[str, ...] = ()
    forward_original_token: bool = False
    output_payload_to_header: str = ""
    output_claim_to_headers: tuple[ClaimToHeader, ...] = ()
    policy: str = ""  # namespace/name of the RequestAuthentication, for messages

    @classmethod
    def from_dict(cls, data: Any, path: str) -> JwtRule:
        r = _Reader(data, path)
        jwks = r.get("jwks", str, "")
        if jwks:
            _checked(check_jwks, jwks, f"{path}.jwks")
        headers = tuple(JwtHeader.from_dict(x, w) for w, x in r.items("from_headers"))
        rule = cls(
            issuer=r.get("issuer", str),
            audiences=r.strings("audiences"),
            jwks=jwks,
            jwks_uri=r.get("jwks_uri", str, ""),
            jwks_timeout_ms=r.get("jwks_timeout_ms", int, DEFAULT_JWKS_TIMEOUT_MS),
            # Absent means Envoy's default location; an explicit empty list means none.
            from_headers=headers if r.data.get("from_headers") is not None else DEFAULT_JWT_HEADERS,
            from_params=r.strings("from_params", default=DEFAULT_JWT_PARAMS),
            from_cookies=r.strings("from_cookies"),
            forward_original_token=r.get("forward_original_token", bool, False),
            output_payload_to_header=r.get("output_payload_to_header", str, "").lower(),
            output_claim_to_headers=tuple(
                ClaimToHeader.from_dict(x, w) for w, x in r.items("output_claim_to_headers")
            ),
            policy=r.get("policy", str, ""),
        )
        r.done()
        rule._check(path)
        return rule

    def _check(self, path: str) -> None:
        if not self.issuer:
            raise PolicyError(f"{path}.issuer: must not be empty")
        if bool(self.jwks) == bool(self.jwks_uri):
            raise PolicyError(f"{path}: set exactly one of jwks and jwks_uri")
        if self.jwks_uri and not self.jwks_uri.startswith(JWKS_SCHEMES):
            raise PolicyError(f"{path}.jwks_uri: must be an http://, https:// or file:// URL")
        if self.jwks_timeout_ms <= 0:
            raise PolicyError(f"{path}.jwks_timeout_ms: must be > 0")
        if not (self.from_headers or self.from_params or self.from_cookies):
            raise PolicyError(
                f"{path}: no token location (from_headers, from_params, from_cookies)"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "audiences": list(self.audiences),
            "jwks": self.jwks,
            "jwks_uri": self.jwks_uri,
            "jwks_timeout_ms": self.jwks_timeout_ms,
            "from_headers": [{"name": h.name, "prefix": h.prefix} for h in self.from_headers],
            "from_params": list(self.from_params),
            "from_cookies": list(self.from_cookies),
            "forward_original_token": self.forward_original_token,
            "output_payload_to_header": self.output_payload_to_header,
            "output_claim_to_headers": [
                {"header": c.header, "claim": c.claim} for c in self.output_claim_to_headers
            ],
            "policy": self.policy,
        }


# --- the set -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PolicySet:
    """Every authorization policy and JWT rule that applies to one workload, selectors resolved."""

    authorization: tuple[CompiledAuthzPolicy, ...] = ()
    jwt_rules: tuple[JwtRule, ...] = ()

    @classmethod
    def empty(cls) -> PolicySet:
        """No policy: every request is allowed and no token is checked (Istio's default)."""
        return _EMPTY

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> PolicySet:
        r = _Reader(data, path)
        ps = cls(
            authorization=tuple(
                CompiledAuthzPolicy.from_dict(x, w) for w, x in r.items("authorization")
            ),
            jwt_rules=tuple(JwtRule.from_dict(x, w) for w, x in r.items("jwt_rules")),
        )
        r.done()
        return ps

    def to_dict(self) -> dict[str, Any]:
        return {
            "authorization": [p.to_dict() for p in self.authorization],
            "jwt_rules": [j.to_dict() for j in self.jwt_rules],
        }


_EMPTY = PolicySet()
