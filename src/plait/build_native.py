"""Build the compiled data path: `python -m plait.build_native [--force|--clean]`.

Compiles the modules of `plait.native_core.CORE` (the HTTP/1 and HTTP/2 codecs and every class
on a request's path) with mypyc as one group, out of place: each module's extension goes to
`plait/_core/`, the group's shared library beside `plait/__init__.py`, and
`plait/_core/SOURCES.sha256` records the digest of the sources they came from (see
`plait.native_core` for how they are loaded, and why only while that digest is current).

Any failure (no compiler, no mypy, a type error) removes the partial build, prints a note and
exits 0: the data path then runs as the plain Python it is. `make venv` (and so `make test`,
`make demo`, `make bench`) runs this; it does nothing when the build is current.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from plait import native_core

if TYPE_CHECKING:
    from setuptools import Extension

__all__ = ["build", "clean", "main", "mypycify_core"]


def mypycify_core(target_dir: str) -> list[Extension]:
    """mypyc's extensions for the core; its C sources and IR (`ops.txt`) go to `target_dir`.
    Call it from the directory that holds the plait package."""
    from mypyc.build import mypycify

    return mypycify(
        [str(path.relative_to(native_core.PACKAGE.parent)) for path in native_core.sources()],
        opt_level="3",
        target_dir=target_dir,
        group_name=native_core.GROUP,
    )


def build() -> None:
    """Compile the core; raises on any failure (the caller reports it)."""
    from setuptools import Distribution

    work = Path(tempfile.mkdtemp(prefix="plait-core-"))
    cwd = Path.cwd()
    digest = native_core.digest()
    try:
        os.chdir(native_core.PACKAGE.parent)
        modules = mypycify_core(str(work / "c"))
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
    shutil.rmtree(native_core.DIRECTORY, ignore_errors=True)
    group = native_core.GROUP.rpartition(".")[2]
    for path in native_core.PACKAGE.glob(f"{group}__mypyc.*.so"):
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--clean" in args:
        clean()
        return 0
    if "--force" not in args and native_core.current():
        print("plait: compiled data path is up to date")
        return 0
    clean()
    try:
        build()
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error: same fallback
        clean()
        print(f"plait: compiled data path not built ({exc!r}); it runs as Python")
        return 0
    print(f"plait: compiled data path built ({len(native_core.CORE)} modules)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
