"""A stream the HTTP/2 upstream refused unprocessed is retried whatever its method (RFC 9113
section 8.7; issue 8): RST_STREAM(REFUSED_STREAM), or a stream above a GOAWAY's last stream
id. A POST goes again and the client sees one 200; a POST whose body outgrew what the proxy
keeps for replay cannot go again and is answered as before (503 UC).

The upstream is a hand-driven `h2` server (threads, blocking sockets, h2c) whose behaviour is
chosen by path, the first time each path is seen:

    /refuse-once     RST_STREAM(REFUSED_STREAM) on the request's HEADERS
    /goaway-once     GOAWAY(last_stream_id=0), then the connection closes
    /refuse-late     REFUSED_STREAM once 100 000 body bytes came (past the replay limit)
    /refuse-always   REFUSED_STREAM every time (a retry storm would show here)

Every other request (and every later one for those paths) is answered 200 with a JSON
description of what arrived. One static `plait proxy` routes `h2up` there over HTTP/2.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

pytestmark = pytest.mark.timeout(60)

LATE_REFUSAL_BYTES = 100_000  # more than the proxy keeps for replay (64 KiB)


class RefusingH2Server:
    """An h2c server on 127.0.0.1:`port`; `streams` lists (connection number, stream id,
    method, path) of every request stream it saw, `served` those it answered."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.streams: list[tuple[int, int, str, str]] = []
        self.served: list[str] = []
        self.seen_paths: set[str] = set()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.closing = False
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self) -> None:
        n = 0
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            n += 1
            with self.lock:
                self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn, n), daemon=True)
            self.threads.append(t)
            t.start()

    def _first_time(self, path: str) -> bool:
        with self.lock:
            first = path not in self.seen_paths
            self.seen_paths.add(path)
            return first

    def _serve(self, sock: socket.socket, number: int) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        requests: dict[int, dict[str, Any]] = {}
        try:
            sock.sendall(conn.data_to_send())
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if not self._on_event(conn, requests, number, event):
                        sock.sendall(conn.data_to_send())
                        return  # GOAWAY sent: close the connection
                sock.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            return
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _on_event(
        self,
        conn: h2.connection.H2Connection,
        requests: dict[int, dict[str, Any]],
        number: int,
        event: h2.events.Event,
    ) -> bool:
        """Handle one event; False: the connection is to close now."""
        if isinstance(event, h2.events.RequestReceived):
            headers: dict[Any, Any] = dict(event.headers)  # str: header_encoding is set
            method, path = headers[":method"], headers[":path"]
            sid = event.stream_id
            with self.lock:
                self.streams.append((number, sid, method, path))
            refuse = "/refuse-once" if path.startswith("/refuse-always") else ""
            if path in ("/refuse-once", "/goaway-once", "/refuse-late") and self._first_time(path):
                refuse = path
            requests[sid] = {"method": method, "path": path, "body": [], "refuse": refuse}
            if refuse == "/refuse-once":
                conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
                del requests[sid]
            elif refuse == "/goaway-once":
                conn.close_connection(last_stream_id=0)  # nothing was processed
                return False
        elif isinstance(event, h2.events.DataReceived):
            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            request = requests.get(event.stream_id)
            if request is not None:
                request["body"].append(event.data)
                got = sum(len(p) for p in request["body"])
                if request["refuse"] == "/refuse-late" and got >= LATE_REFUSAL_BYTES:
                    conn.reset_stream(event.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
                    del requests[event.stream_id]
        elif isinstance(event, h2.events.StreamEnded):
            request = requests.pop(event.stream_id, None)
            if request is not None:
                self._answer(conn, event.stream_id, request)
        elif isinstance(event, h2.events.StreamReset):
            requests.pop(event.stream_id, None)
        return True

    def _answer(self, conn: h2.connection.H2Connection, sid: int, request: dict[str, Any]) -> None:
        body = b"".join(request["body"])
        answer = json.dumps(
            {
                "method": request["method"],
                "path": request["path"],
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        ).encode()
        with self.lock:
            self.served.append(request["path"])
        conn.send_headers(
            sid,
            [
                (":status", "200"),
                ("content-type", "application/json"),
                ("content-length", str(len(answer))),
            ],
        )
        conn.send_data(sid, answer, end_stream=True)

    def streams_for(self, path: str) -> list[tuple[int, int, str, str]]:
        with self.lock:
            return [s for s in self.streams if s[3] == path]

    def close(self) -> None:
        self.closing = True
        self.sock.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.acceptor.join(5)
        for t in self.threads:
            t.join(5)


@pytest.fixture(scope="module")
def server() -> Iterator[RefusingH2Server]:
    s = RefusingH2Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def proxy(module_proxies: Any, server: RefusingH2Server) -> Any:
    snapshot = {
        "clusters": [
            {
                "name": "h2up",
                "ports": [80],
                "protocols": ["http2"],
                "endpoints": [{"address": "127.0.0.1", "port": server.port}],
            }
        ]
    }
    return module_proxies.start(snapshot, "--access-log-sample", "1")


def post(raw: Any, proxy: Any, path: str, body: bytes) -> Any:
    with raw(proxy.outbound, timeout=20) as c:
        return c.request("POST", path, {"Host": "h2up"}, body)


def test_a_post_refused_with_refused_stream_is_retried(
    raw: Any, proxy: Any, server: RefusingH2Server
) -> None:
    body = b"order #1: one coffee"
    reply = post(raw, proxy, "/refuse-once", body)
    assert reply.status == 200, reply.body
    echo = reply.json()
    assert echo["method"] == "POST"
    assert echo["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert len(server.streams_for("/refuse-once")) == 2  # refused, then served
    assert server.served.count("/refuse-once") == 1
    entry = proxy.wait_for_log(lambda e: e.get("path") == "/refuse-once")
    assert entry["status"] == 200 and entry["method"] == "POST"


def test_a_post_above_a_goaways_last_stream_is_retried_on_a_new_connection(
    raw: Any, proxy: Any, server: RefusingH2Server
) -> None:
    body = b"x" * 5000
    reply = post(raw, proxy, "/goaway-once", body)
    assert reply.status == 200, reply.body
    assert reply.json()["body_len"] == len(body)
    tries = server.streams_for("/goaway-once")
    assert len(tries) == 2
    assert tries[0][0] != tries[1][0]  # the second try came on another connection
    assert server.served.count("/goaway-once") == 1


def test_a_post_whose_body_was_streamed_past_the_replay_limit_is_not_retried(
    raw: Any, proxy: Any, server: RefusingH2Server
) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: refused after 100 000 bytes went upstream
    reply = post(raw, proxy, "/refuse-late", body)
    assert reply.status == 503
    assert reply.header("x-plait-response-flags") == "UC"  # as before: not replayable
    assert len(server.streams_for("/refuse-late")) == 1
    assert "/refuse-late" not in server.served


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_stream_refused_every_time_is_retried_as_the_policy_bounds_it(
    raw: Any, proxy: Any, server: RefusingH2Server, method: str
) -> None:
    """The default policy's 2 retries, then the 503 a refused stream got before: no storm
    of new connections, whatever the method."""
    path = f"/refuse-always-{method.lower()}"
    with raw(proxy.outbound, timeout=20) as c:
        reply = c.request(method, path, {"Host": "h2up"}, b"x" if method == "POST" else b"")
    assert reply.status == 503
    assert reply.header("x-plait-response-flags") == "UC"
    assert len(server.streams_for(path)) == 3


def test_retries_are_counted(proxy: Any) -> None:
    assert proxy.listener_stat("outbound", "upstream_rq_retry") >= 2
