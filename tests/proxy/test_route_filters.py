"""HTTPRoute filters as pure functions: header edits, prefix replacement, rewrites, redirects."""

from __future__ import annotations

import pytest

from plait.config.snapshot import HeaderModifier, PathModifier, Redirect, Rewrite
from plait.proxy.filters.route_filters import (
    HeaderEdit,
    LocalReply,
    edit_headers,
    redirect_reply,
    replace_prefix,
    rewrite_path,
)


# The Gateway API's table (HTTPPathModifier.ReplacePrefixMatch), row by row.
@pytest.mark.parametrize(
    ("path", "prefix", "replacement", "expected"),
    [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
        ("/anything", "/", "/api", "/api/anything"),
    ],
)
def test_replace_prefix_follows_the_spec_table(
    path: str, prefix: str, replacement: str, expected: str
) -> None:
    assert replace_prefix(path.encode(), prefix.encode(), replacement.encode()) == expected.encode()


def _edit(**kwargs: object) -> HeaderEdit:
    return HeaderEdit.of(HeaderModifier(**kwargs))  # type: ignore[arg-type]


def test_header_edit_sets_adds_and_removes() -> None:
    headers = [(b"host", b"r"), (b"x-a", b"1"), (b"x-a", b"2"), (b"x-gone", b"x"), (b"x-b", b"b")]
    edit = _edit(set=(("x-a", "new"),), add=(("x-b", "more"),), remove=("x-gone", "x-absent"))
    assert edit_headers(headers, (edit,)) == [
        (b"host", b"r"),
        (b"x-b", b"b"),
        (b"x-a", b"new"),  # set replaces every value
        (b"x-b", b"more"),  # add keeps the existing one
    ]
    assert headers[1] == (b"x-a", b"1")  # the input is not modified


def test_header_edits_apply_in_turn_rule_then_backend() -> None:
    rule = _edit(set=(("x-route", "rule"),))
    backend = _edit(set=(("x-route", "backend"),), add=(("x-backend", "v2"),))
    assert edit_headers([], (rule, backend)) == [(b"x-route", b"backend"), (b"x-backend", b"v2")]
    assert edit_headers([(b"a", b"1")], ()) == [(b"a", b"1")]


def test_rewrite_path_keeps_the_query() -> None:
    full = Rewrite(path=PathModifier("ReplaceFullPath", "/v2/all"))
    prefix = Rewrite(path=PathModifier("ReplacePrefixMatch", "/v2"))
    assert rewrite_path(full, b"/v1/x", b"a=1", b"/v1") == b"/v2/all?a=1"
    assert rewrite_path(prefix, b"/v1/x", b"", b"/v1") == b"/v2/x"
    assert rewrite_path(Rewrite(hostname="elsewhere"), b"/v1/x", b"a=1", b"/v1") is None


def _location(reply: LocalReply) -> bytes:
    assert reply.flag == "DR"
    (name, value), *_ = reply.headers
    assert name == b"location"
    return value


def test_redirect_to_https_drops_the_default_port() -> None:
    reply = redirect_reply(
        Redirect(scheme="https", status_code=301), "http", "shop", 80, b"/a", b"q=1", b"/"
    )
    assert reply.status == 301
    assert _location(reply) == b"https://shop/a?q=1"


def test_redirect_keeps_the_request_port_unless_the_scheme_changes() -> None:
    redirect = Redirect(hostname="new.example.com")
    assert _location(redirect_reply(redirect, "http", "old", 8080, b"/a", b"", b"/")) == (
        b"http://new.example.com:8080/a"
    )
    assert _location(redirect_reply(redirect, "http", "old", None, b"/a", b"", b"/")) == (
        b"http://new.example.com/a"
    )
    assert redirect_reply(redirect, "http", "old", None, b"/", b"", b"/").status == 302  # default


def test_redirect_port_and_paths() -> None:
    full = Redirect(port=8443, scheme="https", path=PathModifier("ReplaceFullPath", "/login"))
    assert (
        _location(redirect_reply(full, "http", "a", 80, b"/x", b"", b"/"))
        == b"https://a:8443/login"
    )
    prefix = Redirect(path=PathModifier("ReplacePrefixMatch", "/new"), status_code=308)
    reply = redirect_reply(prefix, "http", "[::1]", 9080, b"/old/page", b"", b"/old")
    assert (reply.status, _location(reply)) == (308, b"http://[::1]:9080/new/page")


def test_redirect_keeps_the_request_scheme_and_its_default_port() -> None:
    reply = redirect_reply(Redirect(hostname="a.example"), "https", "b", 443, b"/p", b"", b"/")
    assert _location(reply) == b"https://a.example/p"
