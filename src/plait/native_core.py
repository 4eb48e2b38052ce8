"""Loads the mypyc-compiled data path ("the core") in place of its modules, when it is current.

Why: a proxied request runs about a hundred small Python steps per proxy (parse, route,
balance, breaker, retry budget, header hygiene, metrics, the HTTP/2 frames), none of them
hot on its own. Compiled together with mypyc, as native classes that reach each other's
attributes at fixed offsets and call each other's functions directly, the same source costs
the pair about a third less CPU per request (bench/RESULTS.md, "Fifth round", items 22-23,
and "Sixth round"). Compiling one module alone does not pay: its code then reaches the
interpreted classes around it through generic attribute lookups and calls.

How: `python -m plait.build_native` (run by `make venv`) compiles the modules of `CORE` as
one mypyc group. The group's shared library is `plait/_core__mypyc*.so`; each module's
extension goes to `plait/_core/<module name>*.so`, not beside its source, so an edited
source is never shadowed by a stale build; `plait/_core/SOURCES.sha256` records the digest
of the sources it came from. `install()` (called by `plait/__init__.py`) puts a finder first
on `sys.meta_path` that serves those extensions for the modules of `CORE`, and only if that
digest equals the current sources' and PLAIT_PURE_PYTHON is not set; otherwise everything
runs as the plain Python it is.

What the compiled classes cannot do, and the source therefore does not: bases that are
interpreted classes (the connections are asyncio protocols by duck typing, not by
subclassing `asyncio.Protocol`), and subclasses or monkeypatching from interpreted code.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

__all__ = [
    "CORE",
    "DIRECTORY",
    "GROUP",
    "active",
    "digest",
    "install",
    "source_module",
    "sources",
]

PACKAGE = Path(__file__).resolve().parent
# Compiled together: the codecs, every class on a request's path, and what they call per
# request. The HTTP/2 codec's errors, events and settings stay Python: nothing of them is hot.
CORE = (
    "plait.proto.events",
    "plait.proto.h1",
    "plait.proto.h2.huffman",
    "plait.proto.h2.frames",
    "plait.proto.h2.hpack",
    "plait.proto.h2.streams",
    "plait.proto.h2.guards",
    "plait.proto.h2.headers",
    "plait.proto.h2.state",
    "plait.proto.h2.sending",
    "plait.proto.h2.control",
    "plait.proto.h2.connection",
    "plait.proxy.batching",
    "plait.proxy.sides",
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
    """sha256 over the core's sources' names and contents."""
    h = hashlib.sha256()
    for path in sources():
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def source_module(name: str) -> ModuleType:
    """A fresh instance of core module `name` run from its Python source, whether or not the
    build is in use (a file location bypasses the finder): to compare a build with its source."""
    alias = f"{name}__source"
    spec = importlib.util.spec_from_file_location(alias, sources()[CORE.index(name)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module  # for the dataclasses and annotations that look it up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[alias]
    return module


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
