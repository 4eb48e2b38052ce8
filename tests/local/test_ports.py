"""Port allocation: free, distinct, never handed out twice, fixed ports checked."""

from __future__ import annotations

import socket

import pytest

from plait.local.ports import PortAllocator


def test_allocated_ports_are_distinct_and_bindable() -> None:
    ports = PortAllocator().allocate(20)
    assert len(set(ports)) == 20
    for port in ports:
        with socket.create_server(("127.0.0.1", port)):
            pass


def test_a_port_is_never_handed_out_twice() -> None:
    alloc = PortAllocator()
    seen: set[int] = set()
    for _ in range(50):
        (port,) = alloc.allocate()
        assert port not in seen
        seen.add(port)


def test_reserve_claims_a_free_fixed_port_once() -> None:
    alloc = PortAllocator()
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    assert alloc.reserve(port) == port
    with pytest.raises(OSError, match=f"port 127.0.0.1:{port} is already assigned"):
        alloc.reserve(port)
    assert port not in alloc.allocate(20)


def test_reserve_refuses_a_port_in_use() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"port 127.0.0.1:{port} is not free"):
            PortAllocator().reserve(port)


def test_reserve_zero_allocates_a_free_port() -> None:
    alloc = PortAllocator()
    port = alloc.reserve(0)
    assert port > 0
    assert port not in alloc.allocate(10)
