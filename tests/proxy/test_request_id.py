"""Request ids the proxy adds: RFC 9562 version 4 UUIDs, in the canonical text form."""

from __future__ import annotations

import uuid

from plait.proxy.downstream import _request_id


def test_request_ids_are_distinct_version_4_uuids() -> None:
    ids = [_request_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        parsed = uuid.UUID(rid.decode())
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed).encode() == rid  # lower-case hex, 8-4-4-4-12
