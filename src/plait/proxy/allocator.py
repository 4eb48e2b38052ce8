"""Keep the TLS layer's per-read buffer on the heap instead of a fresh mmap each time.

Why: uvloop's TLS transport reads decrypted bytes with `SSLObject.read(256 KiB)`, which
allocates a 256 KiB bytes object and shrinks it to the few hundred bytes read. Above glibc's
mmap threshold (128 KiB, and it does not adapt: the chunk it frees has been shrunk) that is
mmap + mremap + munmap, three system calls and a page fault per TLS read, on every read of
every mesh connection. Raising the threshold to 1 MiB serves it from the heap, where the
shrink and the free are bookkeeping. Measured with bench/cpu_per_request.py (RESULTS.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["MMAP_THRESHOLD", "keep_tls_reads_off_mmap"]

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
MMAP_THRESHOLD = 1 << 20


def keep_tls_reads_off_mmap() -> bool:
    """Raise glibc's mmap threshold; False where there is no glibc (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
