"""Build the optional mypyc-compiled codecs: `python -m plait.proto.build_native [--force|--clean]`.

Why: the HTTP/1 codec's httptools callbacks and head writers, and the HTTP/2 codec (HPACK,
framing, stream state), run several times per proxied request; compiled with mypyc they
cost a half to a third (bench/cpu_per_request.py measures the effect on the proxy).

How: copies of the sources are compiled in place, then the copies are removed, leaving
extension modules only:

    h1.py (up to its native-build marker) -> plait/proto/_h1_compiled.*.so
    h2/{huffman,frames,...}.py            -> plait/proto/_h2_compiled/*.so (imports
                                             rewritten; errors, events, config stay shared)

Each copy records the sha256 of the sources it came from, and `plait.proto.native` uses it
only if that matches the current sources: an edit without a rebuild runs pure Python, never
stale code. Any failure (no compiler, no mypy) leaves the pure-Python codecs in use and exits
0 with a note. `make venv` (and so `make test`, `make bench`) runs this; it does nothing when
the compiled copies are current.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from plait import native_core
from plait.proto import native

__all__ = ["MARKER", "build", "clean", "main"]

MARKER = "# --- native build: nothing below this line is compiled ---"
HERE = native.HERE
SRC_ROOT = HERE.parent.parent  # the directory holding the plait package
H1 = HERE / "h1.py"
H1_COPY = HERE / "_h1_compiled.py"
H2_DIR = HERE / "_h2_compiled"
_NAMES = "|".join(native.H2_COMPILED)
_H2_IMPORT = re.compile(rf"\bplait\.proto\.h2(?:\.({_NAMES})\b| import ({_NAMES})\b)")


def current() -> bool:
    """Whether both compiled copies exist and match the current sources."""
    h1 = native.load("plait.proto._h1_compiled", [H1])
    h2 = native.load("plait.proto._h2_compiled", native.h2_sources())
    return h1 is not None and h2 is not None and native.h2_module("connection") is not None


def _rewrite_h2_imports(text: str) -> str:
    """Imports of compiled siblings point into _h2_compiled; the shared modules stay."""

    def repl(m: re.Match[str]) -> str:
        if m.group(1):
            return f"plait.proto._h2_compiled.{m.group(1)}"
        return f"plait.proto._h2_compiled import {m.group(2)}"

    return _H2_IMPORT.sub(repl, text)


def _copies() -> list[Path]:
    """Write the sources to compile; returns their paths."""
    head, found, _ = H1.read_text().partition(MARKER)
    if not found:
        raise RuntimeError(f"{H1} has no native-build marker")
    H1_COPY.write_text(head + f'\nSOURCE_SHA256 = "{native.digest([H1])}"\n')
    H2_DIR.mkdir(exist_ok=True)
    (H2_DIR / "__init__.py").write_text('"""Being built by plait.proto.build_native."""\n')
    paths = [H1_COPY]
    for name in native.H2_COMPILED:
        path = H2_DIR / f"{name}.py"
        path.write_text(_rewrite_h2_imports((HERE / "h2" / f"{name}.py").read_text()))
        paths.append(path)
    return paths


def build() -> None:
    """Compile the copies in place; raises on any failure (the caller reports it)."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    work = Path(tempfile.mkdtemp(prefix="plait-mypyc-"))
    cwd = Path.cwd()
    paths: list[Path] = []
    try:
        paths = _copies()
        os.chdir(SRC_ROOT)
        modules = mypycify(
            [str(p.relative_to(SRC_ROOT)) for p in paths],
            opt_level="3",
            target_dir=str(work / "c"),
            group_name="plait.proto._native",
        )
        dist = Distribution({"name": "plait-native", "ext_modules": modules})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True
        cmd.build_temp = str(work / "tmp")
        cmd.build_lib = str(work / "lib")
        dist.run_command("build_ext")
        # Last: the package marks itself as built from these sources.
        (H2_DIR / "__init__.py").write_text(
            '"""mypyc-compiled copy of plait.proto.h2 (see plait.proto.build_native)."""\n\n'
            f'SOURCE_SHA256 = "{native.digest(native.h2_sources())}"\n'
        )
    finally:
        os.chdir(cwd)
        for path in paths:
            path.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def build_core() -> None:
    """Compile the data path (plait.native_core.CORE) as one group, out of place: each
    module's extension goes to plait/_core/, the group's library beside plait/__init__.py.
    Raises on any failure (the caller reports it)."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    work = Path(tempfile.mkdtemp(prefix="plait-core-"))
    cwd = Path.cwd()
    digest = native_core.digest()
    try:
        os.chdir(SRC_ROOT)
        modules = mypycify(
            [name.replace(".", "/") + ".py" for name in native_core.CORE],
            opt_level="3",
            target_dir=str(work / "c"),
            group_name=native_core.GROUP,
        )
        dist = Distribution({"name": "plait-core", "ext_modules": modules})
        cmd = dist.get_command_obj("build_ext")
        cmd.build_temp = str(work / "tmp")
        cmd.build_lib = str(work / "lib")
        dist.run_command("build_ext")
        lib = work / "lib"
        native_core.DIRECTORY.mkdir(exist_ok=True)
        for name in native_core.CORE:
            package, _, module = name.rpartition(".")
            (built,) = (lib / package.replace(".", "/")).glob(f"{module}.*.so")
            suffix = built.name[len(module) :]
            shutil.copy2(built, native_core.DIRECTORY / f"{name}{suffix}")
        group = native_core.GROUP.rpartition(".")[2]
        for built in (lib / "plait").glob(f"{group}__mypyc.*.so"):
            shutil.copy2(built, native_core.PACKAGE / built.name)
        # Last: the build marks itself as made from these sources.
        native_core.MANIFEST.write_text(digest + "\n")
    finally:
        os.chdir(cwd)
        shutil.rmtree(work, ignore_errors=True)


def clean() -> None:
    for path in HERE.glob("_h1_compiled*.so"):
        path.unlink()
    for path in HERE.glob("_native*.so"):
        path.unlink()
    shutil.rmtree(H2_DIR, ignore_errors=True)


def clean_core() -> None:
    shutil.rmtree(native_core.DIRECTORY, ignore_errors=True)
    group = native_core.GROUP.rpartition(".")[2]
    for path in native_core.PACKAGE.glob(f"{group}__mypyc.*.so"):
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--clean" in args:
        clean()
        clean_core()
        return 0
    force = "--force" in args
    if not force and current():
        print("plait: compiled codecs are up to date")
    else:
        clean()
        try:
            build()
        except (Exception, SystemExit) as exc:  # mypyc exits on a type error: same fallback
            clean()
            print(f"plait: compiled codecs not built ({exc!r}); the pure-Python ones are used")
        else:
            print("plait: compiled codecs built (HTTP/1 and HTTP/2)")
    if not force and native_core.current():
        print("plait: compiled data path is up to date")
        return 0
    clean_core()
    try:
        build_core()
    except (Exception, SystemExit) as exc:
        clean_core()
        print(f"plait: compiled data path not built ({exc!r}); it runs as Python")
        return 0
    print(f"plait: compiled data path built ({len(native_core.CORE)} modules)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
