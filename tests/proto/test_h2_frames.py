"""HTTP/2 frames (RFC 9113 section 4 and 6), checked against `hyperframe` (h2's frame layer)."""

from __future__ import annotations

import pytest
from hyperframe import frame as hf
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proto.h2 import frames as fr
from plait.proto.h2.errors import ErrorCode, H2ConnectionError, H2StreamError

stream_ids = st.integers(1, 2**31 - 1)
u32 = st.integers(0, 2**32 - 1)
pads = st.none() | st.integers(0, 255)
payloads = st.binary(max_size=300)


def theirs(raw: bytes) -> hf.Frame:
    frame, length = hf.Frame.parse_frame_header(memoryview(raw[:9]))
    assert length == len(raw) - 9
    frame.parse_body(memoryview(raw[9:]))
    return frame


def ours(raw: bytes, cuts: list[int] | None = None) -> fr.Frame:
    """Feed `raw` in pieces cut at `cuts`; exactly one frame must come out."""
    buf = fr.FrameBuffer()
    out: list[fr.Frame] = []
    start = 0
    for cut in sorted(set(cuts or [])) + [len(raw)]:
        out += buf.feed(raw[start:cut])
        start = cut
    assert len(buf) == 0
    (frame,) = out
    return frame


@given(stream_ids, payloads, pads, st.booleans(), st.lists(st.integers(0, 320), max_size=4))
def test_data_frames_agree_with_hyperframe(sid, data, pad, end, cuts) -> None:
    flags = (["END_STREAM"] if end else []) + (["PADDED"] if pad is not None else [])
    raw = hf.DataFrame(sid, data, flags=flags, pad_length=pad or 0).serialize()
    ftype, fflags, fsid, payload = ours(raw, cuts)
    assert (ftype, fsid, bool(fflags & fr.FLAG_END_STREAM)) == (fr.DATA, sid, end)
    body, padding = fr.parse_data(fflags, payload)
    assert body == data and padding == (0 if pad is None else pad + 1)
    mine = fr.data_frame(sid, data, end, -1 if pad is None else pad)
    assert mine == raw
    assert theirs(mine).data == data


@given(
    stream_ids,
    payloads,
    pads,
    st.none() | st.tuples(st.integers(0, 2**31 - 1), st.integers(0, 255)),
)
def test_headers_frames_agree_with_hyperframe(sid, block, pad, priority) -> None:
    flags = ["END_HEADERS"] + (["PADDED"] if pad is not None else [])
    kwargs: dict[str, object] = {"pad_length": pad or 0}
    if priority is not None:
        flags.append("PRIORITY")
        kwargs |= {"depends_on": priority[0], "stream_weight": priority[1]}
    raw = hf.HeadersFrame(sid, block, flags=flags, **kwargs).serialize()
    ftype, fflags, fsid, payload = ours(raw)
    assert ftype == fr.HEADERS and fflags & fr.FLAG_END_HEADERS
    assert fr.parse_headers(fflags, payload) == (block, -1 if priority is None else priority[0])


@given(stream_ids, st.binary(max_size=70_000), st.booleans())
@settings(max_examples=30)
def test_long_header_blocks_split_into_continuations(sid, block, end) -> None:
    raw = fr.header_block_frames(sid, block, end, 16384)
    buf = fr.FrameBuffer()
    frames = buf.feed(raw)
    assert frames[0][0] == fr.HEADERS and all(f[0] == fr.CONTINUATION for f in frames[1:])
    assert [bool(f[1] & fr.FLAG_END_HEADERS) for f in frames] == [False] * (len(frames) - 1) + [
        True
    ]
    assert bool(frames[0][1] & fr.FLAG_END_STREAM) == end
    assert b"".join(f[3] for f in frames) == block
    assert all(theirs(fr.frame(*f[:3], f[3])).stream_id == sid for f in frames)


@given(stream_ids, u32, st.integers(0, 2**31 - 1), st.integers(0, 255), st.booleans())
def test_control_frames_agree_with_hyperframe(sid, code, dep, weight, exclusive) -> None:
    rst = fr.rst_stream_frame(sid, code)
    assert rst == hf.RstStreamFrame(sid, code).serialize()
    assert fr.parse_rst_stream(ours(rst)[3]) == code

    prio = fr.priority_frame(sid, dep, weight, exclusive)
    assert (
        prio
        == hf.PriorityFrame(
            sid, depends_on=dep, stream_weight=weight, exclusive=exclusive
        ).serialize()
    )
    if dep != sid:
        assert fr.parse_priority(sid, ours(prio)[3]) == dep

    increment = max(1, code >> 1)
    wu = fr.window_update_frame(sid, increment)
    assert wu == hf.WindowUpdateFrame(sid, increment).serialize()
    assert fr.parse_window_update(ours(wu)[3]) == increment


@given(
    st.dictionaries(st.integers(0, 0xFFFF), u32, max_size=8),
    st.binary(min_size=8, max_size=8),
    st.booleans(),
)
def test_connection_frames_agree_with_hyperframe(settings_map, opaque, ack) -> None:
    raw = fr.settings_frame(list(settings_map.items()))
    assert theirs(raw).settings == settings_map
    assert dict(fr.parse_settings(0, ours(raw)[3])) == settings_map
    assert fr.settings_ack_frame() == hf.SettingsFrame(flags=["ACK"]).serialize()

    ping = fr.ping_frame(opaque, ack)
    assert ping == hf.PingFrame(opaque_data=opaque, flags=["ACK"] if ack else []).serialize()
    assert fr.parse_ping(ours(ping)[3]) == opaque


@given(st.integers(0, 2**31 - 1), u32, st.binary(max_size=100))
def test_goaway_agrees_with_hyperframe(last, code, debug) -> None:
    raw = fr.goaway_frame(last, code, debug)
    assert (
        raw
        == hf.GoAwayFrame(last_stream_id=last, error_code=code, additional_data=debug).serialize()
    )
    assert fr.parse_goaway(ours(raw)[3]) == (last, code, debug)


@given(stream_ids, st.integers(1, 2**31 - 1), payloads, pads)
def test_push_promise_parses_like_hyperframe(sid, promised, block, pad) -> None:
    flags = ["END_HEADERS"] + ([] if pad is None else ["PADDED"])
    raw = hf.PushPromiseFrame(sid, promised, block, flags=flags, pad_length=pad or 0).serialize()
    _, flags, _, payload = ours(raw)
    assert fr.parse_push_promise(flags, payload) == (promised, block)


def test_frames_split_anywhere_come_out_whole() -> None:
    raw = b"".join(fr.data_frame(1, bytes([i]) * i) for i in range(50))
    buf = fr.FrameBuffer()
    out = [f for i in range(len(raw)) for f in buf.feed(raw[i : i + 1])]
    assert [f[3] for f in out] == [bytes([i]) * i for i in range(50)]


def test_frame_over_max_size_is_refused_from_its_header() -> None:
    buf = fr.FrameBuffer(16384)
    with pytest.raises(H2ConnectionError) as info:
        buf.feed(fr.frame(fr.DATA, 0, 1, b"")[:0] + b"\x00\x40\x01\x00\x00\x00\x00\x00\x01")
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR
    assert len(buf) == 0


def test_unknown_frame_types_pass_through_as_frames() -> None:
    assert ours(fr.frame(0xFA, 0x3, 5, b"ext")) == (0xFA, 0x3, 5, b"ext")


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda: fr.parse_data(fr.FLAG_PADDED, b"\x05abc"), ErrorCode.PROTOCOL_ERROR),
        (lambda: fr.parse_data(fr.FLAG_PADDED, b""), ErrorCode.FRAME_SIZE_ERROR),
        (lambda: fr.parse_headers(fr.FLAG_PRIORITY, b"\x00\x00"), ErrorCode.FRAME_SIZE_ERROR),
        (lambda: fr.parse_rst_stream(b"\x00" * 5), ErrorCode.FRAME_SIZE_ERROR),
        (lambda: fr.parse_settings(0, b"\x00" * 7), ErrorCode.FRAME_SIZE_ERROR),
        (lambda: fr.parse_settings(fr.FLAG_ACK, b"\x00" * 6), ErrorCode.FRAME_SIZE_ERROR),
        (lambda: fr.parse_ping(b"\x00" * 7), ErrorCode.FRAME_SIZE_ERROR),
        (lambda: fr.parse_goaway(b"\x00" * 7), ErrorCode.FRAME_SIZE_ERROR),
        (lambda: fr.parse_window_update(b"\x00" * 3), ErrorCode.FRAME_SIZE_ERROR),
        (lambda: fr.parse_push_promise(0, b"\x00" * 3), ErrorCode.FRAME_SIZE_ERROR),
    ],
)
def test_malformed_payloads_are_connection_errors(call, code) -> None:
    with pytest.raises(H2ConnectionError) as info:
        call()
    assert info.value.code == code


def test_bad_priority_frames_are_stream_errors() -> None:
    with pytest.raises(H2StreamError) as info:
        fr.parse_priority(3, b"\x00" * 4)
    assert info.value.code == ErrorCode.FRAME_SIZE_ERROR
    with pytest.raises(H2StreamError) as info:
        fr.parse_priority(3, fr.priority_frame(3, 3, 16)[9:])  # depends on itself (5.3.1)
    assert info.value.code == ErrorCode.PROTOCOL_ERROR
