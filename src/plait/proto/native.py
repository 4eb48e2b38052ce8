"""Picks the mypyc-compiled copies of the pure codecs, when they match the source.

`python -m plait.proto.build_native` (run by `make venv`) compiles copies of `h1.py` and of
the HTTP/2 codec modules; each copy records the sha256 of the sources it was built from.
A copy is used only if that digest equals the current sources' (an edited source without a
rebuild runs as pure Python, never as stale code) and PLAIT_PURE_PYTHON is not set.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

__all__ = ["H2_COMPILED", "H2_SHARED", "digest", "h2_module", "load"]

HERE = Path(__file__).resolve().parent
# The HTTP/2 codec modules that are compiled, and those the compiled ones share with the
# pure-Python package (so that exceptions, events and settings are the very same classes).
H2_COMPILED = (
    "huffman",
    "frames",
    "hpack",
    "streams",
    "guards",
    "headers",
    "state",
    "sending",
    "control",
    "connection",
)
H2_SHARED = ("errors", "events", "config")


def digest(paths: Iterable[Path]) -> str:
    """sha256 over the files' names and contents, in the order given."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def h2_sources() -> list[Path]:
    return [HERE / "h2" / f"{name}.py" for name in (*H2_COMPILED, *H2_SHARED)]


def load(module: str, sources: Iterable[Path]) -> ModuleType | None:
    """`module` (holding SOURCE_SHA256) if it is compiled from exactly `sources`, else None."""
    if os.environ.get("PLAIT_PURE_PYTHON"):
        return None
    try:
        compiled = importlib.import_module(module)
        current = digest(sources)
    except (ImportError, OSError):
        return None
    if getattr(compiled, "SOURCE_SHA256", None) != current:
        return None
    return compiled


_h2_checked = False
_h2_ok = False


def h2_module(name: str) -> ModuleType | None:
    """The compiled copy of `plait.proto.h2.<name>`, or None (use the pure-Python one)."""
    global _h2_checked, _h2_ok
    if not _h2_checked:
        _h2_checked = True
        _h2_ok = load("plait.proto._h2_compiled", h2_sources()) is not None
    if not _h2_ok:
        return None
    try:
        return importlib.import_module(f"plait.proto._h2_compiled.{name}")
    except ImportError:
        return None
