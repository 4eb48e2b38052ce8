"""A featureless HTTP/1.1 relay on uvloop + httptools: the ceiling of a Python proxy pair.

    python -m bench.relay client LISTEN_PORT PEER_PORT PKI_DIR [--plain]
    python -m bench.relay server LISTEN_PORT APP_PORT PKI_DIR [--plain]

Issue 6 says that "a lean uvloop + httptools pair reached about 0.8x HAProxy's throughput".
This is that pair, so the claim can be measured on our machine rather than taken on trust
(`python -m bench.cpu_per_request --relay --haproxy`). Each accepted connection gets one
connection of its own to the next hop (mTLS between the two relays, plain with `--plain`);
every request and response head is parsed, rebuilt and forwarded, the client side adds an
`x-request-id`, and bodies pass through. Nothing else: no routing, no balancing, no pool, no
metrics, no logs, no timeouts, no limits. It is a yardstick, not a proxy to run.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from pathlib import Path
from typing import Any

import httptools
import uvloop

__all__ = ["main"]


class Relay:
    """One direction of one connection: parses messages and writes them to `out`."""

    def __init__(self, responses: bool, add_request_id: bool) -> None:
        self.out: asyncio.Transport | None = None
        self.responses = responses
        self.add_request_id = add_request_id
        parser = httptools.HttpResponseParser if responses else httptools.HttpRequestParser
        self.parser: Any = parser(self)  # get_status_code() on one, get_method() on the other
        self.fields: list[bytes] = []
        self.url = b""

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.fields = []

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        if self.responses:
            first = b"HTTP/1.1 %d OK\r\n" % parser.get_status_code()
        else:
            first = b"%s %s HTTP/1.1\r\n" % (parser.get_method(), self.url)
            if self.add_request_id:
                self.fields.append(b"x-request-id: %s\r\n" % os.urandom(16).hex().encode())
        assert self.out is not None
        self.out.write(first + b"".join(self.fields) + b"\r\n")

    def on_body(self, body: bytes) -> None:
        assert self.out is not None
        self.out.write(body)


class Accepted(asyncio.Protocol):
    """A downstream connection; requests wait in `early` until the next hop is connected."""

    def __init__(self, next_port: int, tls: ssl.SSLContext | None, client_side: bool) -> None:
        self.next_port = next_port
        self.tls = tls
        self.requests = Relay(responses=False, add_request_id=client_side)
        self.early: list[bytes] | None = []
        self.next_hop: asyncio.BaseTransport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        asyncio.get_running_loop().create_task(self.connect(transport))  # type: ignore[arg-type]

    async def connect(self, transport: asyncio.Transport) -> None:
        responses = Relay(responses=True, add_request_id=False)
        responses.out = transport
        loop = asyncio.get_running_loop()
        next_hop, _ = await loop.create_connection(
            lambda: Upstream(responses, transport),
            "127.0.0.1",
            self.next_port,
            ssl=self.tls,
            server_hostname="relay" if self.tls is not None else None,
        )
        if self.closed:  # the client left while we connected
            next_hop.close()
            return
        self.next_hop = next_hop
        self.requests.out = next_hop
        early, self.early = self.early or [], None
        for data in early:
            self.requests.parser.feed_data(data)

    def data_received(self, data: bytes) -> None:
        if self.early is not None:
            self.early.append(data)
        else:
            self.requests.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.next_hop is not None:
            self.next_hop.close()


class Upstream(asyncio.Protocol):
    """The next hop's connection: responses go back to the client's (closed with it)."""

    def __init__(self, responses: Relay, client: asyncio.Transport) -> None:
        self.responses = responses
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.responses.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


def contexts(pki: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(client side, server side) mTLS contexts from bench.pki's `client` and `web` SVIDs."""
    bundle = str(pki / "bundle.pem")
    dial = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=bundle)
    dial.check_hostname = False  # SVIDs carry a URI SAN, no DNS name
    dial.load_cert_chain(pki / "client.crt", pki / "client.key")
    serve = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=bundle)
    serve.verify_mode = ssl.CERT_REQUIRED
    serve.load_cert_chain(pki / "web.crt", pki / "web.key")
    return dial, serve


async def serve(role: str, listen: int, next_port: int, pki: Path, plain: bool) -> None:
    dial, accept = contexts(pki)
    client_side = role == "client"
    out_tls = None if plain or not client_side else dial
    in_tls = None if plain or client_side else accept
    server = await asyncio.get_running_loop().create_server(
        lambda: Accepted(next_port, out_tls, client_side), "127.0.0.1", listen, ssl=in_tls
    )
    await server.serve_forever()


def main(argv: list[str]) -> int:
    role, listen, next_port, pki = argv[0], int(argv[1]), int(argv[2]), Path(argv[3])
    if role not in ("client", "server"):
        raise SystemExit(f"role must be client or server, not {role!r}")
    uvloop.run(serve(role, listen, next_port, pki, plain="--plain" in argv[4:]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
