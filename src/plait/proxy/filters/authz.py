"""AuthorizationPolicy enforcement for the inbound side, with Istio's semantics.

Theory of operation (istio.io/latest/docs/reference/config/security/authorization-policy/):

1. CUSTOM cannot occur: `PolicySet` refuses it (plait has no external authorizer).
2. If any DENY policy matches the request, deny it.
3. If no ALLOW policy applies to the workload, allow it.
4. If any ALLOW policy matches, allow it; otherwise deny it.
AUDIT policies never change the outcome; a matching one sets `Decision.audit`.

A policy matches when one of its rules does. In a rule, `from`, `to` and `when` are ANDed; the
entries of `from` (and of `to`) are ORed; the fields of one source or operation are ANDed; the
values of one field are ORed; a `not_*` field matches when none of its values does. So an ALLOW
policy without rules (`spec: {}`) allows nothing, `rules: [{}]` matches everything, and a DENY
policy without rules denies nothing.

Strings match as Istio's do: `abc` exact, `abc*` prefix, `*abc` suffix, `*` any non-empty
value; hosts ignore case; a missing attribute (no peer principal on plaintext, no JWT) is the
empty string, so only `not_*` fields and `notValues` can match it. Paths are matched as the
proxy normalized them (`path_normalize`). Matchers are built once per `PolicySet`; `check` only
compares strings and returns decisions built in advance.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from types import MappingProxyType
from typing import Any

from plait.config.policy import (
    IP_KEYS,
    AuthzCondition,
    AuthzOperation,
    AuthzRule,
    AuthzSource,
    CompiledAuthzPolicy,
    PolicySet,
    parse_condition_key,
)

__all__ = ["Authorizer", "Decision", "RequestAttributes", "namespace_of", "string_match"]

Headers = Sequence[tuple[bytes, bytes]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NO_CLAIMS: Mapping[str, Any] = MappingProxyType({})


def namespace_of(principal: str) -> str:
    """The namespace in an Istio principal `<td>/ns/<namespace>/sa/<account>`, else ""."""
    parts = principal.split("/")
    return parts[2] if len(parts) >= 5 and parts[1] == "ns" and parts[3] == "sa" else ""


class RequestAttributes:
    """What policies look at, gathered once per request by the inbound path.

    `source_principal` is the peer's SPIFFE ID without `spiffe://`, as Istio writes principals
    (`cluster.local/ns/default/sa/productpage`); empty on plaintext. `source_namespace` defaults
    to the namespace in that principal, as Istio derives it. `request_principal` (`iss/sub`) and
    `request_claims` come from a verified JWT and may be set after construction.
    """

    __slots__ = (
        "source_principal",
        "source_namespace",
        "source_ip",
        "remote_ip",
        "request_principal",
        "request_claims",
        "method",
        "authority",
        "host",
        "port",
        "path",
        "headers",
        "_addresses",
    )

    def __init__(
        self,
        *,
        source_principal: str = "",
        source_namespace: str | None = None,
        source_ip: str = "",
        remote_ip: str | None = None,
        request_principal: str = "",
        request_claims: Mapping[str, Any] = _NO_CLAIMS,
        method: str = "GET",
        authority: str = "",
        port: int = 0,
        path: str = "/",
        headers: Headers = (),
    ) -> None:
        self.source_principal = source_principal
        if source_namespace is None:
            source_namespace = namespace_of(source_principal)
        self.source_namespace = source_namespace
        self.source_ip = source_ip
        self.remote_ip = source_ip if remote_ip is None else remote_ip  # X-Forwarded-For's client
        self.request_principal = request_principal
        self.request_claims = request_claims
        self.method = method
        self.authority = authority.lower()
        self.host = _strip_port(self.authority)
        self.port = port
        self.path = path  # normalized, without the query
        self.headers = headers
        self._addresses: dict[str, IPAddress | None] | None = None

    def address(self, which: str) -> IPAddress | None:
        """`source_ip` or `remote_ip` parsed once, None when it is not an address."""
        if self._addresses is None:
            self._addresses = {}
        if which not in self._addresses:
            try:
                self._addresses[which] = ipaddress.ip_address(getattr(self, which))
            except ValueError:
                self._addresses[which] = None
        return self._addresses[which]

    def header(self, name: bytes) -> str | None:
        """One header's value; repeated fields are joined with "," (RFC 9110 section 5.3)."""
        found = None
        for n, v in self.headers:
            if n == name:
                found = v if found is None else found + b"," + v
        return None if found is None else found.decode("latin-1")


def _strip_port(authority: str) -> str:
    if authority.startswith("["):  # RFC 3986 section 3.2.2: an IPv6 literal
        end = authority.find("]")
        return authority[: end + 1] if end > 0 else authority
    host, _, port = authority.rpartition(":")
    return host if host and port.isdigit() else authority


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome: `action` is "ALLOW" or "DENY"; `policy` (namespace/name) decided, if any."""

    allowed: bool
    action: str
    policy: str | None
    reason: str
    audit: bool = False
    audit_policy: str | None = None


ALLOWED_NO_POLICY = Decision(True, "ALLOW", None, "no ALLOW policy applies to the workload")
DENIED_NO_MATCH = Decision(False, "DENY", None, "no ALLOW policy matched")


Match = Callable[[str], bool]


def string_match(patterns: Iterable[str], *, fold_case: bool = False) -> Match:
    """Istio's string matching over a list of patterns: true if any pattern matches.

    Built once per policy set into the cheapest test that does the job: a set lookup for exact
    values, `str.startswith` with a tuple for prefixes, `bool` for presence.
    """
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    presence = False
    for p in patterns:
        p = p.lower() if fold_case else p
        if p == "*":
            presence = True
        elif p.startswith("*"):
            suffixes.append(p[1:])
        elif p.endswith("*"):
            prefixes.append(p[:-1])
        else:
            exact.add(p)
    match = _combine(frozenset(exact), tuple(prefixes), tuple(suffixes), presence)
    if fold_case:
        return lambda value: match(value.lower())
    return match


def _combine(
    exact: frozenset[str], pre: tuple[str, ...], suf: tuple[str, ...], any_: bool
) -> Match:
    if any_ and "" not in exact:
        return bool  # `*` matches every non-empty value, which covers the other patterns
    if any_:
        return lambda v: True
    if not pre and not suf:
        return exact.__contains__
    if not exact and not suf:
        return lambda v: v.startswith(pre)
    return lambda v: v in exact or v.startswith(pre) or v.endswith(suf)


# --- building matchers ------------------------------------------------------------------------
# A check is a function of the request; a policy becomes a flat list of (rule check, decision).

Check = Callable[[RequestAttributes], bool]


def _always(req: RequestAttributes) -> bool:
    return True


def _all(checks: Sequence[Check]) -> Check:
    if not checks:
        return _always
    if len(checks) == 1:
        return checks[0]
    parts = tuple(checks)

    def all_of(req: RequestAttributes) -> bool:
        for check in parts:  # noqa: SIM110 (a plain loop allocates no generator per request)
            if not check(req):
                return False
        return True

    return all_of


def _any(checks: Sequence[Check]) -> Check:
    if len(checks) == 1:
        return checks[0]
    parts = tuple(checks)

    def any_of(req: RequestAttributes) -> bool:
        for check in parts:  # noqa: SIM110 (a plain loop allocates no generator per request)
            if check(req):
                return True
        return False

    return any_of


def _negate(check: Check) -> Check:
    return lambda req: not check(req)


def _string(attr: str, patterns: Iterable[str]) -> Check:
    match, get = string_match(patterns), attrgetter(attr)
    return lambda req: match(get(req))


def _host(patterns: Iterable[str]) -> Check:
    # Istio matches hosts case-insensitively; a pattern may be written with or without the port.
    match = string_match(patterns, fold_case=True)
    return lambda req: match(req.host) or match(req.authority)


def _port(ports: Iterable[str]) -> Check:
    wanted = frozenset(int(p) for p in ports)
    return lambda req: req.port in wanted


def _ip(which: str, blocks: Iterable[str]) -> Check:
    networks = tuple(ipaddress.ip_network(b, strict=False) for b in blocks)

    def in_blocks(req: RequestAttributes) -> bool:
        addr = req.address(which)
        return addr is not None and any(addr in net for net in networks)

    return in_blocks


def _header(name: str, patterns: Iterable[str]) -> Check:
    key, match = name.lower().encode("latin-1"), string_match(patterns)

    def header_matches(req: RequestAttributes) -> bool:
        value = req.header(key)
        return value is not None and match(value)

    return header_matches


def _claim(path: tuple[str, ...], patterns: Iterable[str]) -> Check:
    # Istio: a claim is a string or a list of strings (a list matches if any element does).
    match = string_match(patterns)

    def claim_matches(req: RequestAttributes) -> bool:
        value: Any = req.request_claims
        for name in path:
            if not isinstance(value, Mapping) or name not in value:
                return False
            value = value[name]
        if isinstance(value, str):
            return match(value)
        return isinstance(value, list) and any(isinstance(v, str) and match(v) for v in value)

    return claim_matches


_ATTRIBUTE_OF_KEY = {
    "source.principal": "source_principal",
    "source.namespace": "source_namespace",
    "request.auth.principal": "request_principal",
}
_CLAIM_OF_KEY = {"request.auth.audiences": ("aud",), "request.auth.presenter": ("azp",)}


def _condition_check(key: str, values: tuple[str, ...]) -> Check:
    base, names = parse_condition_key(key)
    if base in IP_KEYS:
        return _ip("source_ip" if base == "source.ip" else "remote_ip", values)
    if base == "destination.port":
        return _port(values)
    if base == "request.headers":
        return _header(names[0], values)
    if base == "request.auth.claims":
        return _claim(names, values)
    if base in _CLAIM_OF_KEY:
        return _claim(_CLAIM_OF_KEY[base], values)
    return _string(_ATTRIBUTE_OF_KEY[base], values)


def _condition(cond: AuthzCondition) -> Check:
    checks = []
    if cond.values:
        checks.append(_condition_check(cond.key, cond.values))
    if cond.not_values:
        checks.append(_negate(_condition_check(cond.key, cond.not_values)))
    return _all(checks)


def _fields(obj: Any, builders: Mapping[str, Callable[[tuple[str, ...]], Check]]) -> Check:
    """A source or operation: every set field must hold; `not_x` is the negation of `x`."""
    checks = []
    for name, build in builders.items():
        if values := getattr(obj, name):
            checks.append(build(values))
        if values := getattr(obj, f"not_{name}"):
            checks.append(_negate(build(values)))
    return _all(checks)


_SOURCE_FIELDS: dict[str, Callable[[tuple[str, ...]], Check]] = {
    "principals": lambda v: _string("source_principal", v),
    "request_principals": lambda v: _string("request_principal", v),
    "namespaces": lambda v: _string("source_namespace", v),
    "ip_blocks": lambda v: _ip("source_ip", v),
    "remote_ip_blocks": lambda v: _ip("remote_ip", v),
}
_OPERATION_FIELDS: dict[str, Callable[[tuple[str, ...]], Check]] = {
    "hosts": _host,
    "ports": _port,
    "methods": lambda v: _string("method", v),
    "paths": lambda v: _string("path", v),
}


def _source(src: AuthzSource) -> Check:
    return _fields(src, _SOURCE_FIELDS)


def _operation(op: AuthzOperation) -> Check:
    return _fields(op, _OPERATION_FIELDS)


def _rule(rule: AuthzRule) -> Check:
    parts: list[Check] = []
    if rule.from_:
        parts.append(_any([_source(s) for s in rule.from_]))
    if rule.to:
        parts.append(_any([_operation(o) for o in rule.to]))
    parts += [_condition(c) for c in rule.when]
    return _all(parts)


# --- TCP connections: no HTTP fields to match ---------------------------------------------------

# What only an HTTP request has (Istio's "HTTP-only fields"): a TCP connection has none of them.
_HTTP_SOURCE_FIELDS = ("request_principals", "not_request_principals")
_HTTP_OPERATION_FIELDS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")


def _http_only_key(key: str) -> bool:
    return key.startswith(("request.headers", "request.auth."))


def _has_http_fields(rule: AuthzRule) -> bool:
    return (
        any(getattr(s, f) for s in rule.from_ for f in _HTTP_SOURCE_FIELDS)
        or any(getattr(o, f) for o in rule.to for f in _HTTP_OPERATION_FIELDS)
        or any(_http_only_key(c.key) for c in rule.when)
    )


def _without_http_fields(rule: AuthzRule) -> AuthzRule:
    """The rule with its HTTP-only fields dropped: for a DENY rule applied to TCP this makes it
    match more, never less (Istio's semantics: a deny is never weakened by what TCP lacks)."""
    blank_source = dict.fromkeys(_HTTP_SOURCE_FIELDS, ())
    blank_operation = dict.fromkeys(_HTTP_OPERATION_FIELDS, ())
    return AuthzRule(
        from_=tuple(replace(s, **blank_source) for s in rule.from_),
        to=tuple(replace(o, **blank_operation) for o in rule.to),
        when=tuple(c for c in rule.when if not _http_only_key(c.key)),
    )


# --- the filter --------------------------------------------------------------------------------


class Authorizer:
    """Decides requests for one workload; built once per snapshot, immutable, shared by streams."""

    __slots__ = ("_deny", "_allow", "_audit", "_has_allow", "_tcp")

    def __init__(self, policies: PolicySet, tcp: bool = False) -> None:
        rules: dict[str, list[tuple[Check, Decision]]] = {"ALLOW": [], "DENY": [], "AUDIT": []}
        for policy in policies.authorization:
            if policy.action not in rules:
                raise ValueError(f"policy {policy.key}: unsupported action {policy.action}")
            for i, rule in enumerate(policy.rules):
                if tcp and _has_http_fields(rule):
                    # For TCP, Istio drops an ALLOW (or AUDIT) rule with HTTP-only fields (it
                    # can never match) and keeps a DENY rule without them (it matches more).
                    if policy.action != "DENY":
                        continue
                    rule = _without_http_fields(rule)
                rules[policy.action].append((_rule(rule), _decision(policy, i)))
        self._deny = tuple(rules["DENY"])
        self._allow = tuple(rules["ALLOW"])
        self._audit = tuple((check, d.policy) for check, d in rules["AUDIT"])
        self._tcp: Authorizer | None = None
        # An ALLOW policy without rules still turns on deny-by-default (allow-nothing).
        self._has_allow = any(p.action == "ALLOW" for p in policies.authorization)

    @property
    def enabled(self) -> bool:
        """False when no policy applies: every request is allowed and `check` can be skipped."""
        return bool(self._deny or self._audit or self._has_allow)

    def for_tcp(self, policies: PolicySet) -> Authorizer:
        """The same policies as they apply to TCP connections (built once, on first use)."""
        if self._tcp is None:
            self._tcp = Authorizer(policies, tcp=True)
        return self._tcp

    def check(self, req: RequestAttributes) -> Decision:
        decision = self._decide(req)
        for matches, policy in self._audit:
            if matches(req):
                return replace(decision, audit=True, audit_policy=policy)
        return decision

    def _decide(self, req: RequestAttributes) -> Decision:
        for matches, decision in self._deny:
            if matches(req):
                return decision
        if not self._has_allow:
            return ALLOWED_NO_POLICY
        for matches, decision in self._allow:
            if matches(req):
                return decision
        return DENIED_NO_MATCH


def _decision(policy: CompiledAuthzPolicy, rule: int) -> Decision:
    allowed = policy.action != "DENY"
    verb = "allowed" if allowed else "denied"
    reason = f"{verb} by {policy.action} policy {policy.key}, rule {rule}"
    return Decision(allowed, "ALLOW" if allowed else "DENY", policy.key, reason)
