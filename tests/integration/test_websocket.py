"""WebSocket through the mesh: the `websockets` library on both ends, two proxies between.

client (websockets) -> client proxy outbound (HTTP/1.1 Upgrade) ==mTLS==> server proxy ->
echo app (websockets server). After the 101 both proxies tunnel the bytes.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshkit import Mesh, Proc, free_port, send_request, wait_until
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedOK

pytestmark = pytest.mark.timeout(90)

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: chat}
spec: {selector: {app: chat}, ports: [{name: http, port: 80}]}
"""

# The app: echoes every message; "close" makes it start the closing handshake.
# A plain GET is answered too, so the mesh can be probed before any WebSocket is opened.
ECHO_APP = r"""
import asyncio, os
from http import HTTPStatus
from websockets.asyncio.server import serve
from websockets.http11 import Response
from websockets.datastructures import Headers

async def echo(ws):
    async for message in ws:
        if message == "close":
            await ws.close(1000, "asked to")
            return
        await ws.send(message)

def plain(connection, request):
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return Response(200, "OK", Headers([("Content-Length", "2")]), b"ok")
    return None

async def main():
    async with serve(echo, "127.0.0.1", int(os.environ["PORT"]), max_size=None,
                     process_request=plain):
        await asyncio.Future()

asyncio.run(main())
"""


class WsMesh:
    def __init__(self, tmp: Path) -> None:
        self.mesh = Mesh(tmp)
        self.mesh.apply(SERVICES)
        app_port = free_port()
        self.mesh.procs.append(
            Proc([sys.executable, "-c", ECHO_APP], tmp / "chat.app.log", {"PORT": str(app_port)})
        )
        self.mesh.proxy("chat-0", "chat", "app=chat", app_port=app_port)
        _, self.client = self.mesh.proxy("client-0", "client", "app=client")
        wait_until(lambda: self.mesh.converged({"chat-0", "client-0"}), 20, "sync")
        wait_until(self._routable, 15, "chat through the mesh")

    def _routable(self) -> bool:
        try:
            return (
                send_request(self.client["outbound"], "/", headers={"host": "chat"}).status == 200
            )
        except OSError:
            return False

    @property
    def url(self) -> str:
        # The app connects to its outbound proxy; the Host header names the service.
        return f"ws://127.0.0.1:{self.client['outbound']}/echo"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsMesh]:
    m = WsMesh(tmp_path_factory.mktemp("ws"))
    try:
        yield m
    finally:
        m.mesh.close()


def _run(coro: object) -> object:
    return asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


def test_echo_through_the_mesh(ws: WsMesh) -> None:
    async def go() -> list[str | bytes]:
        async with connect(ws.url, additional_headers={"Host": "chat"}) as c:
            got = []
            for message in ("hello", "mesh", b"\x00\x01binary"):
                await c.send(message)
                got.append(await c.recv())
            return got

    assert _run(go()) == ["hello", "mesh", b"\x00\x01binary"]


def test_a_10_mib_message_crosses_whole(ws: WsMesh) -> None:
    big = bytes(range(256)) * (10 * 1024 * 1024 // 256)

    async def go() -> bytes:
        async with connect(ws.url, additional_headers={"Host": "chat"}, max_size=None) as c:
            await c.send(big)
            answer = await c.recv()
            assert isinstance(answer, bytes)
            return answer

    answer = _run(go())
    assert answer == big


def test_the_client_closes_cleanly(ws: WsMesh) -> None:
    async def go() -> tuple[int | None, str | None]:
        c = await connect(ws.url, additional_headers={"Host": "chat"})
        await c.send("one")
        assert await c.recv() == "one"
        await c.close(1000, "bye")
        await c.wait_closed()
        return c.close_code, c.close_reason

    assert _run(go()) == (1000, "bye")


def test_the_server_closes_cleanly(ws: WsMesh) -> None:
    async def go() -> tuple[int | None, str | None]:
        async with connect(ws.url, additional_headers={"Host": "chat"}) as c:
            await c.send("close")
            with pytest.raises(ConnectionClosedOK):
                await c.recv()
            return c.close_code, c.close_reason

    assert _run(go()) == (1000, "asked to")


def test_many_sockets_at_once(ws: WsMesh) -> None:
    async def one(i: int) -> str | bytes:
        async with connect(ws.url, additional_headers={"Host": "chat"}) as c:
            await c.send(f"n{i}")
            return await c.recv()

    async def go() -> list[str | bytes]:
        return list(await asyncio.gather(*(one(i) for i in range(20))))

    assert _run(go()) == [f"n{i}" for i in range(20)]


def test_plain_http_still_works_after_websockets(ws: WsMesh) -> None:
    reply = send_request(ws.client["outbound"], "/", headers={"host": "chat"})
    assert reply.status == 200
    assert reply.body == b"ok"


def test_other_upgrades_are_not_passed_on(ws: WsMesh) -> None:
    """`Upgrade: h2c` would carry later requests past routing and authorization: the proxy
    drops it (as Envoy does by default) and the request is an ordinary one."""
    import socket

    with socket.create_connection(("127.0.0.1", ws.client["outbound"]), timeout=10) as s:
        s.sendall(
            b"GET /plain HTTP/1.1\r\nHost: chat\r\nUpgrade: h2c\r\n"
            b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
        )
        answer = b""
        while data := s.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"ok"
    assert b"connection: close" in head.lower()
