"""gRPC helpers: content type, grpc-timeout, statuses for local replies, grpc-message."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plait.proto.grpc import (
    STATUS_CODES,
    decode_message,
    encode_message,
    format_timeout,
    is_grpc,
    local_reply_headers,
    parse_timeout,
    status_for_flag,
    status_for_http,
)


@pytest.mark.parametrize(
    "ct",
    [
        b"application/grpc",
        b"application/grpc+proto",
        b"application/grpc+json",
        b"application/grpc; charset=utf-8",
        b"Application/GRPC",
    ],
)
def test_grpc_content_types_are_recognised(ct: bytes) -> None:
    assert is_grpc(ct)


@pytest.mark.parametrize(
    "ct", [b"", b"application/json", b"application/grpc-web", b"application/grpcx", b"text/grpc"]
)
def test_other_content_types_are_not_grpc(ct: bytes) -> None:
    assert not is_grpc(ct)


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        (b"100m", 100),
        (b"5S", 5_000),
        (b"2M", 120_000),
        (b"1H", 3_600_000),
        (b"1500u", 2),  # 1.5 ms rounds up: a deadline is never shortened
        (b"1000u", 1),
        (b"1n", 1),
        (b"0m", 0),
        (b"99999999m", 99_999_999),
        (b"99999999H", 99_999_999 * 3_600_000),
    ],
)
def test_parse_timeout(value: bytes, ms: int) -> None:
    assert parse_timeout(value) == ms


@pytest.mark.parametrize(
    "value",
    [b"", b"m", b"100", b"100x", b"123456789m", b"-1m", b"1.5S", b" 1S", b"1 S", b"\xd9\xa1m"],
)
def test_malformed_timeouts_are_none(value: bytes) -> None:
    assert parse_timeout(value) is None


@pytest.mark.parametrize(
    ("ms", "value"),
    [
        (0, b"0m"),
        (-5, b"0m"),
        (250, b"250m"),
        (99_999_999, b"99999999m"),
        (100_000_000, b"100000S"),
        (100_000_001, b"100001S"),  # rounded up
        (10**12, b"16666667M"),
        (10**14, b"27777778H"),
    ],
)
def test_format_timeout(ms: int, value: bytes) -> None:
    assert format_timeout(ms) == value


def test_format_timeout_caps_an_endless_deadline() -> None:
    assert format_timeout(10**30) == b"99999999H"


@given(st.integers(min_value=0, max_value=99_999_999 * 3_600_000))
def test_format_then_parse_never_shortens_the_deadline(ms: int) -> None:
    encoded = format_timeout(ms)
    assert len(encoded) <= 9
    parsed = parse_timeout(encoded)
    assert parsed is not None and parsed >= ms


@given(st.integers(min_value=0, max_value=99_999_999))
def test_timeouts_in_range_round_trip_exactly(ms: int) -> None:
    assert parse_timeout(format_timeout(ms)) == ms


@pytest.mark.parametrize(
    ("status", "flag", "code"),
    [
        (503, "UH", 14),
        (503, "UF", 14),
        (503, "UC", 14),
        (500, "NC", 14),
        (504, "UT", 4),
        (403, "RBAC", 7),
        (401, "UAEX", 16),
        (401, "", 16),  # a JWT failure carries no flag: the HTTP status decides
        (404, "NR", 12),
        (503, "UO", 8),
        (400, "DPE", 13),
        (503, "FI", 14),
        (500, "FI", 2),
        (429, "FI", 14),
        (403, "FI", 7),
        (404, "FI", 12),
        (418, "FI", 2),
    ],
)
def test_status_for_flag(status: int, flag: str, code: int) -> None:
    assert status_for_flag(status, flag) == code


def test_http_mapping_follows_grpc_doc() -> None:
    mapping = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
    for http, code in mapping.items():
        assert status_for_http(http) == code
    assert status_for_http(500) == STATUS_CODES["UNKNOWN"]


def test_local_reply_headers_are_trailers_only_fields() -> None:
    assert local_reply_headers(14, b"no healthy upstream") == [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"14"),
        (b"grpc-message", b"no healthy upstream"),
    ]
    assert local_reply_headers(0, b"") == [
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"0"),
    ]


def test_grpc_message_is_percent_encoded() -> None:
    fields = dict(local_reply_headers(7, "100% denied: caf\u00e9\n".encode()))
    assert fields[b"grpc-message"] == b"100%25 denied: caf%C3%A9%0A"


@given(st.binary(max_size=64))
def test_message_encoding_round_trips(message: bytes) -> None:
    encoded = encode_message(message)
    assert all(0x20 <= b <= 0x7E for b in encoded)
    assert decode_message(encoded) == message


def test_malformed_percent_escapes_are_kept() -> None:
    assert decode_message(b"50%") == b"50%"
    assert decode_message(b"%zz%4") == b"%zz%4"
    assert decode_message(b"a%41") == b"aA"
