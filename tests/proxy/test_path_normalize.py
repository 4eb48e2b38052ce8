"""Path normalization: every spelling of /admin becomes /admin; bad paths are refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plait.proxy.filters.path_normalize import InvalidPath, normalize_path


@pytest.mark.parametrize(
    "spelling",
    [
        b"/admin",
        b"//admin",
        b"///admin",
        b"/./admin",
        b"/a/../admin",
        b"/a/b/../../admin",
        b"/../admin",
        b"/%61dmin",
        b"/%61%64%6D%69%6E",
        b"/%2Fadmin",
        b"/%2fadmin",
        b"/%5Cadmin",
        b"/%5cadmin",
        b"\\admin",
        b"/\\admin",
        b"/%2e/admin",
        b"/%2e%2e/admin",
        b"/x/%2E%2E/admin",
        b"/x%2F..%2Fadmin",
    ],
)
def test_bypass_spellings_become_the_one_path(spelling: bytes) -> None:
    assert normalize_path(spelling) == b"/admin"


def test_trailing_slash_is_kept() -> None:
    assert normalize_path(b"/admin/") == b"/admin/"
    assert normalize_path(b"/admin//") == b"/admin/"


def test_case_is_significant() -> None:
    assert normalize_path(b"/ADMIN") == b"/ADMIN"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/..", b"/"),
        (b"/../..", b"/"),
        (b"/.", b"/"),
        (b"/a/b/..", b"/a/"),  # RFC 3986 section 5.2.4: the last segment stays a directory
        (b"/a/.", b"/a/"),
        (b"/a/b/c/./../../g", b"/a/g"),  # the RFC's own example
        (b"/.well-known/x", b"/.well-known/x"),
        (b"/a..b/c.", b"/a..b/c."),
    ],
)
def test_dot_segments_are_removed(raw: bytes, expected: bytes) -> None:
    assert normalize_path(raw) == expected


def test_query_is_untouched() -> None:
    raw = b"/a//b/../c?next=//x/../%2F&q=%61%00"
    assert normalize_path(raw) == b"/a/c?next=//x/../%2F&q=%61%00"


def test_other_encodings_are_kept_with_upper_case_hex() -> None:
    assert normalize_path(b"/a%2a%3fb%20c") == b"/a%2A%3Fb%20c"
    assert normalize_path(b"/%252F") == b"/%252F"  # no double decoding


def test_clean_path_is_returned_as_is() -> None:
    raw = b"/productpage?u=normal"
    assert normalize_path(raw) is raw


@pytest.mark.parametrize(
    "raw",
    [
        b"/admin%00",
        b"/a%0",
        b"/a%zz",
        b"/a%",
        b"/a b",
        b"/a\tb",
        b"/a\x7f",
        b"/caf\xc3\xa9",
        b"/a#frag",
        b"/a?b#frag",
        b"admin",
        b"",
        b"*",
    ],
)
def test_invalid_paths_are_refused(raw: bytes) -> None:
    with pytest.raises(InvalidPath):
        normalize_path(raw)


_PIECES = st.sampled_from(
    [b"/", b"//", b".", b"..", b"\\", b"a", b"B", b"%2F", b"%2f", b"%5C", b"%2E", b"%61", b"%7e"]
    + [b"%25", b"%2a", b"%3F", b"%41", b"-", b"~", b"?", b"?x=/../", b"%00", b"%g1", b" "]
)


@given(st.lists(_PIECES, max_size=12).map(lambda parts: b"/" + b"".join(parts)))
def test_normalizing_twice_changes_nothing(raw: bytes) -> None:
    try:
        once = normalize_path(raw)
    except InvalidPath:
        return
    path = once.partition(b"?")[0]
    assert path.startswith(b"/")
    assert b"//" not in path and b"\\" not in path
    assert all(seg not in (b".", b"..") for seg in path.split(b"/"))
    assert normalize_path(once) == once
