"""Integration fixtures: real `plait proxy` processes, real upstream servers, real sockets.

Ownership: every proxy started through `proxies` / `module_proxies` is a child of the test
process and is terminated (SIGTERM, then SIGKILL) when the fixture's scope ends; every
upstream started through `upstreams` / `module_upstreams` is a thread-per-connection server
in this process, shut down (and its accepted sockets closed) at the same point. Nothing
outlives the test session.

Ports: proxies bind port 0 and announce what they got on stderr ("ready: outbound
127.0.0.1:41234, ..."); upstreams bind port 0 in-process. A "dead" endpoint is a socket that
is bound but never listens, so connecting to it is refused for as long as the test holds it.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import TCPServer, ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").is_dir() else sys.executable
MIB = 1024 * 1024
# 1 MiB of a fixed pattern: large bodies are this, repeated (never held whole in memory).
PATTERN = bytes(range(256)) * 4096


# ports ------------------------------------------------------------------------------------


def free_port() -> int:
    """A port that was free a moment ago (prefer binding port 0 where the server allows)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DeadPort:
    """A bound, never-listening socket: connects to its port are refused until `close()`."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dead_port() -> Iterator[DeadPort]:
    dead = DeadPort()
    yield dead
    dead.close()


@pytest.fixture(scope="module")
def module_dead_port() -> Iterator[DeadPort]:
    dead = DeadPort()
    yield dead
    dead.close()


# upstream servers -------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Behaviour is chosen by path (any method); see `Upstream` for the list."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        path = url.path
        self.server.upstream.record(self)
        if path == "/hang-close":
            self.close_connection = True  # read the request, answer nothing, close
            return
        if path == "/discard":
            count = self._read_body(sink=True)
            return self._json({"received": count})
        body = self._read_body()
        if path == "/mirror":
            return self._send(200, body, "application/octet-stream")
        if path == "/delay":
            time.sleep(float(query.get("s", "1")))
            return self._echo(body)
        if path == "/stream":
            return self._stream(int(query["size"]))
        if path == "/chunked":
            return self._chunked(int(query.get("pieces", "5")))
        if path == "/close-delimited":
            return self._close_delimited(int(query.get("size", "100000")))
        if path == "/partial":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.close_connection = True
            return
        if path == "/status":
            code = int(query["code"])
            self.send_response(code)
            if code == 304:
                self.send_header("ETag", '"v1"')
            self.end_headers()
            return
        if path == "/hop":
            return self._hop_by_hop()
        if path == "/big-head":
            self.send_response(200)
            self.send_header("X-Big", "b" * (70 * 1024))
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            return
        if path == "/overlong":
            # A body longer than its Content-Length says, in the same write as the head.
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello, and then some")
            self.close_connection = True
            return
        if path == "/garbage":
            self.wfile.write(b"this is not HTTP\r\n\r\n")
            self.close_connection = True
            return
        return self._echo(body)

    def finish(self) -> None:
        super().finish()
        self.server.upstream.finished()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _serve

    # request bodies ----------------------------------------------------------------------
    def _read_body(self, sink: bool = False) -> Any:
        """The request body de-framed; with `sink`, only its length (nothing kept)."""
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        total = 0
        kept: list[bytes] = []
        if "chunked" in te:
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailer section
                    break
                piece = self.rfile.read(size)
                total += len(piece)
                if not sink:
                    kept.append(piece)
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            if sink:
                buf = bytearray(MIB)
                view = memoryview(buf)
                while remaining:
                    n = self.rfile.readinto(view[: min(remaining, MIB)])
                    if not n:
                        break
                    remaining -= n
                    total += n
            else:
                while remaining:
                    piece = self.rfile.read(min(remaining, MIB))
                    if not piece:
                        break
                    kept.append(piece)
                    remaining -= len(piece)
        return total if sink else b"".join(kept)

    # responses ---------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._after_response()

    def _json(self, data: Any) -> None:
        self._send(200, json.dumps(data).encode())

    def _echo(self, body: bytes) -> None:
        self._json(
            {
                "server": self.server.upstream.name,
                "method": self.command,
                "target": self.path,
                "version": self.request_version,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
            }
        )

    def _stream(self, size: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        view = memoryview(PATTERN)
        while size > 0:
            n = min(size, MIB)
            self.wfile.write(view[:n])
            size -= n
        self._after_response()

    def _chunked(self, pieces: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(pieces):
            data = b"piece-%d\n" % i * (i + 1)
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        self.wfile.write(b"0\r\n\r\n")
        self._after_response()

    def _close_delimited(self, size: int) -> None:
        # An HTTP/1.0 server's answer: no Content-Length, no chunking; the close ends it.
        self.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        self.wfile.write(PATTERN[:size] if size <= MIB else PATTERN * (size // MIB))
        self.close_connection = True

    def _hop_by_hop(self) -> None:
        body = b"hop\n"
        self.send_response(200)
        self.send_header("Connection", "X-Resp-Custom")
        self.send_header("X-Resp-Custom", "secret")
        self.send_header("Keep-Alive", "timeout=5")
        self.send_header("Proxy-Connection", "keep-alive")
        self.send_header("TE", "trailers")
        self.send_header("Upgrade", "h2c")
        self.send_header("Trailer", "X-Checksum")
        self.send_header("X-Keep", "yes")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self._after_response()

    def _after_response(self) -> None:
        if self.server.upstream.close_after_response:
            # Keep-alive in words (no `Connection: close`), then close: a stale pool entry.
            self.wfile.flush()
            self.close_connection = True


class _Server(ThreadingMixIn, TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    upstream: Upstream

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        # Head and body are separate writes: without NODELAY, Nagle + delayed ACK add 40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream.accepted(sock)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a peer (the proxy) that resets a connection is part of several tests


class Upstream:
    """A threaded HTTP/1.1 keep-alive server on 127.0.0.1:`port`, chosen by path:

    /echo (any other path too)  JSON: server, method, target, version, headers, body length/sha256
    /mirror                     the request body back, Content-Length framed
    /discard                    reads the body without keeping it: {"received": N}
    /stream?size=N              N bytes of PATTERN, Content-Length framed, 1 MiB writes
    /chunked?pieces=K           a chunked response
    /close-delimited?size=N     HTTP/1.0 response with no length; the close ends it
    /delay?s=S                  sleeps S seconds, then echoes
    /hang-close                 reads the request, closes without answering
    /partial                    promises 100000 bytes, sends 1000, closes
    /status?code=C              an empty response with that status (204, 304, ...)
    /hop                        a response carrying hop-by-hop header fields
    /big-head                   a response head over 60 KiB
    /garbage                    bytes that are not HTTP, then a close
    /overlong                   Content-Length 5 followed by more bytes than that

    `connections` counts accepted connections, `closed` those it saw end; `requests` records
    (method, target, headers) of each request.
    With `close_after_response` every response is followed by a close (no Connection: close).
    """

    def __init__(self, name: str = "upstream", close_after_response: bool = False) -> None:
        self.name = name
        self.close_after_response = close_after_response
        self.connections = 0
        self.closed = 0
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.upstream = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> dict[str, Any]:
        return {"address": "127.0.0.1", "port": self.port}

    def accepted(self, sock: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._sockets.append(sock)

    def finished(self) -> None:
        with self._lock:
            self.closed += 1

    def record(self, handler: _Handler) -> None:
        with self._lock:
            self.requests.append(
                {
                    "method": handler.command,
                    "target": handler.path,
                    "headers": [(k.lower(), v) for k, v in handler.headers.items()],
                }
            )

    def wait_for_request(self, target: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if any(r["target"] == target for r in self.requests):
                    return
            time.sleep(0.01)
        raise AssertionError(f"{self.name} never received {target}")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(timeout=5)


class UpstreamPool:
    """Starts upstreams on demand and closes them all at the end of its fixture's scope."""

    def __init__(self) -> None:
        self._all: list[Upstream] = []

    def start(self, name: str = "upstream", **kwargs: Any) -> Upstream:
        upstream = Upstream(name, **kwargs)
        self._all.append(upstream)
        return upstream

    def close(self) -> None:
        for upstream in self._all:
            upstream.close()
        self._all.clear()


@pytest.fixture
def upstreams() -> Iterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def module_upstreams() -> Iterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    pool.close()


# proxy processes --------------------------------------------------------------------------

_READY_LINE = re.compile(r"plait proxy \(\w+\) ready: (.*)$", re.MULTILINE)


class ProxyProcess:
    """One `plait proxy` child process; `stop()` always leaves no process behind."""

    def __init__(
        self, popen: subprocess.Popen[bytes], stderr_path: Path, access_log: Path | None
    ) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stderr_path = stderr_path
        self.access_log = access_log
        self.addresses: dict[str, tuple[str, int]] = {}

    # addresses -----------------------------------------------------------------------------
    def port(self, kind: str) -> int:
        return self.addresses[kind][1]

    def url(self, kind: str = "outbound") -> str:
        host, port = self.addresses[kind]
        return f"http://{host}:{port}"

    @property
    def outbound(self) -> int:
        return self.port("outbound")

    # lifecycle -----------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"proxy exited with {self.popen.returncode}: {self.stderr()}")
            match = _READY_LINE.search(self.stderr())
            if match:
                for part in match.group(1).split(", "):
                    kind, _, address = part.partition(" ")
                    host, _, port = address.rpartition(":")
                    self.addresses[kind] = (host, int(port))
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"proxy did not announce readiness: {self.stderr()}")
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url("admin") + "/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("proxy /ready never answered 200")

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    # views -------------------------------------------------------------------------------
    def admin_json(self, path: str) -> Any:
        with urllib.request.urlopen(self.url("admin") + path, timeout=5) as resp:
            return json.load(resp)

    def stats(self) -> dict[str, Any]:
        return self.admin_json("/stats?format=json")  # type: ignore[no-any-return]

    def listener_stat(self, listener: str, name: str) -> int:
        return int(self.stats()["listeners"][listener][name])

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def children(self) -> list[int]:
        """PIDs whose parent is the proxy (there should be none)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == self.pid:
                found.append(int(entry.name))
        return found

    def access_log_entries(self) -> list[dict[str, Any]]:
        assert self.access_log is not None, "proxy started without an access log"
        try:
            text = self.access_log.read_text()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_for_log(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """The first access-log entry matching `predicate` (the log is flushed every second)."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.access_log_entries():
                if predicate(entry):
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no access-log entry matched; log: {self.access_log_entries()}"
                )
            time.sleep(0.1)


# Resolved here, not in the child: after fork only async-signal-safe work is wise.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the test process dies without a teardown."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ProxyPool:
    """Starts proxies on demand (each with its own snapshot file) and stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._all: list[ProxyProcess] = []

    def start(
        self,
        snapshot: dict[str, Any],
        *flags: str,
        mode: str = "sidecar",
        app: int | None = None,
        access_log: bool = True,
        drain_timeout: float = 2.0,
        wait: bool = True,
    ) -> ProxyProcess:
        n = len(self._all)
        config = self.workdir / f"snapshot-{n}.json"
        config.write_text(json.dumps(snapshot))
        stderr_path = self.workdir / f"proxy-{n}.stderr"
        log_path = self.workdir / f"access-{n}.log" if access_log else None
        argv = [PYTHON, "-m", "plait", "proxy", "--config", str(config), "--mode", mode]
        argv += ["--admin", "127.0.0.1:0", "--drain-timeout", str(drain_timeout)]
        if mode == "gateway":
            argv += ["--gateway-listen", "127.0.0.1:0"]
        else:
            argv += ["--outbound", "127.0.0.1:0", "--inbound", "127.0.0.1:0"]
        if app is not None:
            argv += ["--app", f"127.0.0.1:{app}"]
        argv += ["--access-log", str(log_path) if log_path else "off"]
        argv += list(flags)
        # e.g. PLAIT_TEST_PROXY_ARGS=--no-uvloop runs the suite on the stdlib event loop.
        argv += os.environ.get("PLAIT_TEST_PROXY_ARGS", "").split()
        with open(stderr_path, "wb") as err:
            popen = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=_die_with_parent,
            )
        proxy = ProxyProcess(popen, stderr_path, log_path)
        self._all.append(proxy)
        if wait:
            proxy.wait_ready()
        return proxy

    def close(self) -> None:
        for proxy in self._all:
            proxy.stop()
        self._all.clear()


@pytest.fixture
def proxies(tmp_path: Path) -> Iterator[ProxyPool]:
    pool = ProxyPool(tmp_path)
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def module_proxies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyPool]:
    pool = ProxyPool(tmp_path_factory.mktemp("proxies"))
    yield pool
    pool.close()


# raw HTTP/1.1 client ----------------------------------------------------------------------


class RawResponse:
    def __init__(
        self, version: str, status: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        self.version = version
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return values[-1] if values else None

    def header_names(self) -> set[str]:
        return {k for k, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """Exact bytes out, one response parsed at a time (keeps its read buffer across them)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_response(self, method: str = "GET") -> RawResponse:
        status_line = self.file.readline()
        if not status_line:
            raise ConnectionError("connection closed before a response")
        version, status, *_ = status_line.decode("latin-1").split(" ", 2)
        headers: list[tuple[str, str]] = []
        while True:
            line = self.file.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.append((name.strip().lower(), value.strip()))
        code = int(status)
        resp = RawResponse(version, code, headers, b"")
        if code < 200:
            return resp
        if method == "HEAD" or code in (204, 304):
            return resp
        te = (resp.header("transfer-encoding") or "").lower()
        if "chunked" in te:
            parts = []
            while True:
                size = int(self.file.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.file.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.file.read(size))
                self.file.readline()
            resp.body = b"".join(parts)
        elif resp.header("content-length") is not None:
            resp.body = self.file.read(int(resp.header("content-length") or 0))
        else:
            resp.body = self.file.read()
        return resp

    def request(
        self, method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> RawResponse:
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in (headers or {}).items():
            lines.append(f"{name}: {value}")
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return self.read_response(method)

    def at_eof(self, timeout: float) -> bool:
        """True if the peer closes (EOF or reset) within `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            # The socket, not the file: a file object is unusable after a timeout.
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)
        return data == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RawClients:
    """Opens `RawClient`s and closes whichever are still open at teardown."""

    def __init__(self) -> None:
        self._all: list[RawClient] = []

    def __call__(self, port: int, timeout: float = 10.0) -> RawClient:
        client = RawClient(port, timeout)
        self._all.append(client)
        return client

    def close(self) -> None:
        for client in self._all:
            client.close()
        self._all.clear()


@pytest.fixture
def raw() -> Iterator[RawClients]:
    """`raw(port)` -> a RawClient connected to 127.0.0.1:port, closed at teardown."""
    clients = RawClients()
    yield clients
    clients.close()


def _env_without_proxy() -> dict[str, str]:
    """The environment minus *_proxy variables, so curl goes where it is told."""
    return {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


def _curl(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", *args], capture_output=True, timeout=timeout, env=_env_without_proxy()
    )


@pytest.fixture
def curl() -> Any:
    """`curl(*args)` -> CompletedProcess (quiet, errors shown, *_proxy variables ignored)."""
    return _curl
