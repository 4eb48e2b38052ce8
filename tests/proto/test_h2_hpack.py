"""HPACK (RFC 7541): Appendix C byte for byte, and round trips against the `hpack` library."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plait.proto.h2 import huffman
from plait.proto.h2.errors import CompressionError, H2StreamError, HeaderListTooLarge
from plait.proto.h2.hpack import Decoder, Encoder, encode_integer, field_error


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", "").replace("\n", ""))


# RFC 7541 Appendix C.3-C.6: (block, header list, dynamic table newest first, table size).
REQUESTS = [
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":path", b"/"),
        (b":authority", b"www.example.com"),
        (b"cache-control", b"no-cache"),
    ],
    [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", b"/index.html"),
        (b":authority", b"www.example.com"),
        (b"custom-key", b"custom-value"),
    ],
]
REQUEST_TABLES = [
    ([(b":authority", b"www.example.com")], 57),
    ([(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 110),
    (
        [
            (b"custom-key", b"custom-value"),
            (b"cache-control", b"no-cache"),
            (b":authority", b"www.example.com"),
        ],
        164,
    ),
]
C3 = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
]
C4 = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
]

DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = b"https://www.example.com"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES = [
    [
        (b":status", b"302"),
        (b"cache-control", b"private"),
        (b"date", DATE1),
        (b"location", LOCATION),
    ],
    [
        (b":status", b"307"),
        (b"cache-control", b"private"),
        (b"date", DATE1),
        (b"location", LOCATION),
    ],
    [
        (b":status", b"200"),
        (b"cache-control", b"private"),
        (b"date", DATE2),
        (b"location", LOCATION),
        (b"content-encoding", b"gzip"),
        (b"set-cookie", COOKIE),
    ],
]
RESPONSE_TABLES = [
    (
        [
            (b"location", LOCATION),
            (b"date", DATE1),
            (b"cache-control", b"private"),
            (b":status", b"302"),
        ],
        222,
    ),
    (
        [
            (b":status", b"307"),
            (b"location", LOCATION),
            (b"date", DATE1),
            (b"cache-control", b"private"),
        ],
        222,
    ),
    ([(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)], 215),
]
C5 = [
    """4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
       2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
       6c65 2e63 6f6d""",
    "4803 3330 37c1 c0bf",
    """88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
       54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
       5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
       3d31""",
]
C6 = [
    """4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
       2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3""",
    "4883 640e ffc1 c0bf",
    """88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
       77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
       9587 3160 65c0 03ed 4ee5 b106 3d50 07""",
]
SERIES = [
    ("C.3", C3, REQUESTS, REQUEST_TABLES, 4096, False),
    ("C.4", C4, REQUESTS, REQUEST_TABLES, 4096, True),
    ("C.5", C5, RESPONSES, RESPONSE_TABLES, 256, False),
    ("C.6", C6, RESPONSES, RESPONSE_TABLES, 256, True),
]


def table_of(decoder: Decoder) -> list[tuple[bytes, bytes]]:
    return list(reversed(decoder._entries))


@pytest.mark.parametrize(
    ("name", "blocks", "lists", "tables", "size", "huff"), SERIES, ids=[s[0] for s in SERIES]
)
def test_appendix_c_decodes_byte_for_byte(name, blocks, lists, tables, size, huff) -> None:
    decoder = Decoder(size)
    for block, expected, (table, table_size) in zip(blocks, lists, tables, strict=True):
        assert decoder.decode(unhex(block)) == expected
        assert table_of(decoder) == table
        assert decoder.table_size == table_size


@pytest.mark.parametrize(
    ("name", "blocks", "lists", "tables", "size", "huff"), SERIES, ids=[s[0] for s in SERIES]
)
def test_appendix_c_encodes_byte_for_byte(name, blocks, lists, tables, size, huff) -> None:
    encoder = Encoder(size)
    for block, fields in zip(blocks, lists, strict=True):
        assert encoder.encode(fields, huff).hex() == unhex(block).hex()


@pytest.mark.parametrize(
    ("block", "fields", "table"),
    [
        (
            "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
            [(b"custom-key", b"custom-header")],
            1,
        ),
        ("040c 2f73 616d 706c 652f 7061 7468", [(b":path", b"/sample/path")], 0),
        ("1008 7061 7373 776f 7264 0673 6563 7265 74", [(b"password", b"secret")], 0),
        ("82", [(b":method", b"GET")], 0),
    ],
    ids=["C.2.1", "C.2.2", "C.2.3", "C.2.4"],
)
def test_appendix_c2_representations(block: str, fields, table: int) -> None:
    decoder = Decoder()
    assert decoder.decode(unhex(block)) == fields
    assert len(decoder._entries) == table


def test_appendix_c1_integers() -> None:
    assert encode_integer(10, 5) == b"\x0a"
    assert encode_integer(1337, 5) == b"\x1f\x9a\x0a"
    assert encode_integer(42, 8) == b"\x2a"


def test_huffman_matches_the_hpack_library_for_every_byte() -> None:
    data = bytes(range(256)) * 2
    assert huffman.encode(data) == hpack.huffman.HuffmanEncoder(
        hpack.huffman_constants.REQUEST_CODES, hpack.huffman_constants.REQUEST_CODES_LENGTH
    ).encode(data)
    assert huffman.decode(huffman.encode(data)) == data


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_huffman_round_trips(data: bytes) -> None:
    coded = huffman.encode(data)
    assert len(coded) == huffman.encoded_length(data)
    assert huffman.decode(coded) == data
    assert hpack.huffman_table.decode_huffman(coded) == data


@pytest.mark.parametrize(
    "coded",
    [
        b"\xff\xff\xff\xff",  # EOS (30 ones) inside the string: section 5.2
        b"\x00",  # padding of zeros, not the EOS prefix
        b"\xf1\xe3\xc2\xe5\xf2\x3a\x6b\xa0\xab\x90\xf4\xff\xff",  # padding of 8+ bits
    ],
)
def test_huffman_rejects_bad_padding_and_eos(coded: bytes) -> None:
    with pytest.raises(CompressionError):
        huffman.decode(coded)


# round trips against the hpack library ---------------------------------------------------

NAMES = [
    b"x-a",
    b"x-b",
    b"cookie",
    b"authorization",
    b"accept",
    b"user-agent",
    b"x-long-header-name",
]
TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789-"
field = st.tuples(
    st.sampled_from(NAMES) | st.text(TOKEN, min_size=1, max_size=16).map(str.encode),
    st.binary(max_size=40)  # Huffman would grow most of these: literal octets
    | st.text(TOKEN + "/._ ", max_size=120).map(str.encode)  # Huffman-worthy
    | st.just(b"x" * 1500),  # evicts most of a table
)
block_lists = st.lists(st.lists(field, max_size=10), min_size=1, max_size=6)
table_sizes = st.lists(st.sampled_from([0, 64, 256, 1024, 4096]), min_size=1, max_size=6)


def as_pairs(headers) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in headers]


@given(block_lists, table_sizes, st.booleans())
@settings(max_examples=80, deadline=None)
def test_blocks_we_encode_decode_the_same_in_hpack(lists, sizes, huff) -> None:
    ours = Encoder()
    theirs = hpack.Decoder()
    for i, headers in enumerate(lists):
        if i < len(sizes) and i % 2:  # the peer's SETTINGS_HEADER_TABLE_SIZE changes
            ours.set_max_table_size(sizes[i])
            theirs.max_allowed_table_size = sizes[i]
        assert as_pairs(theirs.decode(ours.encode(headers, huff), raw=True)) == headers
        assert theirs.header_table_size == ours.max_table_size


@given(block_lists, table_sizes, st.booleans())
@settings(max_examples=80, deadline=None)
def test_blocks_hpack_encodes_decode_the_same_here(lists, sizes, huff) -> None:
    theirs = hpack.Encoder()
    ours = Decoder(max_header_list_size=1 << 30)
    for i, headers in enumerate(lists):
        if i < len(sizes) and i % 2:
            theirs.header_table_size = sizes[i]  # signalled in the next block (section 4.2)
        assert ours.decode(theirs.encode(headers, huffman=huff)) == headers
        assert ours.table_size == theirs.header_table._current_size


def test_two_size_changes_between_blocks_signal_the_minimum_then_the_final() -> None:
    encoder = Encoder()
    encoder.encode([(b"x-a", b"1")])
    encoder.set_max_table_size(0)
    encoder.set_max_table_size(2048)
    block = encoder.encode([(b"x-b", b"2")])
    assert block.startswith(b"\x20\x3f\xe1\x0f")  # size update 0, then 2048 (section 4.2)
    decoder = hpack.Decoder()
    decoder.max_allowed_table_size = 4096
    decoder.decode(Encoder().encode([(b"x-a", b"1")]))
    assert as_pairs(decoder.decode(block, raw=True)) == [(b"x-b", b"2")]


def test_encoder_caps_the_table_a_peer_offers() -> None:
    encoder = Encoder()
    encoder.set_max_table_size(1 << 30)
    assert encoder.max_table_size == 4096


def test_credentials_are_never_indexed() -> None:
    encoder = Encoder()
    block = encoder.encode([(b"authorization", b"Bearer x"), (b"cookie", b"a=b")])
    assert block[0] & 0xF0 == 0x10
    assert encoder._entries == []


# decoder limits and errors ---------------------------------------------------------------


def test_oversized_header_list_is_refused_after_keeping_the_table_in_step() -> None:
    encoder = Encoder()
    decoder = Decoder(max_header_list_size=200)
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(encoder.encode([(b"x-a", b"a" * 100), (b"x-b", b"b" * 100)]))
    # The table saw both literals, so the next block's indexes still resolve.
    assert decoder.decode(encoder.encode([(b"x-b", b"b" * 100)])) == [(b"x-b", b"b" * 100)]


def test_indexed_bomb_is_bounded_by_the_header_list_size() -> None:
    encoder = Encoder()
    decoder = Decoder(max_header_list_size=64 * 1024)
    decoder.decode(encoder.encode([(b"x-big", b"v" * 1000)]))
    bomb = encoder.encode([(b"x-big", b"v" * 1000)] * 10_000)  # 10,000 one-byte indexes
    assert len(bomb) == 10_000
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(bomb)


@pytest.mark.parametrize(
    "block",
    [
        b"\xbe",  # index 62 with an empty dynamic table
        b"\x80",  # index 0
        b"\x40\x05ab",  # string runs past the block
        b"\xff\xff\xff\xff\xff\xff\xff",  # integer runs past the block / too large
        b"\x3f\xe1\x3f",  # size update over SETTINGS_HEADER_TABLE_SIZE
        b"\x82\x20",  # size update after a field (section 4.2)
    ],
)
def test_malformed_blocks_are_compression_errors(block: bytes) -> None:
    with pytest.raises(CompressionError):
        Decoder().decode(block)


def test_entry_larger_than_the_table_empties_it() -> None:
    decoder = Decoder(max_table_size=100)
    decoder.decode(Encoder(100).encode([(b"a", b"b")]))
    block = b"\x40\x01x" + b"\x7f\x21" + b"y" * 160  # literal with indexing, 160-byte value
    assert decoder.decode(block) == [(b"x", b"y" * 160)]
    assert decoder.table_size == 0


@pytest.mark.parametrize(
    ("name", "value", "bad"),
    [
        (b"x-ok", b"fine value", False),
        (b":path", b"/", False),
        (b"X-Upper", b"v", True),
        (b"x:colon", b"v", True),
        (b"x sp", b"v", True),
        (b"", b"v", True),
        (b"x-a", b"a\r\nb", True),
        (b"x-a", b"a\x00", True),
        (b"x-a", b" lead", True),
        (b"x-a", b"trail\t", True),
    ],
)
def test_field_syntax_of_rfc9113_section_8_2_1(name: bytes, value: bytes, bad: bool) -> None:
    assert bool(field_error(name, value)) is bad


def test_decoder_checks_literals_but_still_indexes_them() -> None:
    encoder = hpack.Encoder()
    decoder = Decoder(check_fields=True)
    with pytest.raises(H2StreamError):
        decoder.decode(encoder.encode([(b"x-a", b"bad\r\nvalue"), (b"x-b", b"ok")]))
    assert decoder.decode(encoder.encode([(b"x-b", b"ok")])) == [(b"x-b", b"ok")]


def test_literal_strings_are_coded_once_and_the_cache_stays_bounded() -> None:
    from plait.proto.h2 import hpack as ours

    request_id = [(b"x-request-id", b"%032x" % n) for n in range(3)]  # a literal name each time
    blocks = [Encoder().encode([field]) for field in request_id]
    again = [Encoder().encode([field]) for field in request_id]  # now from the cache
    assert blocks == again
    assert [hpack.Decoder().decode(b, raw=True) for b in again] == [[f] for f in request_id]
    assert b"x-request-id" not in blocks[0]  # the name is Huffman-coded
    for n in range(3000):  # many distinct names: the cache is emptied, never past its bound
        Encoder().encode([(b"x-name-%d" % n, b"v")])
        assert len(ours._HUFFMAN_ENCODED) <= ours._HUFFMAN_CACHED_MAX
