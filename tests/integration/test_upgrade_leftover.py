"""Bytes that share a read with an HTTP/1.1 Upgrade request, or with its 101, reach the
tunnel in order (issue 8): a client may send the Upgrade request and its first bytes of the
new protocol in one write, and a server commonly sends the 101 and a greeting in one write.

The app is a raw asyncio server: a plain GET gets 200 "ok" (the mesh's readiness probe); an
`Upgrade: websocket` request gets `101` and `GREETING\\n` in the same `write`, then every byte
after the request head is echoed back. A raw socket client sends the request head and its
payload in one `sendall` (and more bytes right after, before the 101 can have come back).

Paths: through two mTLS proxies (client outbound -> server inbound -> app), and through one
static proxy's outbound and inbound listeners (plain TCP), so both listener kinds read the
request head with the payload in the same read.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshkit import Mesh, Proc, free_port, send_request, wait_until

pytestmark = pytest.mark.timeout(60)

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: greeter}
spec: {selector: {app: greeter}, ports: [{name: http, port: 80}]}
"""

# The 101 and the greeting leave in one write; what follows the request head is echoed.
GREETER_APP = r"""
import asyncio, os

GREETING = b"GREETING\n"

async def serve(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        writer.close()
        return
    if b"upgrade: websocket" not in head.lower():
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()
        return
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n" + GREETING
    )
    await writer.drain()
    while data := await reader.read(65536):  # bytes already buffered come first
        writer.write(data)
        await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ["PORT"]))
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""

UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: %b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
EARLY = b"EARLY-PAYLOAD-1;"  # in the same sendall as the request head
LATER = b"LATER-PAYLOAD-2;"  # a second write, sent before the 101 is read
AFTER = b"AFTER-THE-101;"  # sent once the 101 and the greeting are in


def _read_exactly(sock: socket.socket, buf: bytearray, n: int) -> bytes:
    while len(buf) < n:
        data = sock.recv(65536)
        if not data:
            raise AssertionError(f"closed after {bytes(buf)!r}, wanted {n} bytes")
        buf += data
    out = bytes(buf[:n])
    del buf[:n]
    return out


def exchange(port: int, host: bytes) -> tuple[bytes, bytes]:
    """The 101 head, and every byte that came after it, for the scripted conversation."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(UPGRADE % host + EARLY)
        s.sendall(LATER)
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            data = s.recv(65536)
            if not data:
                raise AssertionError(f"closed before a response head: {bytes(buf)!r}")
            buf += data
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        buf = bytearray(rest)
        expected = b"GREETING\n" + EARLY + LATER
        got = _read_exactly(s, buf, len(expected))
        s.sendall(AFTER)
        got += _read_exactly(s, buf, len(AFTER))
        return head, got


def _probe(port: int, host: str) -> bool:
    try:
        return send_request(port, "/", headers={"host": host}).status == 200
    except OSError:
        return False


class GreeterMesh:
    def __init__(self, tmp: Path) -> None:
        self.mesh = Mesh(tmp)
        self.mesh.apply(SERVICES)
        self.app_port = free_port()
        self.mesh.procs.append(
            Proc(
                [sys.executable, "-c", GREETER_APP],
                tmp / "greeter.app.log",
                {"PORT": str(self.app_port)},
            )
        )
        self.mesh.proxy("greeter-0", "greeter", "app=greeter", app_port=self.app_port)
        _, self.client = self.mesh.proxy("client-0", "client", "app=client")
        wait_until(lambda: self.mesh.converged({"greeter-0", "client-0"}), 20, "sync")
        wait_until(lambda: _probe(self.client["outbound"], "greeter"), 15, "greeter via mesh")


@pytest.fixture(scope="module")
def greeter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GreeterMesh]:
    m = GreeterMesh(tmp_path_factory.mktemp("leftover"))
    try:
        yield m
    finally:
        m.mesh.close()


def test_payload_and_greeting_cross_two_mtls_proxies_in_order(greeter: GreeterMesh) -> None:
    head, got = exchange(greeter.client["outbound"], b"greeter")
    assert head.startswith(b"HTTP/1.1 101")
    assert got == b"GREETING\n" + EARLY + LATER + AFTER


def test_repeated_upgrades_lose_nothing(greeter: GreeterMesh) -> None:
    for _ in range(5):
        _, got = exchange(greeter.client["outbound"], b"greeter")
        assert got == b"GREETING\n" + EARLY + LATER + AFTER


@pytest.fixture(scope="module")
def static_proxy(module_proxies: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One proxy from a static snapshot: outbound routes `greeter` to the app, inbound forwards
    to it; both listeners are plain TCP, so the raw client talks to each directly."""
    tmp = tmp_path_factory.mktemp("leftover-static")
    port = free_port()
    app = Proc([sys.executable, "-c", GREETER_APP], tmp / "app.log", {"PORT": str(port)})
    try:
        snapshot = {
            "clusters": [
                {
                    "name": "greeter",
                    "ports": [80],
                    "endpoints": [{"address": "127.0.0.1", "port": port}],
                }
            ]
        }
        proxy = module_proxies.start(snapshot, app=port)
        wait_until(lambda: _probe(proxy.port("outbound"), "greeter"), 15, "greeter via outbound")
        yield proxy
    finally:
        app.stop()


@pytest.mark.parametrize("listener", ["outbound", "inbound"])
def test_each_listener_passes_the_early_payload_on(static_proxy: Any, listener: str) -> None:
    head, got = exchange(static_proxy.port(listener), b"greeter")
    assert head.startswith(b"HTTP/1.1 101")
    assert got == b"GREETING\n" + EARLY + LATER + AFTER
