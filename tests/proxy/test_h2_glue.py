"""The pure pieces of the HTTP/2 data path: gRPC-shaped local replies and deadlines."""

from __future__ import annotations

from plait.proto import grpc
from plait.proxy.downstream import GRPC_TIMEOUT, _grpc_deadline, _grpc_status
from plait.proxy.local_reply import local_reply_fields


def test_grpc_local_reply_is_trailers_only_status_200() -> None:
    fields, body = local_reply_fields(503, "UH", None, b"", True)
    assert body == b""
    assert fields[0] == (b":status", b"200")
    d = dict(fields)
    assert d[b"content-type"] == b"application/grpc"
    assert d[b"grpc-status"] == b"14"
    assert d[b"grpc-message"] == b"no healthy upstream"
    assert d[b"x-plait-response-flags"] == b"UH"


def test_grpc_statuses_per_flag() -> None:
    for status, flag, code in [(504, "UT", b"4"), (403, "RBAC", b"7"), (404, "NR", b"12")]:
        assert dict(local_reply_fields(status, flag, None, b"", True)[0])[b"grpc-status"] == code
    overflow = dict(local_reply_fields(503, "UO", None, b"x-plait-overloaded: true\r\n", True)[0])
    assert overflow[b"grpc-status"] == b"8"
    assert overflow[b"x-plait-overloaded"] == b"true"


def test_plain_local_reply_for_http2_has_a_text_body() -> None:
    fields, body = local_reply_fields(404, "NR", None, b"", False)
    d = dict(fields)
    assert d[b":status"] == b"404"
    assert d[b"content-length"] == b"%d" % len(body)
    assert body == b"no route matched the request\n"


def test_grpc_timeout_joins_the_budget_and_the_next_hop_gets_less() -> None:
    forward = [(b"host", b"a"), (GRPC_TIMEOUT, b"200m")]
    out, budget = _grpc_deadline(forward, 0)
    assert budget == 200
    sent = dict(out)[GRPC_TIMEOUT]
    assert 0 < grpc.parse_timeout(sent) < 200  # type: ignore[operator]
    # A shorter route timeout wins over the caller's.
    out, budget = _grpc_deadline([(GRPC_TIMEOUT, b"5S")], 300)
    assert budget == 300 and grpc.parse_timeout(dict(out)[GRPC_TIMEOUT]) < 300  # type: ignore[operator]
    # No deadline anywhere: nothing added.
    out, budget = _grpc_deadline([(b"host", b"a")], 0)
    assert budget == 0 and GRPC_TIMEOUT not in dict(out)
    # A malformed grpc-timeout is ignored, not trusted.
    out, budget = _grpc_deadline([(GRPC_TIMEOUT, b"soon")], 0)
    assert budget == 0


def test_grpc_status_of_a_trailers_only_head() -> None:
    assert _grpc_status([(b"grpc-status", b"14")]) == 14
    assert _grpc_status([(b"grpc-status", b"x")]) == -1
    assert _grpc_status([]) == -1


def test_a_fault_with_its_own_grpc_status_is_not_doubled() -> None:
    extra = b"content-type: application/grpc\r\ngrpc-status: 13\r\ngrpc-message: fault\r\n"
    fields, body = local_reply_fields(200, "FI", b"", extra, True)
    assert [v for n, v in fields if n == b"grpc-status"] == [b"13"]
    assert fields[0] == (b":status", b"200") and body == b""
