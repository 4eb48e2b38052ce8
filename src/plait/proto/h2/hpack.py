"""HPACK (RFC 7541): header compression with the static and a dynamic table.

One `Decoder` and one `Encoder` per connection direction. The decoder bounds what it builds
(the decoded header list is counted as it grows, RFC 9113 section 6.5.2) but always walks the
whole block, so an over-long list costs the peer one stream, not the shared table state.
With `check_fields` it also refuses the bytes HTTP/2 forbids in fields (RFC 9113 section
8.2.1), once per literal: an indexed field was checked when it entered the table.
The encoder indexes every field except credentials (section 7.1.3), entries too big to be
worth a table flush and fields that are new on every request (request ids, trace context);
it signals table size changes at the start of the next block (4.2).
"""

from __future__ import annotations

from typing import Final, cast

from plait.proto.h2 import huffman
from plait.proto.h2.errors import CompressionError, H2StreamError, HeaderListTooLarge

__all__ = ["STATIC_TABLE", "Decoder", "Encoder", "encode_integer", "field_error"]

Field = tuple[bytes, bytes]

# RFC 7541 Appendix A: index 1..61.
STATIC_TABLE: Final[tuple[Field, ...]] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
_STATIC_COUNT: Final = len(STATIC_TABLE)  # 61; dynamic indexes start at 62 (section 2.3.3)

# Section 7.1.3: fields an intermediary must not let into a table (guessable secrets).
_NEVER_INDEXED: Final = frozenset({b"authorization", b"proxy-authorization"})
# Fields whose value is new on every request: indexing them would evict the entries that do
# repeat and cost both tables an insertion each; they go as literals without indexing (6.2.2),
# and without Huffman coding: for a request id that saves 11 bytes at ~3 us of CPU on each
# side, where the whole request costs the proxy ~60 us.
_UNIQUE_PER_REQUEST: Final = frozenset(
    {
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"x-b3-traceid",
        b"x-b3-spanid",
        b"x-b3-parentspanid",
        b"b3",
        b"grpc-timeout",
        b"x-envoy-expected-rq-timeout-ms",
    }
)
_SHORT_COOKIE: Final = 20  # cookies shorter than this are guessable too (as nghttp2 and hpack do)

# RFC 9113 section 6.5.2: the default SETTINGS_HEADER_TABLE_SIZE.
DEFAULT_TABLE_SIZE: Final = 4096

# RFC 9113 section 8.2.1: a name holds no 0x00-0x20, A-Z, 0x7f-0xff, nor a colon past the
# first byte; a value no NUL, CR or LF, and no leading or trailing space or tab. Short names
# that passed are remembered, process-wide and bounded: most literal names repeat.
_BAD_NAME_BYTES: Final = bytes([*range(0x21), *range(0x41, 0x5B), *range(0x7F, 0x100), 0x3A])
_GOOD_NAMES: Final[set[bytes]] = set()
_GOOD_NAMES_MAX: Final = 4096

# Huffman-coded strings repeat (a peer that does not index `server: nginx` or a `date` of the
# same second sends the same bytes every time): short ones are decoded once per process, and
# short ones we send are coded once (the name `x-request-id`, a literal on every request).
# Each cache is bounded (emptied when full: at most 1,024 strings of 64 bytes); the decoded
# one holds only what `huffman.decode` accepted, the encoded one whole string literals.
_HUFFMAN_DECODED: Final[dict[bytes, bytes]] = {}
_HUFFMAN_ENCODED: Final[dict[bytes, bytes]] = {}
_HUFFMAN_CACHED_LENGTH: Final = 64
_HUFFMAN_CACHED_MAX: Final = 1024


def field_error(name: bytes, value: bytes) -> str:
    """Why HTTP/2 forbids this field (RFC 9113 section 8.2.1), or "" if it may pass."""
    if name not in _GOOD_NAMES:
        bare = name[1:] if name[:1] == b":" else name
        if not bare or len(bare.translate(None, _BAD_NAME_BYTES)) != len(bare):
            return f"invalid field name {name!r}"
        if len(name) <= 64 and len(_GOOD_NAMES) < _GOOD_NAMES_MAX:  # at most 256 KiB
            _GOOD_NAMES.add(name)
    if value:
        # One translated copy to compare: `b"\r" in value` looks like one memchr, but bytes
        # first try the needle as an integer and build (and drop) a TypeError each time.
        if len(value.translate(None, b"\r\n\x00")) != len(value):
            return f"invalid character in the value of {name!r}"
        if value[0] in (0x20, 0x09) or value[-1] in (0x20, 0x09):
            return f"whitespace around the value of {name!r}"
    return ""


def _entry_size(field: Field) -> int:
    """Section 4.1: an entry's size is its name and value plus 32 bytes of overhead."""
    return len(field[0]) + len(field[1]) + 32


# Every one-byte string, so that the encoder's common case (an index, a short length) is a
# table lookup: compiled, bytearray.append is a generic method call.
_BYTES: Final = tuple(bytes((i,)) for i in range(256))


def encode_integer(value: int, prefix_bits: int, flags: int = 0) -> bytes:
    """Section 5.1: `value` with an N-bit prefix; `flags` fills the first byte's high bits."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return _BYTES[flags | value]
    out = bytearray((flags | top,))
    value -= top
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _get_int(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """Continue a prefix integer whose prefix was all ones (`value`) from `pos`."""
    shift = 0
    end = len(data)
    while True:
        if pos >= end:
            raise CompressionError("header block ends inside an integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:  # 2**35: beyond any size or index we accept
            raise CompressionError("integer in header block too large")


def _get_str(data: bytes, pos: int) -> tuple[bytes, int]:
    """Section 5.2: a string literal (maybe Huffman-coded) at `pos`."""
    if pos >= len(data):
        raise CompressionError("header block ends before a string")
    byte = data[pos]
    length = byte & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _get_int(data, pos, length)
    stop = pos + length
    if stop > len(data):
        raise CompressionError("string runs past the end of the header block")
    raw = data[pos:stop]
    if byte & 0x80:
        decoded = _HUFFMAN_DECODED.get(raw)
        if decoded is None:
            decoded = huffman.decode(raw)
            if length <= _HUFFMAN_CACHED_LENGTH:
                if len(_HUFFMAN_DECODED) >= _HUFFMAN_CACHED_MAX:
                    _HUFFMAN_DECODED.clear()
                _HUFFMAN_DECODED[raw] = decoded
        return decoded, stop
    return raw, stop


class Decoder:
    """Turns header blocks from one peer into header lists, keeping its dynamic table."""

    __slots__ = (
        "_entries",
        "_size",
        "max_table_size",
        "max_allowed_table_size",
        "max_header_list_size",
        "check_fields",
    )

    def __init__(
        self,
        max_table_size: int = DEFAULT_TABLE_SIZE,
        max_header_list_size: int = 1 << 16,
        check_fields: bool = False,
    ) -> None:
        self._entries: list[Field] = []  # oldest first; index 62 is the last one
        self._size = 0
        # What the peer's encoder last chose, and the ceiling we advertised (section 4.2).
        self.max_table_size = max_table_size
        self.max_allowed_table_size = max_table_size
        self.max_header_list_size = max_header_list_size
        self.check_fields = check_fields

    @property
    def table_size(self) -> int:
        return self._size

    def decode(self, block: bytes) -> list[Field]:
        """The header list of one complete block.

        Raises CompressionError for a block we cannot follow (the table is lost). After
        decoding a whole block (so the table stays in step with the peer's) it raises
        HeaderListTooLarge if the list is over `max_header_list_size`, or H2StreamError for a
        forbidden field; both with stream id 0, for the caller to fill in.
        """
        headers: list[Field] = []
        pos = 0
        end = len(block)
        total = 0
        limit = self.max_header_list_size
        over = False
        fields_seen = False
        check = self.check_fields
        entries = self._entries  # mutated in place only, never replaced
        error = ""
        while pos < end:
            byte = block[pos]
            pos += 1
            if byte & 0x80:  # 6.1 indexed field
                index = byte & 0x7F
                if index == 0x7F:
                    index, pos = _get_int(block, pos, index)
                if 0 < index <= _STATIC_COUNT:  # section 2.3.3: static first, then dynamic
                    field = STATIC_TABLE[index - 1]
                elif _STATIC_COUNT < index <= _STATIC_COUNT + len(entries):
                    field = entries[_STATIC_COUNT - index]  # 62 is the newest, entries[-1]
                else:
                    raise CompressionError(f"header table index {index} out of range")
            elif byte & 0x20 and not byte & 0x40:  # 6.3 dynamic table size update
                if fields_seen:
                    raise CompressionError("table size update after a header field")
                size = byte & 0x1F
                if size == 0x1F:
                    size, pos = _get_int(block, pos, size)
                self._resize(size)
                continue
            else:  # 6.2 literal: with indexing (01), without (0000) or never indexed (0001)
                indexing = byte & 0x40
                mask = 0x3F if indexing else 0x0F
                index = byte & mask
                if index == mask:
                    index, pos = _get_int(block, pos, index)
                if index:
                    name = self._field(index)[0]
                else:
                    name, pos = _get_str(block, pos)
                value, pos = _get_str(block, pos)
                field = (name, value)
                if check and not error:
                    error = field_error(name, value)
                if indexing:
                    self._add(field)
            fields_seen = True
            total += len(field[0]) + len(field[1]) + 32
            if total <= limit:
                headers.append(field)
            else:
                over = True  # keep decoding for the table's sake, but stop collecting
        if over:
            raise HeaderListTooLarge(f"header list over {limit} bytes", 0)
        if error:
            raise H2StreamError(error, 0)
        return headers

    def _field(self, index: int) -> Field:
        """Section 2.3.3: one index space, static table first."""
        if 0 < index <= _STATIC_COUNT:
            return STATIC_TABLE[index - 1]
        entries = self._entries
        back = index - _STATIC_COUNT  # 1 is the newest entry
        if index == 0 or back > len(entries):
            raise CompressionError(f"header table index {index} out of range")
        return entries[len(entries) - back]

    def _add(self, field: Field) -> None:
        """Section 4.4: evict oldest entries until the new one fits (or empty the table)."""
        size = _entry_size(field)
        if size > self.max_table_size:
            self._entries.clear()
            self._size = 0
            return
        self._evict(self.max_table_size - size)
        self._entries.append(field)
        self._size += size

    def _evict(self, target: int) -> None:
        entries = self._entries
        while self._size > target:
            self._size -= _entry_size(entries.pop(0))

    def _resize(self, size: int) -> None:
        """Section 6.3: the encoder's new maximum, bounded by our SETTINGS value."""
        if size > self.max_allowed_table_size:
            raise CompressionError(
                f"table size {size} over the {self.max_allowed_table_size} allowed"
            )
        self.max_table_size = size
        self._evict(size)


class Encoder:
    """Turns header lists into header blocks for one peer, keeping our dynamic table."""

    __slots__ = (
        "_entries",
        "_size",
        "_inserted",
        "_fields",
        "_names",
        "_pending_min",
        "_pending",
        "max_table_size",
        "table_size_cap",
    )

    def __init__(self, max_table_size: int = DEFAULT_TABLE_SIZE) -> None:
        self._entries: list[object] = []  # oldest first (boxed: see _fields)
        self._size = 0
        self._inserted = 0  # entries ever added: the newest has absolute id _inserted - 1
        # Field or name -> absolute id of its newest entry; static ones as -index.
        # Keyed by the caller's own tuples, kept boxed (`object`): typed `tuple[bytes, bytes]`,
        # mypyc would unbox each field and box it again, a new tuple to hash, per lookup.
        self._fields: dict[object, int] = dict(_STATIC_FIELDS)
        self._names: dict[bytes, int] = dict(_STATIC_NAMES)
        self._pending_min = -1  # smallest size set since the last block, -1: none
        self._pending = -1
        self.max_table_size = max_table_size
        # Our own memory bound: a peer advertising a huge table gets at most this (4.2).
        self.table_size_cap = max_table_size

    def set_max_table_size(self, size: int) -> None:
        """Apply the peer's SETTINGS_HEADER_TABLE_SIZE (RFC 9113 section 6.5.2)."""
        size = min(size, self.table_size_cap)
        if size == self.max_table_size and self._pending < 0:
            return
        self._pending_min = size if self._pending_min < 0 else min(self._pending_min, size)
        self._pending = size
        self.max_table_size = size
        self._evict(size)

    def encode(self, headers: list[Field], huffman_coding: bool = True) -> bytes:
        """One header block for `headers` (names lower-case, as HTTP/2 requires)."""
        out: list[bytes] = []  # pieces to join: most are one index byte each
        if self._pending >= 0:
            # Section 4.2: signal the smallest size reached, then the final one.
            if self._pending_min < self._pending:
                out.append(encode_integer(self._pending_min, 5, 0x20))
            out.append(encode_integer(self._pending, 5, 0x20))
            self._pending = self._pending_min = -1
        fields = self._fields
        boxed: list[object] = headers  # type: ignore[assignment]  # see _fields
        for field in boxed:
            found = fields.get(field)
            if found is not None:
                index = -found if found < 0 else self._inserted - found + _STATIC_COUNT
                out.append(_BYTES[0x80 | index] if index < 0x7F else encode_integer(index, 7, 0x80))
                continue
            name, value = cast(Field, field)
            found = self._names.get(name)
            name_index = 0 if found is None else self._index(found)
            size = len(name) + len(value) + 32
            unique = name in _UNIQUE_PER_REQUEST
            if name in _NEVER_INDEXED or (name == b"cookie" and len(value) < _SHORT_COOKIE):
                out.append(encode_integer(name_index, 4, 0x10))
            elif unique or size * 2 > self.max_table_size:
                # Would churn the table, or flush most of it.
                out.append(encode_integer(name_index, 4, 0x00))
            else:
                out.append(encode_integer(name_index, 6, 0x40))
                self._add(field, name, size)
            if not name_index:
                _put_str(out, name, huffman_coding)
            _put_str(out, value, huffman_coding and not unique)
        return b"".join(out)

    def _index(self, found: int) -> int:
        """Wire index of a static (-index) or dynamic (absolute id) entry."""
        return -found if found < 0 else self._inserted - found + _STATIC_COUNT

    def _add(self, field: object, name: bytes, size: int) -> None:
        self._evict(self.max_table_size - size)
        abs_id = self._inserted
        self._inserted += 1
        self._entries.append(field)
        self._size += size
        self._fields[field] = abs_id
        current = self._names.get(name)
        if current is None or current >= 0:
            self._names[name] = abs_id

    def _evict(self, target: int) -> None:
        entries = self._entries
        while self._size > target:
            abs_id = self._inserted - len(entries)
            field = entries.pop(0)
            name = cast(Field, field)[0]
            self._size -= _entry_size(cast(Field, field))
            if self._fields.get(field) == abs_id:
                del self._fields[field]
            if self._names.get(name) == abs_id:
                del self._names[name]


def _put_str(out: list[bytes], data: bytes, huffman_coding: bool) -> None:
    """Section 5.2: Huffman-coded unless that is longer."""
    if huffman_coding and data:
        coded = _HUFFMAN_ENCODED.get(data)
        if coded is None:
            coded = _string_literal(data)
            if len(data) <= _HUFFMAN_CACHED_LENGTH:
                if len(_HUFFMAN_ENCODED) >= _HUFFMAN_CACHED_MAX:
                    _HUFFMAN_ENCODED.clear()
                _HUFFMAN_ENCODED[data] = coded
        out.append(coded)
        return
    out.append(encode_integer(len(data), 7, 0))
    out.append(data)


def _string_literal(data: bytes) -> bytes:
    """A string literal (length prefix included), Huffman-coded unless that is longer."""
    length = huffman.encoded_length(data)
    if length <= len(data):  # ties too, as RFC 7541 Appendix C.6 does
        return encode_integer(length, 7, 0x80) + huffman.encode(data)
    return encode_integer(len(data), 7, 0) + data


def _static_maps() -> tuple[dict[object, int], dict[bytes, int]]:
    fields: dict[object, int] = {}
    names: dict[bytes, int] = {}
    for i, field in enumerate(STATIC_TABLE, 1):
        fields.setdefault(field, -i)
        names.setdefault(field[0], -i)
    return fields, names


_STATIC_FIELDS, _STATIC_NAMES = _static_maps()
