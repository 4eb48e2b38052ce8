"""HTTPRoute filters as pure functions: header edits, redirects and URL rewrites (no I/O).

The route table builds these once per snapshot and calls them per request; the data path only
applies the result (`Decision.request_headers`, `.path`, `.authority`, `.reply`). Semantics are
the Gateway API's: a header filter removes, then sets (replacing every value), then adds; one
action per name, so the order never surprises. Prefix replacement works on whole path elements
as PathPrefix matching does (HTTPPathModifier's table of examples is in the tests).
"""

from __future__ import annotations

from dataclasses import dataclass

from plait.config.snapshot import HeaderModifier, PathModifier, Redirect, Rewrite
from plait.proto.events import Headers

__all__ = [
    "HeaderEdit",
    "LocalReply",
    "edit_headers",
    "redirect_reply",
    "replace_prefix",
    "rewrite_path",
]

Fields = tuple[tuple[bytes, bytes], ...]
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class LocalReply:
    """A response the proxy sends itself: status, response flag, extra headers and body."""

    status: int
    flag: str
    headers: Fields = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """A header modifier in wire form: drop these names, then append these fields."""

    drop: frozenset[bytes]
    append: Fields

    @classmethod
    def of(cls, m: HeaderModifier) -> HeaderEdit:
        """Remove and set both drop the name; set and add then append (names are distinct)."""
        drop = frozenset(n.encode() for n in (*m.remove, *(n for n, _ in m.set)))
        append = tuple((n.encode(), v.encode()) for n, v in (*m.set, *m.add))
        return cls(drop, append)


def edit_headers(headers: Headers, edits: tuple[HeaderEdit, ...]) -> Headers:
    """A new header list with each edit applied in turn (lower-case names, as the codecs give)."""
    out = headers
    for edit in edits:
        drop = edit.drop
        out = [f for f in out if f[0] not in drop] if drop else list(out)
        out += edit.append
    return out


def replace_prefix(path: bytes, prefix: bytes, replacement: bytes) -> bytes:
    """`/foo/bar` with prefix `/foo` and replacement `/xyz` -> `/xyz/bar` (trailing `/` ignored).

    `path` must have matched `prefix` as a PathPrefix: it equals the prefix or continues with `/`.
    """
    rest = path[len(prefix.rstrip(b"/")) :]
    return replacement.rstrip(b"/") + rest or b"/"


def _new_path(modifier: PathModifier | None, path: bytes, prefix: bytes) -> bytes:
    if modifier is None:
        return path
    value = modifier.value.encode()
    if modifier.type == "ReplaceFullPath":
        return value
    return replace_prefix(path, prefix, value)


def rewrite_path(rewrite: Rewrite, path: bytes, query: bytes, prefix: bytes) -> bytes | None:
    """The request target after URLRewrite (the query kept), or None if the path stays."""
    if rewrite.path is None:
        return None
    new = _new_path(rewrite.path, path, prefix)
    return new + b"?" + query if query else new


def redirect_reply(
    redirect: Redirect,
    scheme: str,
    host: str,
    port: int | None,
    path: bytes,
    query: bytes,
    prefix: bytes,
) -> LocalReply:
    """The redirect answer: `status_code` with a Location built from the request.

    Port, as the Gateway API asks: the filter's; else the well-known port of a scheme the filter
    sets; else the request's (its listener's). It is left out when it is the scheme's default.
    """
    to_scheme = redirect.scheme or scheme
    to_port = redirect.port or (_DEFAULT_PORTS[redirect.scheme] if redirect.scheme else port)
    authority = redirect.hostname or host
    if to_port is not None and to_port != _DEFAULT_PORTS.get(to_scheme):
        authority = f"{authority}:{to_port}"
    target = _new_path(redirect.path, path, prefix)
    if query:
        target += b"?" + query
    location = f"{to_scheme}://{authority}".encode() + target
    return LocalReply(redirect.status_code, "DR", ((b"location", location),))
