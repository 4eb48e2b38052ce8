"""HPACK Huffman code (RFC 7541 section 5.2 and Appendix B): table-driven coding.

Decoding walks a 4-bit state machine built once at import from the code table: each state is
an inner node of the code tree, each input nibble moves to a new state and emits at most one
symbol (the shortest code has 5 bits). So a byte costs two list lookups, not eight bit steps.
Encoding shifts codes into a small accumulator and flushes whole bytes, so the accumulator
stays under 64 bits (codes are at most 30 bits) and compiles to machine ints under mypyc.
"""

from __future__ import annotations

from typing import Final

from plait.proto.h2.errors import CompressionError

__all__ = ["decode", "encode", "encoded_length"]

# RFC 7541 Appendix B: (code, bit length) for byte values 0..255 and EOS (256).
CODES: Final[list[tuple[int, int]]] = [
    (0x1FF8, 13),
    (0x7FFFD8, 23),
    (0xFFFFFE2, 28),
    (0xFFFFFE3, 28),  # 0
    (0xFFFFFE4, 28),
    (0xFFFFFE5, 28),
    (0xFFFFFE6, 28),
    (0xFFFFFE7, 28),  # 4
    (0xFFFFFE8, 28),
    (0xFFFFEA, 24),
    (0x3FFFFFFC, 30),
    (0xFFFFFE9, 28),  # 8
    (0xFFFFFEA, 28),
    (0x3FFFFFFD, 30),
    (0xFFFFFEB, 28),
    (0xFFFFFEC, 28),  # 12
    (0xFFFFFED, 28),
    (0xFFFFFEE, 28),
    (0xFFFFFEF, 28),
    (0xFFFFFF0, 28),  # 16
    (0xFFFFFF1, 28),
    (0xFFFFFF2, 28),
    (0x3FFFFFFE, 30),
    (0xFFFFFF3, 28),  # 20
    (0xFFFFFF4, 28),
    (0xFFFFFF5, 28),
    (0xFFFFFF6, 28),
    (0xFFFFFF7, 28),  # 24
    (0xFFFFFF8, 28),
    (0xFFFFFF9, 28),
    (0xFFFFFFA, 28),
    (0xFFFFFFB, 28),  # 28
    (0x14, 6),
    (0x3F8, 10),
    (0x3F9, 10),
    (0xFFA, 12),  # 32
    (0x1FF9, 13),
    (0x15, 6),
    (0xF8, 8),
    (0x7FA, 11),  # 36
    (0x3FA, 10),
    (0x3FB, 10),
    (0xF9, 8),
    (0x7FB, 11),  # 40
    (0xFA, 8),
    (0x16, 6),
    (0x17, 6),
    (0x18, 6),  # 44
    (0x0, 5),
    (0x1, 5),
    (0x2, 5),
    (0x19, 6),  # 48
    (0x1A, 6),
    (0x1B, 6),
    (0x1C, 6),
    (0x1D, 6),  # 52
    (0x1E, 6),
    (0x1F, 6),
    (0x5C, 7),
    (0xFB, 8),  # 56
    (0x7FFC, 15),
    (0x20, 6),
    (0xFFB, 12),
    (0x3FC, 10),  # 60
    (0x1FFA, 13),
    (0x21, 6),
    (0x5D, 7),
    (0x5E, 7),  # 64
    (0x5F, 7),
    (0x60, 7),
    (0x61, 7),
    (0x62, 7),  # 68
    (0x63, 7),
    (0x64, 7),
    (0x65, 7),
    (0x66, 7),  # 72
    (0x67, 7),
    (0x68, 7),
    (0x69, 7),
    (0x6A, 7),  # 76
    (0x6B, 7),
    (0x6C, 7),
    (0x6D, 7),
    (0x6E, 7),  # 80
    (0x6F, 7),
    (0x70, 7),
    (0x71, 7),
    (0x72, 7),  # 84
    (0xFC, 8),
    (0x73, 7),
    (0xFD, 8),
    (0x1FFB, 13),  # 88
    (0x7FFF0, 19),
    (0x1FFC, 13),
    (0x3FFC, 14),
    (0x22, 6),  # 92
    (0x7FFD, 15),
    (0x3, 5),
    (0x23, 6),
    (0x4, 5),  # 96
    (0x24, 6),
    (0x5, 5),
    (0x25, 6),
    (0x26, 6),  # 100
    (0x27, 6),
    (0x6, 5),
    (0x74, 7),
    (0x75, 7),  # 104
    (0x28, 6),
    (0x29, 6),
    (0x2A, 6),
    (0x7, 5),  # 108
    (0x2B, 6),
    (0x76, 7),
    (0x2C, 6),
    (0x8, 5),  # 112
    (0x9, 5),
    (0x2D, 6),
    (0x77, 7),
    (0x78, 7),  # 116
    (0x79, 7),
    (0x7A, 7),
    (0x7B, 7),
    (0x7FFE, 15),  # 120
    (0x7FC, 11),
    (0x3FFD, 14),
    (0x1FFD, 13),
    (0xFFFFFFC, 28),  # 124
    (0xFFFE6, 20),
    (0x3FFFD2, 22),
    (0xFFFE7, 20),
    (0xFFFE8, 20),  # 128
    (0x3FFFD3, 22),
    (0x3FFFD4, 22),
    (0x3FFFD5, 22),
    (0x7FFFD9, 23),  # 132
    (0x3FFFD6, 22),
    (0x7FFFDA, 23),
    (0x7FFFDB, 23),
    (0x7FFFDC, 23),  # 136
    (0x7FFFDD, 23),
    (0x7FFFDE, 23),
    (0xFFFFEB, 24),
    (0x7FFFDF, 23),  # 140
    (0xFFFFEC, 24),
    (0xFFFFED, 24),
    (0x3FFFD7, 22),
    (0x7FFFE0, 23),  # 144
    (0xFFFFEE, 24),
    (0x7FFFE1, 23),
    (0x7FFFE2, 23),
    (0x7FFFE3, 23),  # 148
    (0x7FFFE4, 23),
    (0x1FFFDC, 21),
    (0x3FFFD8, 22),
    (0x7FFFE5, 23),  # 152
    (0x3FFFD9, 22),
    (0x7FFFE6, 23),
    (0x7FFFE7, 23),
    (0xFFFFEF, 24),  # 156
    (0x3FFFDA, 22),
    (0x1FFFDD, 21),
    (0xFFFE9, 20),
    (0x3FFFDB, 22),  # 160
    (0x3FFFDC, 22),
    (0x7FFFE8, 23),
    (0x7FFFE9, 23),
    (0x1FFFDE, 21),  # 164
    (0x7FFFEA, 23),
    (0x3FFFDD, 22),
    (0x3FFFDE, 22),
    (0xFFFFF0, 24),  # 168
    (0x1FFFDF, 21),
    (0x3FFFDF, 22),
    (0x7FFFEB, 23),
    (0x7FFFEC, 23),  # 172
    (0x1FFFE0, 21),
    (0x1FFFE1, 21),
    (0x3FFFE0, 22),
    (0x1FFFE2, 21),  # 176
    (0x7FFFED, 23),
    (0x3FFFE1, 22),
    (0x7FFFEE, 23),
    (0x7FFFEF, 23),  # 180
    (0xFFFEA, 20),
    (0x3FFFE2, 22),
    (0x3FFFE3, 22),
    (0x3FFFE4, 22),  # 184
    (0x7FFFF0, 23),
    (0x3FFFE5, 22),
    (0x3FFFE6, 22),
    (0x7FFFF1, 23),  # 188
    (0x3FFFFE0, 26),
    (0x3FFFFE1, 26),
    (0xFFFEB, 20),
    (0x7FFF1, 19),  # 192
    (0x3FFFE7, 22),
    (0x7FFFF2, 23),
    (0x3FFFE8, 22),
    (0x1FFFFEC, 25),  # 196
    (0x3FFFFE2, 26),
    (0x3FFFFE3, 26),
    (0x3FFFFE4, 26),
    (0x7FFFFDE, 27),  # 200
    (0x7FFFFDF, 27),
    (0x3FFFFE5, 26),
    (0xFFFFF1, 24),
    (0x1FFFFED, 25),  # 204
    (0x7FFF2, 19),
    (0x1FFFE3, 21),
    (0x3FFFFE6, 26),
    (0x7FFFFE0, 27),  # 208
    (0x7FFFFE1, 27),
    (0x3FFFFE7, 26),
    (0x7FFFFE2, 27),
    (0xFFFFF2, 24),  # 212
    (0x1FFFE4, 21),
    (0x1FFFE5, 21),
    (0x3FFFFE8, 26),
    (0x3FFFFE9, 26),  # 216
    (0xFFFFFFD, 28),
    (0x7FFFFE3, 27),
    (0x7FFFFE4, 27),
    (0x7FFFFE5, 27),  # 220
    (0xFFFEC, 20),
    (0xFFFFF3, 24),
    (0xFFFED, 20),
    (0x1FFFE6, 21),  # 224
    (0x3FFFE9, 22),
    (0x1FFFE7, 21),
    (0x1FFFE8, 21),
    (0x7FFFF3, 23),  # 228
    (0x3FFFEA, 22),
    (0x3FFFEB, 22),
    (0x1FFFFEE, 25),
    (0x1FFFFEF, 25),  # 232
    (0xFFFFF4, 24),
    (0xFFFFF5, 24),
    (0x3FFFFEA, 26),
    (0x7FFFF4, 23),  # 236
    (0x3FFFFEB, 26),
    (0x7FFFFE6, 27),
    (0x3FFFFEC, 26),
    (0x3FFFFED, 26),  # 240
    (0x7FFFFE7, 27),
    (0x7FFFFE8, 27),
    (0x7FFFFE9, 27),
    (0x7FFFFEA, 27),  # 244
    (0x7FFFFEB, 27),
    (0xFFFFFFE, 28),
    (0x7FFFFEC, 27),
    (0x7FFFFED, 27),  # 248
    (0x7FFFFEE, 27),
    (0x7FFFFEF, 27),
    (0x7FFFFF0, 27),
    (0x3FFFFEE, 26),  # 252
    (0x3FFFFFFF, 30),  # 256
]

_CODE: Final = [c for c, _ in CODES[:256]]
_BITS: Final = [n for _, n in CODES[:256]]
_EOS: Final = 256

# Decoder entries, packed into one int: next state << 16 | flags << 8 | symbol.
_EMIT: Final = 0x100
_FAIL: Final = 0x200


def _build_decoder() -> tuple[list[int], list[bool]]:
    """The nibble transition table and, per state, whether input may end there."""
    # Inner nodes of the code tree: children[node] = [zero, one]; a child >= 0 is an inner
    # node, a child < 0 is the leaf of symbol -child - 1.
    children: list[list[int]] = [[0, 0]]
    for sym, (code, bits) in enumerate(CODES):
        node = 0
        for i in range(bits - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                children[node][bit] = -sym - 1
            else:
                if children[node][bit] == 0:
                    children.append([0, 0])
                    children[node][bit] = len(children) - 1
                node = children[node][bit]
    # Section 5.2: input may end only in padding, i.e. a prefix of EOS (all ones) of at
    # most 7 bits; those are the nodes reached from the root by up to seven 1 bits.
    accepting = [False] * len(children)
    node = 0
    for _ in range(8):
        accepting[node] = True
        node = children[node][1]
    table = [0] * (len(children) * 16)
    for state in range(len(children)):
        for nibble in range(16):
            node, entry = state, 0
            for i in (3, 2, 1, 0):
                child = children[node][(nibble >> i) & 1]
                if child >= 0:
                    node = child
                    continue
                sym = -child - 1
                if sym == _EOS:  # section 5.2: EOS in a string is a decoding error
                    entry = _FAIL
                    break
                entry = _EMIT | sym
                node = 0
            table[state * 16 + nibble] = (node << 16) | entry
    return table, accepting


_TABLE, _ACCEPTING = _build_decoder()


def decode(data: bytes) -> bytes:
    """The bytes a Huffman-coded string stands for; CompressionError if it is malformed."""
    table = _TABLE
    out = bytearray()
    state = 0
    for byte in data:
        entry = table[(state << 4) | (byte >> 4)]
        if entry & 0x300:
            if entry & _FAIL:
                raise CompressionError("EOS symbol in a Huffman-coded string")
            out.append(entry & 0xFF)
        state = entry >> 16
        entry = table[(state << 4) | (byte & 0xF)]
        if entry & 0x300:
            if entry & _FAIL:
                raise CompressionError("EOS symbol in a Huffman-coded string")
            out.append(entry & 0xFF)
        state = entry >> 16
    if not _ACCEPTING[state]:
        raise CompressionError("bad padding in a Huffman-coded string")
    return bytes(out)


def encoded_length(data: bytes) -> int:
    """Bytes `encode(data)` would take: to choose it only where it is shorter."""
    bits = _BITS
    total = 0
    for byte in data:
        total += bits[byte]
    return (total + 7) >> 3


def encode(data: bytes) -> bytes:
    """Huffman-code `data`, padded with the most significant bits of EOS (ones)."""
    codes, bits = _CODE, _BITS
    out = bytearray()
    acc = 0
    n = 0
    for byte in data:
        acc = (acc << bits[byte]) | codes[byte]
        n += bits[byte]
        while n >= 8:
            n -= 8
            out.append((acc >> n) & 0xFF)
        acc &= (1 << n) - 1
    if n:
        out.append(((acc << (8 - n)) | (0xFF >> n)) & 0xFF)
    return bytes(out)
