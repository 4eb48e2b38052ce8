"""HTTP/2 frames (RFC 9113 section 4 and 6): cut bytes into frames, parse and build payloads.

Frames are plain tuples and bytes, not objects: the connection dispatches on the type byte
and calls the one parser it needs, so a DATA frame costs a struct unpack and a slice. Every
length check of section 6 lives here; errors are connection errors unless the RFC says the
frame only harms its stream.
"""

from __future__ import annotations

import struct
from typing import Final

from plait.proto.h2.errors import ErrorCode, H2ConnectionError, H2StreamError

__all__ = [
    "CONTINUATION",
    "DATA",
    "FLAG_ACK",
    "FLAG_END_HEADERS",
    "FLAG_END_STREAM",
    "FLAG_PADDED",
    "FLAG_PRIORITY",
    "GOAWAY",
    "HEADERS",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "WINDOW_UPDATE",
    "Frame",
    "FrameBuffer",
    "continuation_frame",
    "data_frame",
    "frame",
    "goaway_frame",
    "header_block_frames",
    "parse_data",
    "parse_goaway",
    "parse_headers",
    "parse_ping",
    "parse_priority",
    "parse_push_promise",
    "parse_rst_stream",
    "parse_settings",
    "parse_window_update",
    "ping_frame",
    "priority_frame",
    "rst_stream_frame",
    "settings_ack_frame",
    "settings_frame",
    "window_update_frame",
]

# Frame types (RFC 9113 section 6).
DATA: Final = 0x0
HEADERS: Final = 0x1
PRIORITY: Final = 0x2
RST_STREAM: Final = 0x3
SETTINGS: Final = 0x4
PUSH_PROMISE: Final = 0x5
PING: Final = 0x6
GOAWAY: Final = 0x7
WINDOW_UPDATE: Final = 0x8
CONTINUATION: Final = 0x9

# Flags; each is meaningful only on the frame types the RFC lists for it.
FLAG_END_STREAM: Final = 0x1  # DATA, HEADERS
FLAG_ACK: Final = 0x1  # SETTINGS, PING
FLAG_END_HEADERS: Final = 0x4  # HEADERS, PUSH_PROMISE, CONTINUATION
FLAG_PADDED: Final = 0x8  # DATA, HEADERS, PUSH_PROMISE
FLAG_PRIORITY: Final = 0x20  # HEADERS

# RFC 9113 section 3.4: the client connection preface.
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# (type, flags, stream id, payload): what FrameBuffer cuts.
Frame = tuple[int, int, int, bytes]

# Section 4.1: 24-bit length, 8-bit type, 8-bit flags, 1 reserved bit + 31-bit stream id.
_HEADER: Final = struct.Struct(">HBBBL")
_U32: Final = struct.Struct(">L")
_U32_U32: Final = struct.Struct(">LL")
_PRIORITY: Final = struct.Struct(">LB")
_SETTING: Final = struct.Struct(">HL")
_STREAM_MASK: Final = 0x7FFFFFFF


class FrameBuffer:
    """Accumulates received bytes and cuts complete frames; holds at most one partial frame.

    A frame longer than our SETTINGS_MAX_FRAME_SIZE is refused from its header alone
    (section 4.2), so the buffer never holds more than one maximal frame plus a header.
    """

    __slots__ = ("_buf", "max_frame_size")

    def __init__(self, max_frame_size: int = 16384) -> None:
        self._buf = b""
        self.max_frame_size = max_frame_size

    def __len__(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """The complete frames in what was buffered plus `data`, in order."""
        buf = self._buf + data if self._buf else data
        frames: list[Frame] = []
        pos = 0
        end = len(buf)
        limit = self.max_frame_size
        while end - pos >= 9:
            # Byte by byte, not struct: compiled, this is a few machine instructions.
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            ftype = buf[pos + 3]
            flags = buf[pos + 4]
            sid = (buf[pos + 5] << 24) | (buf[pos + 6] << 16) | (buf[pos + 7] << 8) | buf[pos + 8]
            if length > limit:
                self._buf = b""
                raise H2ConnectionError(
                    f"frame of {length} bytes over SETTINGS_MAX_FRAME_SIZE {limit}",
                    ErrorCode.FRAME_SIZE_ERROR,
                )
            stop = pos + 9 + length
            if stop > end:
                break
            frames.append((ftype, flags, sid & _STREAM_MASK, buf[pos + 9 : stop]))
            pos = stop
        self._buf = buf[pos:] if pos < end else b""
        return frames


# parsing ----------------------------------------------------------------------------------


def _unpad(flags: int, payload: bytes) -> tuple[bytes, int]:
    """(payload without padding, padding bytes incl. the length byte) (section 6.1)."""
    if not flags & FLAG_PADDED:
        return payload, 0
    if not payload:
        raise H2ConnectionError("padded frame without a pad length", ErrorCode.FRAME_SIZE_ERROR)
    pad = payload[0]
    if pad >= len(payload):
        # Section 6.1: padding at least as long as the payload is a PROTOCOL_ERROR.
        raise H2ConnectionError("padding exceeds the frame payload")
    return payload[1 : len(payload) - pad], pad + 1


def parse_data(flags: int, payload: bytes) -> tuple[bytes, int]:
    """DATA (section 6.1): (data, padding length counted by flow control)."""
    return _unpad(flags, payload)


def parse_headers(flags: int, payload: bytes) -> tuple[bytes, int]:
    """HEADERS (section 6.2): (header block fragment, dependency or -1 without PRIORITY).

    A dependency on the stream itself (section 5.3.1) is the caller's to refuse, after the
    block went through HPACK: the table must stay in step whatever happens to the stream.
    """
    block, _ = _unpad(flags, payload)
    if not flags & FLAG_PRIORITY:
        return block, -1
    if len(block) < 5:
        raise H2ConnectionError("HEADERS too short for its priority", ErrorCode.FRAME_SIZE_ERROR)
    return block[5:], _U32.unpack_from(block)[0] & _STREAM_MASK


def parse_priority(stream_id: int, payload: bytes) -> int:
    """PRIORITY (section 6.3): the dependency. Deprecated, parsed only to be checked."""
    if len(payload) != 5:
        raise H2StreamError("PRIORITY frame not 5 bytes", stream_id, ErrorCode.FRAME_SIZE_ERROR)
    dep = _U32.unpack_from(payload)[0] & _STREAM_MASK
    if dep == stream_id:
        raise H2StreamError("stream depends on itself", stream_id)
    return dep


def parse_rst_stream(payload: bytes) -> int:
    """RST_STREAM (section 6.4): the error code."""
    if len(payload) != 4:
        raise H2ConnectionError("RST_STREAM frame not 4 bytes", ErrorCode.FRAME_SIZE_ERROR)
    code: int = _U32.unpack(payload)[0]
    return code


def parse_settings(flags: int, payload: bytes) -> list[tuple[int, int]]:
    """SETTINGS (section 6.5): (identifier, value) pairs in order; empty for an ACK."""
    if flags & FLAG_ACK:
        if payload:
            raise H2ConnectionError("SETTINGS ACK with a payload", ErrorCode.FRAME_SIZE_ERROR)
        return []
    if len(payload) % 6:
        raise H2ConnectionError("SETTINGS not a multiple of 6 bytes", ErrorCode.FRAME_SIZE_ERROR)
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def parse_push_promise(flags: int, payload: bytes) -> tuple[int, bytes]:
    """PUSH_PROMISE (section 6.6): (promised stream id, header block fragment)."""
    block, _ = _unpad(flags, payload)
    if len(block) < 4:
        raise H2ConnectionError("PUSH_PROMISE too short", ErrorCode.FRAME_SIZE_ERROR)
    return _U32.unpack_from(block)[0] & _STREAM_MASK, block[4:]


def parse_ping(payload: bytes) -> bytes:
    """PING (section 6.7): the 8 opaque bytes."""
    if len(payload) != 8:
        raise H2ConnectionError("PING frame not 8 bytes", ErrorCode.FRAME_SIZE_ERROR)
    return payload


def parse_goaway(payload: bytes) -> tuple[int, int, bytes]:
    """GOAWAY (section 6.8): (last stream id, error code, debug data)."""
    if len(payload) < 8:
        raise H2ConnectionError("GOAWAY frame shorter than 8 bytes", ErrorCode.FRAME_SIZE_ERROR)
    last, code = _U32_U32.unpack_from(payload)
    return last & _STREAM_MASK, code, payload[8:]


def parse_window_update(payload: bytes) -> int:
    """WINDOW_UPDATE (section 6.9): the increment (0 is the caller's error to raise)."""
    if len(payload) != 4:
        raise H2ConnectionError("WINDOW_UPDATE frame not 4 bytes", ErrorCode.FRAME_SIZE_ERROR)
    increment: int = _U32.unpack(payload)[0] & _STREAM_MASK
    return increment


# building ---------------------------------------------------------------------------------


def frame(ftype: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    """One frame: the 9-byte header (section 4.1) and the payload."""
    n = len(payload)
    return _HEADER.pack(n >> 8, n & 0xFF, ftype, flags, stream_id) + payload


def data_frame(stream_id: int, data: bytes, end_stream: bool = False, pad: int = -1) -> bytes:
    """DATA; `pad` >= 0 adds a pad length byte and that many zero bytes (section 6.1)."""
    flags = FLAG_END_STREAM if end_stream else 0
    if pad >= 0:
        return frame(DATA, flags | FLAG_PADDED, stream_id, bytes((pad,)) + data + bytes(pad))
    return frame(DATA, flags, stream_id, data)


def header_block_frames(
    stream_id: int, block: bytes, end_stream: bool, max_frame_size: int, ftype: int = HEADERS
) -> bytes:
    """HEADERS (or PUSH_PROMISE) then CONTINUATION frames carrying one block (section 4.3)."""
    flags = FLAG_END_STREAM if end_stream and ftype == HEADERS else 0
    if len(block) <= max_frame_size:
        return frame(ftype, flags | FLAG_END_HEADERS, stream_id, block)
    parts = [frame(ftype, flags, stream_id, block[:max_frame_size])]
    for start in range(max_frame_size, len(block), max_frame_size):
        last = start + max_frame_size >= len(block)
        chunk = block[start : start + max_frame_size]
        parts.append(continuation_frame(stream_id, chunk, last))
    return b"".join(parts)


def continuation_frame(stream_id: int, fragment: bytes, end_headers: bool) -> bytes:
    """CONTINUATION (section 6.10)."""
    return frame(CONTINUATION, FLAG_END_HEADERS if end_headers else 0, stream_id, fragment)


def priority_frame(stream_id: int, depends_on: int, weight: int, exclusive: bool = False) -> bytes:
    """PRIORITY (section 6.3); `weight` is the wire value (weight - 1)."""
    dep = depends_on | (0x80000000 if exclusive else 0)
    return frame(PRIORITY, 0, stream_id, _PRIORITY.pack(dep, weight))


def rst_stream_frame(stream_id: int, code: int) -> bytes:
    """RST_STREAM (section 6.4)."""
    return frame(RST_STREAM, 0, stream_id, _U32.pack(code))


def settings_frame(settings: list[tuple[int, int]]) -> bytes:
    """SETTINGS (section 6.5)."""
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in settings))


def settings_ack_frame() -> bytes:
    """SETTINGS with ACK (section 6.5.3)."""
    return _SETTINGS_ACK


def ping_frame(opaque: bytes, ack: bool = False) -> bytes:
    """PING (section 6.7); `opaque` is 8 bytes."""
    return frame(PING, FLAG_ACK if ack else 0, 0, opaque)


def goaway_frame(last_stream_id: int, code: int, debug: bytes = b"") -> bytes:
    """GOAWAY (section 6.8)."""
    return frame(GOAWAY, 0, 0, _U32_U32.pack(last_stream_id, code) + debug)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    """WINDOW_UPDATE (section 6.9)."""
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


_SETTINGS_ACK: Final = frame(SETTINGS, FLAG_ACK, 0, b"")
