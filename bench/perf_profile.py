"""Where a compiled plait proxy spends its CPU, and what in it still runs the generic way.

    python -m bench.perf_profile --pid PID [--seconds 5] [--top 40]
    python -m bench.perf_profile --generic [NAME ...]

cProfile and py-spy see Python frames; the compiled data path (plait.native_core) runs as C,
whose frames are named after the Python functions (`CPyDef_downstream___Stream___start`).

`--pid` records that process with `perf` (DWARF call graphs; needs perf and root) while you
put load on it (wrk), then charges every sample to the nearest frame of plait's compiled
code, uvloop or httptools. The time spent inside libpython on a function's behalf (a
generic attribute lookup or call, an allocation) so counts as that function's, and a
second table shows the part of it that went through the interpreter's generic machinery.

`--generic` compiles nothing: it has mypyc write the core's IR (about 10 s) and lists, for
each compiled function named (a suffix such as `Stream.start`; all when none is), the
operations that still take the generic path: attribute reads and method calls on values
typed `Any`/`object` or of interpreted classes, and module globals read from a dict
(constants that are not `Final`). Each costs about 100 ns where the native form costs 5-20.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

# Frames that own a sample: plait's compiled functions, uvloop's and httptools' Cython code.
_OWNER_PREFIXES = ("CPyDef_", "CPyPy_", "__pyx_", "llhttp_")
# libpython functions that mean "the generic path": lookups and calls by name.
GENERIC = frozenset(
    {
        "_PyObject_GetMethod",
        "_PyType_Lookup",
        "PyObject_VectorcallMethod",
        "PyObject_GetAttr",
        "_PyObject_GenericGetAttrWithDict",
        "_PyObject_GenericSetAttrWithDict",
        "PyObject_SetAttr",
        "getset_get",
        "PyMember_GetOne",
        "_PyObject_MakeTpCall",
        "method_vectorcall_O",
        "method_vectorcall_NOARGS",
        "method_vectorcall_FASTCALL",
        "method_vectorcall_FASTCALL_KEYWORDS",
    }
)


def parse_samples(lines: Iterable[str]) -> Iterator[list[str]]:
    """Call stacks (leaf first, symbol names) from `perf script -F ip,sym` output."""
    stack: list[str] = []
    for line in lines:
        fields = line.split(None, 1)
        if not fields:
            if stack:
                yield stack
                stack = []
            continue
        if len(fields) == 2:
            stack.append(fields[1].rsplit(" (", 1)[0].strip())
    if stack:
        yield stack


def owner(stack: list[str]) -> str | None:
    """The nearest frame of compiled code (plait, uvloop, httptools) in a leaf-first stack."""
    for symbol in stack:
        if symbol.startswith(_OWNER_PREFIXES):
            return symbol
    return None


def charge(
    stacks: Iterable[list[str]],
) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """(samples, samples per owner, samples per owner spent in the generic machinery)."""
    total = 0
    by_owner: collections.Counter[str] = collections.Counter()
    generic: collections.Counter[str] = collections.Counter()
    for stack in stacks:
        total += 1
        name = owner(stack) or "(no compiled frame: kernel, event loop wait, interpreter)"
        by_owner[name] += 1
        for symbol in stack:
            if symbol.startswith(_OWNER_PREFIXES):
                break
            if symbol in GENERIC:
                generic[name] += 1
                break
    return total, by_owner, generic


def profile(pid: int, seconds: float, top: int) -> None:
    with tempfile.TemporaryDirectory(prefix="plait-perf-") as work:
        data = os.path.join(work, "perf.data")
        subprocess.run(
            ["perf", "record", "-F", "1999", "--call-graph", "dwarf,16384", "-p", str(pid),
             "-o", data, "--", "sleep", str(seconds)],
            check=True, capture_output=True,
        )  # fmt: skip
        script = subprocess.run(
            ["perf", "script", "-i", data, "-F", "ip,sym"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    total, by_owner, generic = charge(parse_samples(script.stdout.splitlines()))
    if not total:
        print("no samples: is the process busy?")
        return
    print(f"{total} samples of pid {pid} over {seconds:g} s; share of them, by owner:")
    for name, count in by_owner.most_common(top):
        print(f"  {100 * count / total:5.2f}%  {name}")
    print(f"of which in generic lookups and calls ({100 * sum(generic.values()) / total:.1f}%):")
    for name, count in generic.most_common(top // 2):
        print(f"  {100 * count / total:5.2f}%  {name}")


_DEF = re.compile(r"^def ([\w.]+)\(")
_STR = re.compile(r"^\s+(r\d+) = '([^']*)'$")
_GLOBALS = re.compile(r"^\s+(r\d+) = [\w.]+\.globals :: static$")
_GENERIC_OP = re.compile(
    r"(CPyObject_GetAttr|PyObject_SetAttr|PyObject_VectorcallMethod|CPyDict_GetItem)"
    r"\((r\d+)(?:, (r\d+))?"
)


def generic_ops(ir: Iterable[str]) -> dict[str, list[str]]:
    """Function -> the names its generic operations use, from mypyc's IR dump (ops.txt):
    attributes and methods looked up by name, and globals read from a module's dict."""
    found: dict[str, list[str]] = {}
    strings: dict[str, str] = {}
    module_dicts: set[str] = set()
    current: list[str] = []
    for line in ir:
        if m := _DEF.match(line):
            current = found.setdefault(m.group(1), [])
            strings, module_dicts = {}, set()
        elif m := _STR.match(line):
            strings[m.group(1)] = m.group(2)
        elif m := _GLOBALS.match(line):
            module_dicts.add(m.group(1))
        elif m := _GENERIC_OP.search(line):
            op, first, second = m.groups()
            if op == "PyObject_VectorcallMethod":  # the method's name comes first
                current.append(strings.get(first, "?") + "()")
            elif op == "CPyDict_GetItem":  # generic only when the dict is a module's
                if first in module_dicts:
                    current.append("global " + strings.get(second or "", "?"))
            else:
                current.append("." + strings.get(second or "", "?"))
    return found


def _ir_lines() -> list[str]:
    from plait import native_core
    from plait.build_native import mypycify_core

    with tempfile.TemporaryDirectory(prefix="plait-ir-") as work:
        cwd = Path.cwd()
        try:
            os.chdir(native_core.PACKAGE.parent)
            mypycify_core(work)  # writes the C and the IR; compiles nothing
        finally:
            os.chdir(cwd)
        return (Path(work) / "ops.txt").read_text().splitlines()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pid", type=int, help="profile this process with perf")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--top", type=int, default=40)
    p.add_argument("--generic", nargs="*", metavar="NAME", help="list generic operations")
    args = p.parse_args(argv)
    if args.pid:
        profile(args.pid, args.seconds, args.top)
        return 0
    if args.generic is None:
        p.error("give --pid PID or --generic [NAME ...]")
    ops = generic_ops(_ir_lines())
    names = args.generic
    for function, used in sorted(ops.items()):
        if used and (not names or any(function.endswith(n) for n in names)):
            print(f"{function}: {len(used)}: {' '.join(used)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
