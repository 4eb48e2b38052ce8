"""Trailer sections through a real mesh, every direction (issue 8): request trailers from an
HTTP/2 or a chunked HTTP/1.1 caller reach an h2c app (as HTTP/2 trailers) or an HTTP/1.1 app
(as chunked trailers); response trailers reach HTTP/2 callers, and HTTP/1.1 callers that sent
`TE: trailers` on a chunked response; a gRPC client-streaming call still works.

Services: `tr2` (an h2c app, the `h2` library), `tr1` (an HTTP/1.1 app that parses chunked
bodies by hand), `trgrpc` (grpcio). Proxies: `client-0` (the callers' proxy: HTTP/1.1 between
proxies for HTTP/1.1 callers), `upg-0` (HTTP/1.1 callers upgraded to HTTP/2 between proxies,
PLAIT_H2_UPGRADE=1), and one inbound proxy per app. Both apps answer JSON saying what they
received (head, body size, trailer fields); the h2c app always ends its response with trailers,
the HTTP/1.1 app on `/trailers` (chunked). The gRPC test guards against regressions only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2kit import H2Client, Response
from meshkit import Mesh, Proc, free_port, wait_until

pytestmark = pytest.mark.timeout(90)

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: tr2}
spec: {selector: {app: tr2}, ports: [{name: h2, port: 80, protocol: http2}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: tr1}
spec: {selector: {app: tr1}, ports: [{name: http, port: 80}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: trgrpc}
spec: {selector: {app: trgrpc}, ports: [{name: grpc, port: 50051, protocol: grpc}]}
"""

# An h2c app: answers JSON with the request's head, body size and trailer fields, without a
# content-length, then response trailers `x-app-trailer: h2`.
H2_APP = r"""
import asyncio, json, os
import h2.config, h2.connection, h2.events

class Proto(asyncio.Protocol):
    def connection_made(self, t):
        self.t = t
        cfg = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(cfg)
        self.conn.initiate_connection()
        self.streams = {}
        t.write(self.conn.data_to_send())
    def data_received(self, data):
        try:
            events = self.conn.receive_data(data)
        except Exception:
            self.t.close()
            return
        for ev in events:
            sid = getattr(ev, "stream_id", 0)
            if isinstance(ev, h2.events.RequestReceived):
                self.streams[sid] = {"proto": "h2", "headers": [list(h) for h in ev.headers],
                                     "body": 0, "trailers": []}
            elif isinstance(ev, h2.events.DataReceived):
                if sid in self.streams:
                    self.streams[sid]["body"] += len(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.TrailersReceived):
                self.streams[sid]["trailers"] = [list(h) for h in ev.headers]
            elif isinstance(ev, h2.events.StreamEnded) and sid in self.streams:
                body = json.dumps(self.streams.pop(sid)).encode()
                self.conn.send_headers(
                    sid, [(":status", "200"), ("content-type", "application/json")])
                self.conn.send_data(sid, body)
                self.conn.send_headers(sid, [("x-app-trailer", "h2")], end_stream=True)
            elif isinstance(ev, h2.events.StreamReset):
                self.streams.pop(sid, None)
        self.t.write(self.conn.data_to_send())

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Proto, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()

asyncio.run(main())
"""

# An HTTP/1.1 app that decodes chunked bodies by hand, keeping the trailer fields; it answers
# the same JSON, chunked with trailers `x-app-trailer: h1` on `/trailers`, else sized.
H1_APP = r"""
import json, os
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        size, trailers = 0, []
        chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        if chunked:
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if n == 0:
                    while True:
                        line = self.rfile.readline()
                        if line in (b"\r\n", b"\n", b""):
                            break
                        name, _, value = line.decode().partition(":")
                        trailers.append([name.strip().lower(), value.strip()])
                    break
                size += len(self.rfile.read(n))
                self.rfile.readline()
        else:
            size = len(self.rfile.read(int(self.headers.get("content-length") or 0)))
        body = json.dumps({"proto": "h1", "chunked": chunked, "body": size, "trailers": trailers,
                           "headers": [[k.lower(), v] for k, v in self.headers.items()]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        if self.path.startswith("/trailers"):
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n%s\r\n0\r\nx-app-trailer: h1\r\n\r\n" % (len(body), body))
        else:
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
    do_GET = do_POST

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""

# grpcio on raw bytes: client streaming, with trailing metadata.
GRPC_APP = r"""
import os
from concurrent import futures
import grpc

def total(requests, context):
    context.set_trailing_metadata((("x-total-trailer", "yes"),))
    return b"%d" % sum(len(r) for r in requests)

handler = grpc.method_handlers_generic_handler(
    "test.Echo", {"Total": grpc.stream_unary_rpc_method_handler(total)})
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("127.0.0.1:" + os.environ["PORT"])
server.start()
server.wait_for_termination()
"""


class TrailerMesh:
    def __init__(self, tmp: Path) -> None:
        self.mesh = Mesh(tmp)
        try:
            self._start(tmp)
        except BaseException:
            self.mesh.close()
            raise

    def _start(self, tmp: Path) -> None:
        mesh = self.mesh
        mesh.apply(SERVICES)
        ports = {}
        for name, code in (("tr2", H2_APP), ("tr1", H1_APP), ("trgrpc", GRPC_APP)):
            ports[name] = free_port()
            env = {"PORT": str(ports[name])}
            mesh.procs.append(Proc([sys.executable, "-c", code], tmp / f"{name}.app.log", env))
        for name in ("tr2", "tr1", "trgrpc"):
            mesh.proxy(f"{name}-0", name, f"app={name}", app_port=ports[name])
        _, self.client = mesh.proxy("client-0", "client", "app=client")
        os.environ["PLAIT_H2_UPGRADE"] = "1"
        try:
            _, self.upg = mesh.proxy("upg-0", "client", "app=client")
        finally:
            del os.environ["PLAIT_H2_UPGRADE"]
        names = {"tr2-0", "tr1-0", "trgrpc-0", "client-0", "upg-0"}
        wait_until(lambda: mesh.converged(names), 20, "convergence")
        for proxy in (self.client, self.upg):
            for host in ("tr2", "tr1"):
                port = proxy["outbound"]
                wait_until(lambda: self._routable(port, host), 15, f"{host} routable")  # noqa: B023

    @staticmethod
    def _routable(port: int, host: str) -> bool:
        try:
            return H1Client(port).exchange(b"GET", b"/", host)[0] == 200
        except OSError:
            return False


@pytest.fixture(scope="module")
def m(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrailerMesh]:
    mesh = TrailerMesh(tmp_path_factory.mktemp("trailers"))
    try:
        yield mesh
    finally:
        mesh.mesh.close()


# clients --------------------------------------------------------------------------------------


class H1Client:
    """One raw HTTP/1.1 exchange: chunked responses are decoded here, trailers kept."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def exchange(
        self,
        method: bytes,
        target: bytes,
        host: str,
        headers: bytes = b"",
        body: bytes | None = None,
    ) -> tuple[int, dict[bytes, bytes], bytes, list[tuple[bytes, bytes]]]:
        """(status, head fields, body, trailer fields); `body` goes as it is (framed by the
        caller through `headers`)."""
        try:
            head = b"%b %b HTTP/1.1\r\nhost: %b\r\n%b\r\n" % (
                method,
                target,
                host.encode(),
                headers,
            )
            self.sock.sendall(head + (body or b""))
            status_line = self._line()
            status = int(status_line.split()[1])
            fields: dict[bytes, bytes] = {}
            while line := self._line():
                name, _, value = line.partition(b":")
                fields[name.strip().lower()] = value.strip()
            trailers: list[tuple[bytes, bytes]] = []
            if fields.get(b"transfer-encoding", b"").lower() == b"chunked":
                data = b""
                while (size := int(self._line().split(b";")[0], 16)) > 0:
                    data += self._read(size)
                    assert self._line() == b""
                while line := self._line():
                    name, _, value = line.partition(b":")
                    trailers.append((name.strip().lower(), value.strip()))
            else:
                data = self._read(int(fields.get(b"content-length", b"0")))
            return status, fields, data, trailers
        finally:
            self.sock.close()

    def _fill(self) -> None:
        more = self.sock.recv(65536)
        if not more:
            raise ConnectionError("closed mid-response")
        self.buf += more

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data


def h2_request_with_trailers(
    port: int,
    authority: str,
    trailers: list[tuple[str, str]],
    body: bytes = b"hello",
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """POST with DATA, then a trailer section (HEADERS with END_STREAM), by hand."""
    client = H2Client(port)
    try:
        conn = client.conn
        sid: int = conn.get_next_available_stream_id()
        fields = [(":method", "POST"), (":scheme", "http"), (":authority", authority)]
        conn.send_headers(sid, [*fields, (":path", "/upload"), *(headers or [])])
        if body:
            conn.send_data(sid, body)
        conn.send_headers(sid, trailers, end_stream=True)
        client.responses[sid] = Response()
        client.flush()
        return client.wait([sid])[0]
    finally:
        client.close()


def chunked(body: bytes, trailers: bytes) -> bytes:
    return b"%x\r\n%b\r\n0\r\n%b\r\n" % (len(body), body, trailers)


# request trailers --------------------------------------------------------------------------


def test_h2_request_trailers_reach_an_h2c_app_as_trailers(m: TrailerMesh) -> None:
    r = h2_request_with_trailers(
        m.client["outbound"], "tr2", [("x-checksum", "abc123"), ("x-count", "5")]
    )
    assert r.status == 200, r
    seen = json.loads(bytes(r.body))
    assert seen["proto"] == "h2" and seen["body"] == 5
    assert seen["trailers"] == [["x-checksum", "abc123"], ["x-count", "5"]]
    assert r.trailers == {"x-app-trailer": "h2"}  # and the response's came back


def test_h2_request_trailers_without_a_body_reach_the_h2c_app(m: TrailerMesh) -> None:
    """HEADERS, then the trailer section at once: the request head must not end the stream."""
    r = h2_request_with_trailers(m.client["outbound"], "tr2", [("x-only", "trailers")], body=b"")
    assert r.status == 200, r
    seen = json.loads(bytes(r.body))
    assert seen["body"] == 0 and seen["trailers"] == [["x-only", "trailers"]]


def test_h2_request_trailers_reach_an_http1_app_as_chunked_trailers(m: TrailerMesh) -> None:
    r = h2_request_with_trailers(m.client["outbound"], "tr1", [("x-checksum", "abc123")])
    assert r.status == 200, r
    seen = json.loads(bytes(r.body))
    assert seen["proto"] == "h1" and seen["chunked"] and seen["body"] == 5
    assert seen["trailers"] == [["x-checksum", "abc123"]]
    # A content-length request goes to HTTP/1.1 unchunked: no place for trailers, dropped.
    r = h2_request_with_trailers(
        m.client["outbound"], "tr1", [("x-checksum", "abc")], headers=[("content-length", "5")]
    )
    assert r.status == 200, r
    seen = json.loads(bytes(r.body))
    assert not seen["chunked"] and seen["body"] == 5 and seen["trailers"] == []


@pytest.mark.parametrize("proxy", ["client", "upg"])
def test_http1_chunked_request_trailers_reach_both_apps(m: TrailerMesh, proxy: str) -> None:
    """client-0: HTTP/1.1 between the proxies; upg-0: HTTP/2 between them."""
    port = getattr(m, proxy)["outbound"]
    te = b"transfer-encoding: chunked\r\n"
    for host, proto in (("tr1", "h1"), ("tr2", "h2")):
        status, _, body, _ = H1Client(port).exchange(
            b"POST", b"/upload", host, te, chunked(b"hello world", b"x-checksum: c0ffee\r\n")
        )
        assert status == 200, body
        seen = json.loads(body)
        assert seen["proto"] == proto and seen["body"] == 11
        assert seen["trailers"] == [["x-checksum", "c0ffee"]], (host, seen)


def test_request_trailers_get_the_header_hygiene(m: TrailerMesh) -> None:
    """Hop-by-hop fields, Host, and the mesh's own XFCC never pass as trailers (framing
    fields in an HTTP/1.1 trailer section are refused by the parser, 400)."""
    bad = (
        b"x-keep: 1\r\n"
        b"connection: close\r\n"
        b"keep-alive: timeout=5\r\n"
        b"te: trailers\r\n"
        b"upgrade: h2c\r\n"
        b"host: evil\r\n"
        b"x-forwarded-client-cert: By=spiffe://forged\r\n"
        b"x-also: 2\r\n"
    )
    status, _, body, _ = H1Client(m.client["outbound"]).exchange(
        b"POST", b"/upload", "tr1", b"transfer-encoding: chunked\r\n", chunked(b"abc", bad)
    )
    assert status == 200, body
    seen = json.loads(body)
    assert seen["body"] == 3
    assert seen["trailers"] == [["x-keep", "1"], ["x-also", "2"]]
    # From an HTTP/2 caller (the codec refuses connection-specific fields in trailers).
    r = h2_request_with_trailers(
        m.client["outbound"],
        "tr1",
        [("x-keep", "1"), ("content-length", "99"), ("x-forwarded-client-cert", "By=x")],
    )
    assert r.status == 200, r
    assert json.loads(bytes(r.body))["trailers"] == [["x-keep", "1"]]


# response trailers --------------------------------------------------------------------------


@pytest.mark.parametrize("proxy", ["client", "upg"])
def test_response_trailers_reach_an_http1_client_that_sent_te_trailers(
    m: TrailerMesh, proxy: str
) -> None:
    port = getattr(m, proxy)["outbound"]
    for host, value in (("tr2", b"h2"), ("tr1", b"h1")):
        status, fields, body, trailers = H1Client(port).exchange(
            b"GET", b"/trailers", host, b"te: trailers\r\n"
        )
        assert status == 200, body
        assert fields[b"transfer-encoding"] == b"chunked"
        assert json.loads(body)["proto"] == value.decode()
        assert trailers == [(b"x-app-trailer", value)], (host, trailers)
        # Without `TE: trailers` the same response comes without them (RFC 9110 10.1.4).
        status, fields, body, trailers = H1Client(port).exchange(b"GET", b"/trailers", host)
        assert status == 200 and json.loads(body)["body"] == 0
        assert fields[b"transfer-encoding"] == b"chunked" and trailers == [], (host, trailers)


def test_response_trailers_of_an_http1_app_reach_an_h2_client(m: TrailerMesh) -> None:
    client = H2Client(m.client["outbound"])
    try:
        r = client.get("/trailers", "tr1")
    finally:
        client.close()
    assert r.status == 200, r
    assert json.loads(bytes(r.body))["proto"] == "h1"
    assert r.trailers == {"x-app-trailer": "h1"}


def test_curl_with_te_trailers_gets_the_response_trailers(m: TrailerMesh, tmp_path: Path) -> None:
    """curl writes trailer fields to its header dump (`-D`), after the head's."""
    url = f"http://127.0.0.1:{m.client['outbound']}/trailers"
    dump = tmp_path / "headers"
    args = ["curl", "-sS", "--max-time", "20", "-D", str(dump), "-H", "host: tr2", url]
    r = subprocess.run([*args, "-H", "TE: trailers"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["proto"] == "h2"
    head, _, trailers = dump.read_bytes().decode().partition("\r\n\r\n")
    assert "transfer-encoding: chunked" in head.lower()
    assert trailers.strip() == "x-app-trailer: h2", dump.read_text()
    plain = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert plain.returncode == 0, plain.stderr
    assert "x-app-trailer" not in dump.read_text()


# gRPC ----------------------------------------------------------------------------------------


def test_grpc_client_streaming_still_works(m: TrailerMesh) -> None:
    import grpc

    channel = grpc.insecure_channel(
        f"127.0.0.1:{m.client['outbound']}",
        options=[("grpc.default_authority", "trgrpc:50051")],
    )
    try:
        total = channel.stream_unary("/test.Echo/Total")

        def call() -> Any:
            try:
                return total.with_call(iter([b"a", b"bb"]), timeout=2)
            except grpc.RpcError:
                return None

        wait_until(call, 15, "trgrpc routable")
        sizes = [1, 1000, 100_000, 1_000_000] * 2
        reply, rpc = total.with_call((b"z" * n for n in sizes), timeout=20)
        assert reply == b"%d" % sum(sizes)
        assert ("x-total-trailer", "yes") in rpc.trailing_metadata()
    finally:
        channel.close()
