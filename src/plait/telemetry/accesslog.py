"""Access log: one JSON object per line, buffered and flushed by the proxy's ticker.

Writes are batched (flushed every second or at 64 KiB) so that logging a request costs a
dict and a `json.dumps`, not a system call. `sample` keeps that fraction of successful
requests; errors (status >= 400 or any response flag) are always logged.
"""

from __future__ import annotations

import random
import time

from plait.telemetry.jsonlines import JsonLines

__all__ = ["AccessLog"]


class AccessLog(JsonLines):
    """Owns its file (closed by `close()`); stdout is flushed but never closed."""

    def __init__(self, target: str = "-", sample: float = 1.0) -> None:
        super().__init__(target)
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
