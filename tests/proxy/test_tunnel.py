"""Tunnels over real sockets in one event loop: bytes both ways, backpressure, half close,
and the plait-tcp framing between two tunnels (as between two proxies)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from plait.proxy.tunnel import WRITE_HIGH_WATER, End, Tunnel

pytestmark = pytest.mark.timeout(30)

# What one tunnel may hold for a stalled reader: its write buffer's high-water mark plus
# the one read that crossed it (event loops read at most 256 KiB at a time).
BOUND = WRITE_HIGH_WATER + 256 * 1024


async def _chain(
    framed: bool,
) -> tuple[socket.socket, socket.socket, list[Tunnel], list[Tunnel]]:
    """client <-> tunnel [<-framed-> tunnel] <-> server, over socketpairs."""
    loop = asyncio.get_running_loop()
    closed: list[Tunnel] = []
    client, accepted = socket.socketpair()
    out, server = socket.socketpair()
    first = Tunnel(60.0, closed.append)
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
    first.accept(transport, framed=False)
    if framed:
        mid_a, mid_b = socket.socketpair()
        _, end = await loop.connect_accepted_socket(lambda: End(first, framed=True), mid_a)
        first.connected(end)
        second = Tunnel(60.0, closed.append)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, mid_b)
        second.accept(transport, framed=True)
        _, end = await loop.connect_accepted_socket(lambda: End(second), out)
        second.connected(end)
        tunnels = [first, second]
    else:
        _, end = await loop.connect_accepted_socket(lambda: End(first), out)
        first.connected(end)
        tunnels = [first]
    for s in (client, server):
        s.setblocking(False)
    return client, server, tunnels, closed  # `closed` is appended to as tunnels finish


async def _read_to_eof(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while data := await loop.sock_recv(sock, 65536):
        got += data
    return bytes(got)


async def _read_exactly(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < n:
        data = await loop.sock_recv(sock, 65536)
        assert data, "closed early"
        got += data
    return bytes(got)


@pytest.mark.parametrize("framed", [False, True], ids=["raw", "framed"])
def test_a_stalled_reader_bounds_the_tunnel_then_everything_arrives(framed: bool) -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        client, server, tunnels, closed = await _chain(framed)
        payload = bytes(range(256)) * (8 * 1024 * 1024 // 256)
        sending = asyncio.ensure_future(loop.sock_sendall(client, payload))
        await asyncio.sleep(0.3)  # the server reads nothing meanwhile
        assert not sending.done()  # the sender was slowed down, not buffered for
        for tunnel in tunnels:
            assert tunnel.upstream is not None and tunnel.downstream is not None
            assert tunnel.upstream.transport.get_write_buffer_size() <= BOUND
            assert tunnel.downstream.paused  # backpressure reached the reading side
        assert await _read_exactly(server, len(payload)) == payload
        await sending
        # Half close: the client's FIN reaches the server; the answer still comes back.
        client.shutdown(socket.SHUT_WR)
        assert await _read_to_eof(server) == b""
        await loop.sock_sendall(server, b"answer after your FIN")
        server.shutdown(socket.SHUT_WR)
        assert await _read_to_eof(client) == b"answer after your FIN"
        for _ in range(100):  # both directions ended: each tunnel closes itself
            if len(closed) == len(tunnels):
                break
            await asyncio.sleep(0.01)
        assert len(closed) == len(tunnels)
        assert all(t.flags == "" for t in tunnels)
        assert tunnels[0].received == len(payload) and tunnels[0].sent == 21
        client.close()
        server.close()

    asyncio.run(go())


def test_a_client_gone_for_good_ends_both_tunnels() -> None:
    async def go() -> None:
        client, server, tunnels, closed = await _chain(framed=True)
        client.close()  # not a half close: the client will never read an answer
        assert await _read_to_eof(server) == b""  # its FIN crossed both tunnels
        server.close()
        for _ in range(200):
            if len(closed) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(closed) == 2
        assert all(t.downstream is not None and t.downstream.closed for t in tunnels)

    asyncio.run(go())


def test_idle_tunnels_close() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        closed: list[Tunnel] = []
        client, accepted = socket.socketpair()
        out, server = socket.socketpair()
        tunnel = Tunnel(0.1, closed.append)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
        tunnel.accept(transport, framed=False)
        _, end = await loop.connect_accepted_socket(lambda: End(tunnel), out)
        tunnel.connected(end)
        server.setblocking(False)
        assert await _read_to_eof(server) == b""  # closed by the idle timeout
        for _ in range(100):
            if closed:
                break
            await asyncio.sleep(0.01)
        assert closed and closed[0].flags == "IDLE"
        client.close()
        server.close()

    asyncio.run(go())
