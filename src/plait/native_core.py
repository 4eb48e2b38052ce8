"""Loads the mypyc-compiled data path ("the core") in place of its modules, when it is current.

Why: a proxied request runs about a hundred small Python steps per proxy (parse, route,
balance, breaker, retry budget, header hygiene, metrics, the HTTP/2 frames), none of them
hot on its own. Compiled together with mypyc, as native classes that reach each other's
attributes at fixed offsets, the same source costs the pair about a quarter less CPU per
request (bench/RESULTS.md, "Fifth round", items 22-23). Compiling one module alone does not pay: its
code then reaches the interpreted classes around it through generic attribute lookups.

How: `python -m plait.proto.build_native` (run by `make venv`) compiles the modules of
`CORE` as one mypyc group. The group's shared library is `plait/_core__mypyc*.so`; each
module's extension goes to `plait/_core/<module name>*.so`, not beside its source, so an
edited source is never shadowed by a stale build; `plait/_core/SOURCES.sha256` records the
digest of the sources it came from. `install()` (called by `plait/__init__.py`) puts a
finder first on `sys.meta_path` that serves those extensions for the modules of `CORE`, and
only if that digest equals the current sources' and PLAIT_PURE_PYTHON is not set; otherwise
everything runs as the plain Python it is.

What the compiled classes cannot do, and the source therefore does not: `__slots__` (native
classes have fixed attributes anyway), bases that are interpreted classes (the connections
are asyncio protocols by duck typing, not by subclassing `asyncio.Protocol`), and subclasses
or monkeypatching from interpreted code.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

# Loads nothing of the core: plait.proto and plait.proto.native import only the standard library.
from plait.proto import native

__all__ = ["CORE", "DIRECTORY", "GROUP", "active", "digest", "install", "sources"]

PACKAGE = Path(__file__).resolve().parent
# Compiled together: every class on a request's path, and what they call per request.
CORE = (
    "plait.proto.events",
    "plait.proxy.batching",
    "plait.proxy.downstream",
    "plait.proxy.h2_downstream",
    "plait.proxy.h2_upstream",
    "plait.proxy.upstream",
    "plait.proxy.balance",
    "plait.proxy.listener",
    "plait.proxy.routing",
    "plait.proxy.resilience.breaker",
    "plait.proxy.resilience.budget",
    "plait.telemetry.metrics",
    "plait.telemetry.stats",
    "plait.proxy.filters.metrics",
    "plait.proxy.filters.path_normalize",
    "plait.telemetry.jsonlines",
    "plait.telemetry.accesslog",
    "plait.proxy.filters.audit",  # an AuditLog is a JsonLines: interpreted, it could not be
)
GROUP = "plait._core"  # its shared library: plait/_core__mypyc*.so
DIRECTORY = PACKAGE / "_core"
MANIFEST = DIRECTORY / "SOURCES.sha256"

_active = False


def sources() -> list[Path]:
    """The core's source files, in `CORE` order."""
    return [PACKAGE.parent / (name.replace(".", "/") + ".py") for name in CORE]


def digest() -> str:
    """sha256 over the core's sources, as the compiled codecs' (plait.proto.native)."""
    return native.digest(sources())


def extension(name: str) -> Path | None:
    """The built extension of core module `name`, if there is one."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = DIRECTORY / f"{name}{suffix}"
        if path.exists():
            return path
    return None


def current() -> bool:
    """Whether a build exists and was made from exactly the current sources."""
    try:
        return MANIFEST.read_text().strip() == digest()
    except OSError:
        return False


class _CoreFinder(importlib.abc.MetaPathFinder):
    """Serves the compiled extension for the modules of `CORE`; None for anything else."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in CORE:
            return None
        built = extension(fullname)
        return importlib.util.spec_from_file_location(fullname, built) if built else None


def install() -> bool:
    """Use the compiled core from now on, if it is current; returns whether it is."""
    global _active
    if _active:
        return True
    if os.environ.get("PLAIT_PURE_PYTHON") or not current():
        return False
    if any(name in sys.modules for name in CORE):
        return False  # too late: a core module is already loaded as Python
    sys.meta_path.insert(0, _CoreFinder())
    _active = True
    return True


def active() -> bool:
    """Whether the compiled core is in use in this process."""
    return _active
