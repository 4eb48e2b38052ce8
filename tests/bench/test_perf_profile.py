"""bench.perf_profile's pure parts: charging perf samples to compiled functions, and reading
mypyc's IR for the operations that take the generic path."""

from __future__ import annotations

from bench.perf_profile import charge, generic_ops, parse_samples

PERF_SCRIPT = """
\t    7f01 _PyType_Lookup
\t    7f02 _PyObject_GetMethod
\t    7f03 PyObject_VectorcallMethod
\t    7f04 CPyDef_downstream___Stream___start (/x/_core__mypyc.so)
\t    7f05 __pyx_f_6uvloop_4loop_4Loop__Loop__run (/x/loop.so)

\t    7f06 pymalloc_alloc
\t    7f04 CPyDef_downstream___Stream___start (/x/_core__mypyc.so)

\tffffffff81 tcp_sendmsg ([kernel.kallsyms])
"""


def test_samples_are_charged_to_the_nearest_compiled_frame() -> None:
    stacks = list(parse_samples(PERF_SCRIPT.splitlines()))
    assert [len(s) for s in stacks] == [5, 2, 1]
    total, by_owner, generic = charge(stacks)
    assert total == 3
    assert by_owner["CPyDef_downstream___Stream___start"] == 2
    assert generic == {"CPyDef_downstream___Stream___start": 1}  # the allocation is not


IR = """def Stream.start(self):
    r0 :: object
L0:
    r1 = 'ctx'
    r2 = CPyObject_GetAttr(r0, r1)
    r3 = 'split'
    r5 = PyObject_VectorcallMethod(r3, r4, 9223372036854775810, 0)
    r6 = plait.proxy.downstream.globals :: static
    r7 = 'grpc'
    r8 = CPyDict_GetItem(r6, r7)
    r9 = CPyDict_GetItem(self._table, r7)
def other(x):
L0:
    r0 = x.native_attribute
"""


def test_generic_operations_are_read_from_the_ir() -> None:
    assert generic_ops(IR.splitlines()) == {
        "Stream.start": [".ctx", "split()", "global grpc"],  # not the lookup in a real dict
        "other": [],
    }
