"""Request path normalization, so that a policy on `/admin` sees every spelling of `/admin`.

This is Istio's recommended DECODE_AND_MERGE_SLASHES (security best practices, "Understand path
normalization in authorization policy"): Envoy's `normalize_path` (RFC 3986 section 6),
`merge_slashes` and `path_with_escaped_slashes_action: UNESCAPE_AND_FORWARD`. The proxy forwards
the normalized path, as Envoy does, so the app serves exactly what the policy checked. In order:

1. refuse (`InvalidPath`, answered with 400): a path not starting with `/` (or `\\`), a fragment `#`,
   bytes outside visible ASCII (RFC 3986 section 2: spaces and controls must be encoded), a `%`
   not followed by two hex digits (section 2.1), and `%00`;
2. decode percent-encoded unreserved characters (sections 2.3 and 6.2.2.2: `%61` is `a`), and
   `%2F`/`%5C` to `/`; keep other encodings, with upper-case hex digits (section 6.2.2.1);
3. turn backslashes into slashes and merge runs of slashes;
4. remove dot segments (section 5.2.4: `/a/../b` is `/b`, `/..` is `/`).

The query string passes through untouched. Matching stays case-sensitive (`/ADMIN` is another
path). The result starts with `/`, and normalizing it again changes nothing.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["InvalidPath", "normalize_path"]

# RFC 3986 section 2.3.
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
_SLASH_OR_BACKSLASH: Final = frozenset(b"/\\")
_FORBIDDEN: Final = re.compile(rb"[^\x21-\x7e]|#")
# Anything that may need work or refusal; most paths have none of it and are returned as is.
_SUSPECT: Final = re.compile(rb"[^\x21-\x7e]|[#%\\]|//|/\.")
_SLASHES: Final = re.compile(rb"/{2,}")
# Paths repeat (every gRPC call names its method): short ones found already normal are
# remembered, process-wide and bounded (emptied when full: at most 4,096 of 128 bytes).
_ALREADY_NORMAL: Final[set[bytes]] = set()
_REMEMBERED_LENGTH: Final = 128
_REMEMBERED_MAX: Final = 4096


class InvalidPath(ValueError):
    """A request path that cannot be normalized safely; the proxy answers 400."""


def normalize_path(raw: bytes) -> bytes:
    """The request target with its path part normalized; the query is kept as received."""
    if raw in _ALREADY_NORMAL:
        return raw
    path, sep, query = raw.partition(b"?")
    if path.startswith(b"/") and _SUSPECT.search(path) is None and b"#" not in query:
        if len(raw) <= _REMEMBERED_LENGTH:
            if len(_ALREADY_NORMAL) >= _REMEMBERED_MAX:
                _ALREADY_NORMAL.clear()
            _ALREADY_NORMAL.add(raw)
        return raw
    if not path.startswith((b"/", b"\\")):  # a backslash is a slash (step 3)
        raise InvalidPath("the path must start with '/'")
    bad = _FORBIDDEN.search(path)
    if bad is not None or b"#" in query:
        what = "a fragment" if bad is None or bad.group() == b"#" else "a space or control byte"
        raise InvalidPath(f"the request target contains {what}")
    if b"%" in path:
        path = _decode(path)
    path = _SLASHES.sub(b"/", path.replace(b"\\", b"/"))
    return _remove_dot_segments(path) + sep + query


def _decode(path: bytes) -> bytes:
    out = bytearray()
    start = 0
    while (pct := path.find(b"%", start)) >= 0:
        out += path[start:pct]
        digits = path[pct + 1 : pct + 3]
        if len(digits) != 2 or not _HEX.issuperset(digits):
            raise InvalidPath("invalid percent-encoding in the path")
        byte = int(digits, 16)
        if byte == 0:
            raise InvalidPath("%00 in the path")
        if byte in _UNRESERVED:
            out.append(byte)
        elif byte in _SLASH_OR_BACKSLASH:
            out.append(0x2F)  # DECODE_AND_MERGE_SLASHES: %2F and %5C are path separators
        else:
            out += b"%" + digits.upper()
        start = pct + 3
    out += path[start:]
    return bytes(out)


def _remove_dot_segments(path: bytes) -> bytes:
    """RFC 3986 section 5.2.4 for an absolute path whose slashes are already merged."""
    segments = path.split(b"/")[1:]
    out: list[bytes] = []
    for segment in segments:
        if segment == b"..":
            if out:
                out.pop()
        elif segment != b".":
            out.append(segment)
    if segments[-1] in (b".", b".."):
        out.append(b"")  # `/a/b/..` is `/a/`: the last segment is a directory
    return b"/" + b"/".join(out)
