"""Build the optional mypyc-compiled copy of the HTTP/1 codec: `python -m plait.proto.build_native`.

Why: the codec's httptools callbacks and head writers run several times per proxied request;
compiled with mypyc they cost about half (bench/cpu_per_request.py measures the effect).

How: `h1.py` up to its native-build marker is copied to `_h1_compiled.py` with the sha256 of
`h1.py` appended, compiled in place to `_h1_compiled.*.so`, and the copy removed. `h1.py`
uses the compiled classes only if that digest matches its own source, so an edit of `h1.py`
without a rebuild falls back to the pure-Python code instead of running stale code. Any
failure (no compiler, no mypy) leaves the pure-Python codec in use and exits 0 with a note;
`make venv` (and so `make test`, `make bench`) runs this. PLAIT_PURE_PYTHON=1 at run time
ignores a compiled copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

__all__ = ["MARKER", "build", "compiled_is_current", "main"]

MARKER = "# --- native build: nothing below this line is compiled ---"
HERE = Path(__file__).resolve().parent
SOURCE = HERE / "h1.py"
MODULE = "_h1_compiled"


def source_digest(path: Path = SOURCE) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compiled_is_current() -> bool:
    """Whether a compiled copy exists and was built from the current h1.py."""
    if not list(HERE.glob(f"{MODULE}.*.so")):
        return False
    from plait.proto import h1

    return h1.NATIVE


def build() -> None:
    """Compile h1.py's copy in place; raises on any failure (the caller reports it)."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    text = SOURCE.read_text()
    head, found, _ = text.partition(MARKER)
    if not found:
        raise RuntimeError(f"{SOURCE} has no native-build marker")
    copy = HERE / f"{MODULE}.py"
    work = Path(tempfile.mkdtemp(prefix="plait-mypyc-"))
    cwd = Path.cwd()
    try:
        copy.write_text(head + f'\nSOURCE_SHA256 = "{source_digest()}"\n')
        src_root = HERE.parent.parent  # the directory holding the plait package
        os.chdir(src_root)
        modules = mypycify(
            [str(copy.relative_to(src_root))], opt_level="3", target_dir=str(work / "c")
        )
        dist = Distribution({"name": "plait-native", "ext_modules": modules})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True  # type: ignore[attr-defined]
        cmd.build_temp = str(work / "tmp")  # type: ignore[attr-defined]
        cmd.build_lib = str(work / "lib")  # type: ignore[attr-defined]
        dist.script_args = []
        dist.run_command("build_ext")
    finally:
        os.chdir(cwd)
        copy.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def clean() -> None:
    for path in HERE.glob(f"{MODULE}*.so"):
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--clean" in args:
        clean()
        return 0
    if compiled_is_current() and "--force" not in args:
        print("plait: compiled HTTP/1 codec is up to date")
        return 0
    clean()
    try:
        build()
    except Exception as exc:  # noqa: BLE001 - any failure means: use the pure-Python codec
        clean()
        print(f"plait: compiled HTTP/1 codec not built ({exc!r}); the pure-Python one is used")
        return 0
    print("plait: compiled HTTP/1 codec built")
    return 0


if __name__ == "__main__":
    sys.exit(main())
