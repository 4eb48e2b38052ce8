"""Access log: one JSON object per line, buffered and flushed by the proxy's ticker.

Writes are batched (flushed every second or at 64 KiB) so that logging a request costs a
dict and a `json.dumps`, not a system call. `sample` keeps that fraction of successful
requests; errors (status >= 400 or any response flag) are always logged.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import IO, Any

__all__ = ["AccessLog"]

FLUSH_BYTES = 64 * 1024


class AccessLog:
    """Owns its file (closed by `close()`); stdout is flushed but never closed."""

    __slots__ = ("_out", "_owned", "_buffer", "_size", "sample", "_rng", "_second", "_stamp")

    def __init__(self, target: str = "-", sample: float = 1.0) -> None:
        if target == "-":
            self._out: IO[str] = sys.stdout
            self._owned = False
        else:
            self._out = open(target, "a", encoding="utf-8")  # noqa: SIM115 (owned until close)
            self._owned = True
        self._buffer: list[str] = []
        self._size = 0
        self.sample = sample
        self._rng = random.Random()
        self._second = -1
        self._stamp = ""

    def wants(self, status: int, flags: str) -> bool:
        return (
            self.sample >= 1.0 or status >= 400 or bool(flags) or self._rng.random() < self.sample
        )

    def timestamp(self, wall: float) -> str:
        """RFC 3339 with milliseconds; the seconds part is formatted once per second."""
        second = int(wall)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((wall - second) * 1000):03d}Z"

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            try:
                self._out.write("".join(self._buffer))
                self._out.flush()
            except (OSError, ValueError):
                pass  # a closed stdout must not take the proxy down
            self._buffer.clear()
            self._size = 0

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._out.close()
