"""Buffered JSON-lines output shared by the access log and the audit log.

Lines are collected in memory and written when 64 KiB have gathered or when the proxy's
1-second ticker calls `flush()`, so logging a request costs a `json.dumps`, not a system
call. The writer owns a file it opens (closed by `close()`); stdout or a given stream is
flushed but never closed. A full or closed output drops lines rather than stop the proxy.
"""

from __future__ import annotations

import json
import sys
from typing import IO, Any, Final

__all__ = ["FLUSH_BYTES", "JsonLines"]

FLUSH_BYTES: Final = 64 * 1024


class JsonLines:
    def __init__(self, target: str | IO[str] = "-") -> None:
        self._owned = isinstance(target, str) and target != "-"
        if isinstance(target, str):
            self._out: IO[str] = (
                open(target, "a", encoding="utf-8") if self._owned else sys.stdout  # noqa: SIM115
            )
        else:
            self._out = target
        self._buffer: list[str] = []
        self._size = 0

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
                pass  # a closed or full output must not take the proxy down
            self._buffer.clear()
            self._size = 0

    def close(self) -> None:
        self.flush()
        if self._owned:
            self._out.close()
