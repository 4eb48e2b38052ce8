"""Route tables compiled from a snapshot: a request -> a routing `Decision` (pure).

Outbound (mesh) routing is GAMMA style: the request's authority names a Service
(`reviews`, `reviews:9080`, `reviews.default.svc.cluster.local`); HTTPRoutes whose parent is
that Service pick among backends, else the Service itself is the backend. Gateway routing
matches the routes attached to the gateway's Gateway resource, by hostname then rule.

Precedence is the Gateway API's (HTTPRouteRule.matches), across all routes of one parent: an
Exact path; then a RegularExpression path (its rank is left to implementations: plait puts it
after Exact and before any prefix, a longer pattern first); then the longest PathPrefix in
characters; a method match; more header matches; more query parameter matches;
then the oldest route (the store keeps no creation time yet, so namespace/name order decides);
then the first rule. Gateway routes rank by hostname before that: an exact hostname, then
longer wildcards, then routes without hostnames.

Cost: each rule x backend gets a ready `Decision` when the table is built, so a rule without
per-request filters returns it as is. Only faults, sampled mirrors, redirects and path rewrites
build a `Decision` per request; the query string is parsed only when a rule with query
parameter matches is reached, and then once.
"""

from __future__ import annotations

import random
import re
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Final
from urllib.parse import parse_qsl

from plait.config.snapshot import (
    BackendRef,
    Cluster,
    Mirror,
    Redirect,
    Rewrite,
    Route,
    RouteMatch,
    RouteRule,
    Snapshot,
)
from plait.proto.events import Headers
from plait.proxy.filters.faults import FaultAction
from plait.proxy.filters.route_filters import HeaderEdit, LocalReply, redirect_reply, rewrite_path
from plait.proxy.resilience import DEFAULT_RETRY_POLICY, RetryPolicy

__all__ = ["NO_SERVICE", "Decision", "RouteTable", "parse_query", "split_authority"]

NO_SERVICE: Final = ("", "")  # the service of a Decision that answers locally
_ANY, _EXACT, _PREFIX, _REGEX = range(4)
_PATH_ORDER: Final = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}
# Gateway API: a rule whose backends can take no traffic (none, or all weight 0) answers 500.
_NO_BACKEND: Final = LocalReply(
    500, "NC", (), b"no backend: the matched rule has none of weight > 0"
)


@dataclass(frozen=True, slots=True)
class Decision:
    """What the proxy does with a request: where it goes, and the filters on the way."""

    service: tuple[str, str]  # (namespace, name) to balance over; NO_SERVICE with a `reply`
    route: str
    timeout_ms: int = 0  # timeouts.request: the whole exchange, retries included; 0: none
    backend_timeout_ms: int = 0  # timeouts.backendRequest: each upstream attempt; 0: none
    request_headers: tuple[HeaderEdit, ...] = ()  # edit_headers() before forwarding
    response_headers: tuple[HeaderEdit, ...] = ()  # edit_headers() on the upstream response
    path: bytes | None = None  # URLRewrite: the new request target, query included
    authority: bytes | None = None  # URLRewrite: the new Host / :authority
    mirrors: tuple[Mirror, ...] = ()  # fire-and-forget copies, already sampled
    delay_ms: int = 0  # fault: wait this long before anything else
    reply: LocalReply | None = None  # answer this instead of forwarding (after the delay)
    retry: RetryPolicy = DEFAULT_RETRY_POLICY  # the rule's retries (default: connect failures)


class _Target:
    """One backend of one rule: its ready Decision, and what is decided per request."""

    def __init__(self, route: str, rule: RouteRule, backend: BackendRef | None) -> None:
        layers = (rule.filters,) if backend is None else (rule.filters, backend.filters)
        # A backend's own rewrite or fault replaces the rule's; header edits apply in turn.
        own = layers[-1]
        self.rewrite: Rewrite | None = own.rewrite or rule.filters.rewrite
        fault = own.fault or rule.filters.fault
        self.fault = FaultAction.of(fault) if fault is not None else None
        self.redirect: Redirect | None = rule.filters.redirect
        mirrors = [m for f in layers for m in f.mirrors if m.numerator]
        self.sampled = tuple(m for m in mirrors if m.numerator < m.denominator)
        hostname = self.rewrite.hostname if self.rewrite is not None else None
        self.decision = Decision(
            service=NO_SERVICE if backend is None else (backend.namespace, backend.service),
            route=route,
            timeout_ms=rule.timeout_ms,
            backend_timeout_ms=rule.backend_timeout_ms,
            request_headers=tuple(
                HeaderEdit.of(f.request_headers) for f in layers if f.request_headers
            ),
            response_headers=tuple(
                HeaderEdit.of(f.response_headers) for f in layers if f.response_headers
            ),
            authority=hostname.encode() if hostname else None,
            mirrors=tuple(m for m in mirrors if m.numerator >= m.denominator),
            reply=_NO_BACKEND if backend is None and self.redirect is None else None,
            retry=RetryPolicy.from_config(rule.retries) if rule.retries else DEFAULT_RETRY_POLICY,
        )
        self.static = (
            self.fault is None
            and self.redirect is None
            and not self.sampled
            and (self.rewrite is None or self.rewrite.path is None)
        )

    def finish(
        self,
        rng: random.Random,
        scheme: str,
        authority: bytes,
        path: bytes,
        query: bytes,
        prefix: bytes,
    ) -> Decision:
        """The Decision for one request: fault, then redirect, sampled mirrors and rewrite."""
        d = self.decision
        delay, reply = (0, None) if self.fault is None else self.fault.decide(rng)
        reply = reply or d.reply
        if reply is None and self.redirect is not None:
            host, port = split_authority(authority)
            reply = redirect_reply(self.redirect, scheme, host, port, path, query, prefix)
        if reply is not None:
            return Decision(d.service, d.route, delay_ms=delay, reply=reply)
        mirrors = d.mirrors
        if self.sampled:
            mirrors += tuple(m for m in self.sampled if rng.random() * m.denominator < m.numerator)
        rewrite = self.rewrite
        return Decision(
            d.service,
            d.route,
            d.timeout_ms,
            d.backend_timeout_ms,
            d.request_headers,
            d.response_headers,
            rewrite_path(rewrite, path, query, prefix) if rewrite is not None else None,
            d.authority,
            mirrors,
            delay,
            None,
            d.retry,
        )


def _targets(route: str, rule: RouteRule) -> tuple[tuple[_Target, ...], tuple[int, ...]]:
    """The rule's weighted targets and their cumulative weights (weight 0 takes no traffic)."""
    live = [b for b in rule.backends if b.weight > 0]
    if rule.filters.redirect is not None or not live:
        return (_Target(route, rule, None),), (1,)
    targets = tuple(_Target(route, rule, b) for b in live)
    return targets, tuple(accumulate(b.weight for b in live))


_Value = tuple[bytes, bytes, "re.Pattern[str] | None"]
_Param = tuple[str, str, "re.Pattern[str] | None"]


class _Entry:
    """One match of one rule, compiled to bytes, sharing the rule's weighted targets."""

    def __init__(
        self, m: RouteMatch, targets: tuple[_Target, ...], cumulative: tuple[int, ...]
    ) -> None:
        kind, value = (m.path.type, m.path.value) if m.path is not None else ("PathPrefix", "/")
        self.kind = {"Exact": _EXACT, "PathPrefix": _PREFIX, "RegularExpression": _REGEX}[kind]
        self.path = value.encode() if kind == "Exact" else value.encode().rstrip(b"/")
        if self.kind == _PREFIX and not self.path:
            self.kind = _ANY  # PathPrefix "/" matches every path
        self.slash = self.path + b"/"
        self.regex = m.path.regex if m.path is not None else None
        self.prefix = value.encode()  # what ReplacePrefixMatch replaces
        self.method = m.method.encode() if m.method is not None else None
        self.headers: tuple[_Value, ...] = tuple(
            (h.name.encode(), h.value.encode(), h.regex) for h in m.headers
        )
        self.query: tuple[_Param, ...] = tuple((q.name, q.value, q.regex) for q in m.query_params)
        self.targets = targets
        self.cumulative = cumulative
        self.total = cumulative[-1]

    def matches(self, method: bytes, path: bytes, headers: Headers) -> bool:
        kind = self.kind
        if kind == _PREFIX:
            if path != self.path and not path.startswith(self.slash):
                return False
        elif kind == _EXACT:
            if path != self.path:
                return False
        elif kind == _REGEX:
            regex = self.regex
            if regex is None or regex.fullmatch(path.decode("latin-1")) is None:
                return False
        if self.method is not None and method != self.method:
            return False
        for name, value, regex in self.headers:
            if not _header_matches(headers, name, value, regex):
                return False
        return True

    def query_matches(self, params: dict[str, str]) -> bool:
        for name, value, regex in self.query:
            got = params.get(name)
            if got is None or (got != value if regex is None else not regex.fullmatch(got)):
                return False
        return True


def _equal(got: bytes, value: bytes, regex: re.Pattern[str] | None) -> bool:
    if regex is None:
        return got == value
    return regex.fullmatch(got.decode("latin-1")) is not None


def _header_matches(
    headers: Headers, name: bytes, value: bytes, regex: re.Pattern[str] | None
) -> bool:
    """One of the field's values matches, or all of them combined (RFC 9110 section 5.3)."""
    seen = 0
    for n, v in headers:
        if n == name:
            if _equal(v, value, regex):
                return True
            seen += 1
    if seen < 2:
        return False
    return _equal(b", ".join(v for n, v in headers if n == name), value, regex)


def parse_query(query: bytes) -> dict[str, str]:
    """Decoded query parameters; a repeated name keeps its first value (the spec's advice)."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        params.setdefault(name, value)
    return params


def _rank(m: RouteMatch) -> tuple[int, int, int, int, int]:
    kind, value = (m.path.type, m.path.value) if m.path is not None else ("PathPrefix", "/")
    order = _PATH_ORDER[kind]
    length = 0 if kind == "Exact" else -len(value)
    return (order, length, -(m.method is not None), -len(m.headers), -len(m.query_params))


def _compile(routes: Sequence[Route]) -> tuple[_Entry, ...]:
    """Every match of every rule, in precedence order."""
    ranked: list[tuple[tuple[int, ...], _Entry]] = []
    for i, route in enumerate(sorted(routes, key=lambda r: (r.namespace, r.name))):
        for j, rule in enumerate(route.rules):
            targets, cumulative = _targets(route.name, rule)
            for match in rule.matches or (RouteMatch(),):
                ranked.append(((*_rank(match), i, j), _Entry(match, targets, cumulative)))
    ranked.sort(key=lambda item: item[0])
    return tuple(entry for _, entry in ranked)


def split_authority(authority: bytes) -> tuple[str, int | None]:
    """`reviews:9080` -> ("reviews", 9080); bracketed IPv6 kept whole; names lower-cased."""
    text = authority.decode("latin-1").strip().lower()
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[: end + 1], text[end + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if port_text.isdigit():
        return host, int(port_text)
    return host, None


class RouteTable:
    """Immutable routing for one snapshot; None (no route) becomes a 404 `NR`."""

    def __init__(self, snapshot: Snapshot, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._by_host: dict[str, Cluster] = {}
        for cluster in snapshot.clusters:
            for name in cluster.hostnames:
                self._by_host.setdefault(name, cluster)
        # The spellings apps send (`reviews`, `reviews:9080`) as bytes: one lookup, no parsing.
        self._by_authority: dict[bytes, Cluster] = {}
        for name, cluster in self._by_host.items():
            for port in (None, *cluster.ports):
                key = name if port is None else f"{name}:{port}"
                self._by_authority[key.encode()] = cluster
        self._defaults = {
            (c.namespace, c.name): Decision((c.namespace, c.name), f"{c.name}.default-route")
            for c in snapshot.clusters
        }
        by_parent: dict[tuple[str, str], list[Route]] = {}
        exact: dict[str, list[Route]] = {}
        wildcards: dict[str, list[Route]] = {}
        any_host: list[Route] = []
        for route in snapshot.routes:
            if route.parent_kind == "Service":
                by_parent.setdefault((route.namespace, route.parent_name), []).append(route)
            elif route.parent_name == snapshot.node.gateway:
                for h in route.hostnames:
                    tier = (
                        wildcards.setdefault(h[1:], [])
                        if h[:2] == "*."
                        else exact.setdefault(h, [])
                    )
                    tier.append(route)
                if not route.hostnames:
                    any_host.append(route)
        self._service_rules = {key: _compile(rs) for key, rs in by_parent.items()}
        self._exact = {host: _compile(rs) for host, rs in exact.items()}
        # `*.example.com` is stored as `.example.com`; longer (more specific) suffixes first.
        self._wildcards = tuple(
            (suffix, _compile(rs))
            for suffix, rs in sorted(wildcards.items(), key=lambda x: -len(x[0]))
        )
        self._any = _compile(any_host)

    def outbound(
        self,
        authority: bytes,
        method: bytes,
        path: bytes,
        headers: Headers,
        *,
        query: bytes = b"",
        scheme: str = "http",
    ) -> Decision | None:
        """Mesh routing: the Service named by `authority`, then its GAMMA routes."""
        cluster = self._by_authority.get(authority)
        if cluster is None:
            host, port = split_authority(authority)
            cluster = self._by_host.get(host)
            if cluster is None or (
                port is not None and cluster.ports and port not in cluster.ports
            ):
                return None
        key = (cluster.namespace, cluster.name)
        entries = self._service_rules.get(key)
        if entries is None:
            return self._defaults[key]
        return self._first(entries, authority, method, path, headers, query, scheme)

    def gateway(
        self,
        authority: bytes,
        method: bytes,
        path: bytes,
        headers: Headers,
        *,
        query: bytes = b"",
        scheme: str = "http",
    ) -> Decision | None:
        """Ingress routing: routes of this gateway, the most specific hostname first."""
        host, _ = split_authority(authority)
        entries = self._exact.get(host)
        if entries is not None:
            decision = self._first(entries, authority, method, path, headers, query, scheme)
            if decision is not None:
                return decision
        for suffix, entries in self._wildcards:
            if host.endswith(suffix):
                decision = self._first(entries, authority, method, path, headers, query, scheme)
                if decision is not None:
                    return decision
        return self._first(self._any, authority, method, path, headers, query, scheme)

    def _first(
        self,
        entries: tuple[_Entry, ...],
        authority: bytes,
        method: bytes,
        path: bytes,
        headers: Headers,
        query: bytes,
        scheme: str,
    ) -> Decision | None:
        params = None
        for entry in entries:
            if not entry.matches(method, path, headers):
                continue
            if entry.query:
                if params is None:
                    params = parse_query(query)
                if not entry.query_matches(params):
                    continue
            targets = entry.targets
            if len(targets) == 1:
                target = targets[0]
            else:
                x = self._rng.random() * entry.total
                target = targets[bisect_right(entry.cumulative, x)]
            if target.static:
                return target.decision
            return target.finish(self._rng, scheme, authority, path, query, entry.prefix)
        return None
