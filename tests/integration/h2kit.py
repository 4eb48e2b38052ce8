"""HTTP/2 test helpers: a tiny h2c app (the `h2` library, asyncio, in a subprocess) and a
blocking HTTP/2 client for one connection with many streams. Real sockets, no mocks."""

from __future__ import annotations

import socket
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings

# An h2c server. Paths: `/slow?ms=N` waits first; `/big?size=N` streams N bytes honouring
# flow control; anything else answers JSON describing the request (with `x-trailer: yes`
# trailers when the request has `want-trailers`); a gRPC request gets a gRPC-framed JSON
# message and `grpc-status: 0` trailers.
H2_APP = r"""
import asyncio, json, os
import h2.config, h2.connection, h2.events

NAME = os.environ.get("APP_NAME", "h2app")

class Proto(asyncio.Protocol):
    def __init__(self):
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(cfg)
        self.streams = {}
        self.waiters = []
    def connection_made(self, t):
        self.t = t
        self.conn.initiate_connection()
        t.write(self.conn.data_to_send())
    def data_received(self, data):
        try:
            events = self.conn.receive_data(data)
        except Exception:
            self.t.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.streams[ev.stream_id] = [dict(ev.headers), 0, ev.headers]
            elif isinstance(ev, h2.events.DataReceived):
                if ev.stream_id in self.streams:
                    self.streams[ev.stream_id][1] += len(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                asyncio.ensure_future(self.respond(ev.stream_id))
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self.wake()
            elif isinstance(ev, h2.events.StreamReset):
                self.streams.pop(ev.stream_id, None)
                self.wake()
        self.t.write(self.conn.data_to_send())
    def wake(self):
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
    async def send(self, sid, data):
        while data:
            if sid not in self.streams:
                raise ConnectionError("reset")
            w = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if w <= 0:
                fut = asyncio.get_running_loop().create_future()
                self.waiters.append(fut)
                await fut
                continue
            self.conn.send_data(sid, data[:w])
            data = data[w:]
            self.t.write(self.conn.data_to_send())
    async def respond(self, sid):
        headers, n, raw = self.streams[sid]
        path = headers.get(b":path", b"/").decode()
        ct = headers.get(b"content-type", b"")
        try:
            if path.startswith("/slow"):
                await asyncio.sleep(int(path.split("ms=")[1]) / 1000)
                if sid not in self.streams:
                    return
            if path.startswith("/big"):
                size = int(path.split("size=")[1])
                self.conn.send_headers(sid, [(":status", "200"), ("content-length", str(size))])
                chunk = b"x" * 65536
                while size:
                    piece = chunk[: min(size, len(chunk))]
                    await self.send(sid, piece)
                    size -= len(piece)
                self.conn.end_stream(sid)
                self.t.write(self.conn.data_to_send())
                return
            body = json.dumps({"name": NAME, "proto": "h2", "path": path, "received": n,
                               "headers": [[k.decode(), v.decode()] for k, v in raw]}).encode()
            if ct.startswith(b"application/grpc"):
                self.conn.send_headers(
                    sid, [(":status", "200"), ("content-type", "application/grpc")])
                await self.send(sid, b"\0" + len(body).to_bytes(4, "big") + body)
                self.conn.send_headers(
                    sid, [("grpc-status", "0"), ("grpc-message", "ok")], end_stream=True)
            else:
                self.conn.send_headers(
                    sid, [(":status", "200"), ("content-type", "application/json")])
                await self.send(sid, body)
                if b"want-trailers" in headers:
                    self.conn.send_headers(sid, [("x-trailer", "yes")], end_stream=True)
                else:
                    self.conn.end_stream(sid)
            self.t.write(self.conn.data_to_send())
        except Exception:
            pass
        finally:
            self.streams.pop(sid, None)

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Proto, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()

asyncio.run(main())
"""


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.body = bytearray()
        self.ended = False
        self.reset: int | None = None

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers}, {bytes(self.body[:200])!r})"


class H2Client:
    """One HTTP/2 (h2c prior knowledge) connection, blocking, for tests."""

    def __init__(self, port: int, window: int = 65535, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config)
        self.conn.initiate_connection()
        if window != 65535:
            self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
            self.conn.increment_flow_control_window(window - 65535)
        self.responses: dict[int, Response] = {}
        self.goaway: Any = None
        self.closed = False
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        path: str,
        authority: str,
        method: str = "GET",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":scheme", "http"), (":authority", authority)]
        fields += [(":path", path), *(headers or [])]
        self.conn.send_headers(sid, fields, end_stream=not body)
        self.responses[sid] = Response()
        self.flush()
        if body:
            self.send_body(sid, body)
        return sid

    def send_body(self, sid: int, body: bytes) -> None:
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid), 16384)
            if window <= 0:
                self.pump()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.flush()
        self.conn.end_stream(sid)
        self.flush()

    def pump(self, ack: bool = True) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            self.closed = True
            raise ConnectionError("closed by the proxy")
        for event in self.conn.receive_data(data):
            sid = getattr(event, "stream_id", 0)
            response = self.responses.get(sid)
            if isinstance(event, h2.events.ResponseReceived) and response is not None:
                response.headers = dict(event.headers)  # type: ignore[arg-type]  # str: utf-8
                response.status = int(response.headers[":status"])
            elif isinstance(event, h2.events.TrailersReceived) and response is not None:
                response.trailers = dict(event.headers)  # type: ignore[arg-type]  # str: utf-8
            elif isinstance(event, h2.events.DataReceived):
                if response is not None:
                    response.body += event.data
                if ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
            elif isinstance(event, h2.events.StreamEnded) and response is not None:
                response.ended = True
            elif isinstance(event, h2.events.StreamReset) and response is not None:
                response.reset = event.error_code
                response.ended = True
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self.flush()

    def wait(self, sids: list[int], timeout: float = 10.0) -> list[Response]:
        deadline = time.monotonic() + timeout
        while not all(self.responses[s].ended for s in sids):
            if time.monotonic() > deadline:
                raise AssertionError(f"streams {sids} did not end in {timeout} s")
            self.pump()
        return [self.responses[s] for s in sids]

    def get(self, path: str, authority: str, **kwargs: Any) -> Response:
        return self.wait([self.request(path, authority, **kwargs)])[0]

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except OSError:
            pass
        self.sock.close()


def rss_kib(pid: int) -> int:
    """A process's resident set size (KiB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
