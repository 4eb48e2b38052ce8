"""The `plait up` status table: pure rendering, plus a writer that redraws it on a terminal.

`render` is pure (rows in, text out). `LiveTable` owns only what it has written: on a TTY it
redraws the table in place and prints event lines above it; elsewhere (a pipe, a log file, a
test) it prints the table once and then only event lines, so output stays readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TextIO

__all__ = ["COLUMNS", "LiveTable", "Row", "render"]

COLUMNS = ("SERVICE", "INSTANCE", "VERSION", "STATE", "RESTARTS", "REQUESTS")
GAP = "  "
# ANSI: CPL (cursor to the start of the line n lines up), then ED (erase to end of screen).
_UP_AND_CLEAR = "\x1b[{n}F\x1b[J"


@dataclass(frozen=True)
class Row:
    """One instance: `requests` is None while its proxy's counter is unknown."""

    service: str
    instance: str
    version: str
    state: str
    restarts: int
    requests: int | None

    def cells(self) -> tuple[str, ...]:
        requests = "-" if self.requests is None else str(self.requests)
        return (
            self.service,
            self.instance,
            self.version or "-",
            self.state,
            str(self.restarts),
            requests,
        )


def render(rows: Sequence[Row]) -> str:
    """The table as text, one line per row after a header, columns padded to fit."""
    lines = [COLUMNS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "".join(
        GAP.join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


class LiveTable:
    """Writes the table and event lines to `out`; `tty` picks redraw-in-place or append-only."""

    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self._out = out
        self._tty = tty
        self._shown = ""  # the table text currently on screen (TTY) or printed once (not)

    def update(self, rows: Sequence[Row]) -> None:
        """Show the current rows: redraw on a TTY; elsewhere only the first time."""
        text = render(rows)
        if self._tty:
            self._out.write(self._erase() + text)
        elif not self._shown:
            self._out.write(text)
        self._shown = text
        self._out.flush()

    def event(self, line: str) -> None:
        """Print an event line; on a TTY above the table, which is then drawn again."""
        if self._tty and self._shown:
            self._out.write(self._erase() + line + "\n" + self._shown)
        else:
            self._out.write(line + "\n")
        self._out.flush()

    def _erase(self) -> str:
        n = self._shown.count("\n")
        return _UP_AND_CLEAR.format(n=n) if n else ""
