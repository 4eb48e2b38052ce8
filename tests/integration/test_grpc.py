"""gRPC through the mesh: a grpcio client and servers, two proxies each way, mTLS between them.

One control plane; a caller proxy `client-0` (no app: the test is its app, dialling the
outbound listener with `grpc.default_authority` naming the service); two `greeter` replicas
(`greeter-v1-0`, `greeter-v2-0`), each an in-process grpcio server behind its own proxy; and
`down-0`, a proxy whose app refuses connections; and `silent-0`, whose app (raw h2c) never
answers. The Services declare `protocol: grpc`, which is all that makes the proxies speak h2c
to the apps. Every call type, deadlines, statuses, metadata and trailers, a 100 MiB stream with
the proxies' memory watched, GRPCRoute routing and retries. The servers use grpcio's generic
handlers on raw bytes (`test.Echo/*`) plus the canonical `helloworld.Greeter` from the demo.
The last test runs the example, `plait up examples/grpc/mesh.yaml`.
"""

from __future__ import annotations

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
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from meshkit import Mesh, Proc, free_port, wait_until

from plait.local.greeter import helloworld_pb2, helloworld_pb2_grpc
from plait.local.greeter.client import open_channel
from plait.local.greeter.server import GREETINGS, Greeter
from plait.proto import grpc as grpc_proto

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024
CHUNK = bytes(range(256)) * 4096  # 1 MiB
SLOW_WORK = 8.0  # seconds the Slow method works, far beyond the callers' deadlines


def _service(name: str, selector: str) -> str:
    return (
        f"apiVersion: plait.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\n"
        f"spec: {{selector: {{{selector}}}, ports: [{{name: grpc, port: 50051, protocol: grpc}}]}}\n"
    )


RESOURCES = "---\n".join(
    [
        _service("greeter", "app: greeter"),
        _service("greeter-v1", "app: greeter, version: v1"),
        _service("greeter-v2", "app: greeter, version: v2"),
        _service("down", "app: down"),
        _service("empty", "app: nobody-runs-this"),
        _service("silent", "app: silent"),
        """\
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: greeter}
spec:
  parentRefs: [{kind: Service, name: greeter, port: 50051}]
  rules:
    - matches: [{method: {service: test.Echo, method: WhoV2}}]
      backendRefs: [{name: greeter-v2, port: 50051}]
    - matches: [{method: {service: test.Echo, method: Split}}]
      backendRefs:
        - {name: greeter-v1, port: 50051, weight: 1}
        - {name: greeter-v2, port: 50051, weight: 1}
    - matches: [{method: {service: test.Echo, method: Flaky}}]
      backendRefs: [{name: greeter-v1, port: 50051}]
      retry: {retryOn: unavailable, attempts: 2}
    - matches: [{method: {service: test.Echo, method: Faulty}}]
      filters:
        - type: ExtensionRef
          extensionRef: {group: plait.dev, kind: HTTPFault, name: exhausted}
      backendRefs: [{name: greeter-v1, port: 50051}]
    - matches: [{method: {type: RegularExpression, service: "test\\\\.Ech.", method: "(Slow|Unary)"}}]
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {set: [{name: x-route, value: regex}]}
      backendRefs: [{name: greeter-v1, port: 50051}]
    - backendRefs: [{name: greeter-v1, port: 50051}]
---
apiVersion: plait.dev/v1
kind: HTTPFault
metadata: {name: exhausted}
spec: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 100}}}
---
# The greeters refuse one method to everyone: a gRPC caller sees PERMISSION_DENIED.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-forbidden}
spec:
  selector: {matchLabels: {app: greeter}}
  action: DENY
  rules: [{to: [{operation: {paths: [/test.Echo/Forbidden]}}]}]
---
# No catch-all: a call to another method of `down` matches no rule.
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: down}
spec:
  parentRefs: [{kind: Service, name: down, port: 50051}]
  rules:
    - matches: [{method: {service: test.Echo, method: Unary}}]
      backendRefs: [{name: down, port: 50051}]
""",
    ]
)


# --- the servers --------------------------------------------------------------------------------


class EchoServer:
    """A grpcio server on a free port: `test.Echo/*` on raw bytes, and helloworld.Greeter."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = free_port()
        self.lock = threading.Lock()
        self.flaky: dict[str, int] = {}  # key -> calls seen
        self.slow_remaining: list[float | None] = []  # time_remaining() at the Slow call's start
        self.slow_done = threading.Event()
        self.stopping = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self.unary),
            "Who": grpc.unary_unary_rpc_method_handler(self.who),
            "WhoV2": grpc.unary_unary_rpc_method_handler(self.who),
            "Split": grpc.unary_unary_rpc_method_handler(self.who),
            "Flaky": grpc.unary_unary_rpc_method_handler(self.flaky_call),
            "FlakyNoRetry": grpc.unary_unary_rpc_method_handler(self.flaky_call),
            "Abort": grpc.unary_unary_rpc_method_handler(self.abort),
            "Slow": grpc.unary_unary_rpc_method_handler(self.slow),
            "ServerStream": grpc.unary_stream_rpc_method_handler(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Echo", handlers),)
        )
        helloworld_pb2_grpc.add_GreeterServicer_to_server(Greeter(name), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def close(self) -> None:
        self.stopping.set()
        self.server.stop(0).wait()

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        echoed = tuple((k, v) for k, v in context.invocation_metadata() if k.startswith("x-echo"))
        context.send_initial_metadata((*echoed, ("x-server", self.name)))
        context.set_trailing_metadata((("x-trailer", "done"), ("x-trailer-bin", b"\xff\x00")))
        return request

    def who(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return self.name.encode()

    def flaky_call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """UNAVAILABLE on the first call with a given key, then OK: a retry succeeds."""
        with self.lock:
            seen = self.flaky[request.decode()] = self.flaky.get(request.decode(), 0) + 1
        if seen == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        return b"ok after %d" % seen

    def abort(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, request.decode() or "no such greeting")
        raise AssertionError("abort returns no value")

    def slow(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Works SLOW_WORK seconds whatever the deadline, then says so."""
        self.slow_remaining.append(context.time_remaining())
        self.stopping.wait(SLOW_WORK)
        self.slow_done.set()
        return b"finally"

    def server_stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        count, size = (int(x) for x in request.split(b","))
        for i in range(count):
            yield i.to_bytes(4, "big") + CHUNK[: size - 4]

    def client_stream(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        digest, total = hashlib.sha256(), 0
        for message in requests:
            digest.update(message)
            total += len(message)
        return json.dumps({"bytes": total, "sha256": digest.hexdigest()}).encode()

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for message in requests:
            yield message.upper()


class SilentH2App:
    """An h2c app that reads requests and never answers: it records each request's headers
    and every stream the proxy in front of it resets (or the connection it drops), which is
    how a test sees that proxy stop waiting."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.headers: list[dict[bytes, bytes]] = []
        self.ended = threading.Event()  # a stream reset, or the connection closed
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2conn.initiate_connection()
        conn.sendall(h2conn.data_to_send())
        open_streams = set()
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                if open_streams:
                    self.ended.set()
                return
            for event in h2conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    self.headers.append(dict(event.headers))
                    open_streams.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    open_streams.discard(event.stream_id)
                    self.ended.set()
            conn.sendall(h2conn.data_to_send())

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


# --- the mesh ----------------------------------------------------------------------------------


class GrpcMesh:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mesh = Mesh(tmp)
        self.mesh.apply(RESOURCES)
        self.servers = {v: EchoServer(f"greeter-{v}") for v in ("v1", "v2")}
        self.proxies: dict[str, tuple[Proc, dict[str, int]]] = {}
        for v, server in self.servers.items():
            self.proxies[f"greeter-{v}-0"] = self._proxy(
                f"greeter-{v}-0", "greeter", f"app=greeter,version={v}", server.port
            )
        self.dead = socket.socket()  # bound, never listening: connections are refused
        self.dead.bind(("127.0.0.1", 0))
        self.proxies["down-0"] = self._proxy(
            "down-0", "down", "app=down", self.dead.getsockname()[1]
        )
        self.silent = SilentH2App()
        self.proxies["silent-0"] = self._proxy("silent-0", "silent", "app=silent", self.silent.port)
        self.proxies["client-0"] = self._proxy("client-0", "client", "app=client", None)
        wait_until(lambda: self.mesh.converged(set(self.proxies)), 20, "convergence")
        self.channels: dict[str, grpc.Channel] = {}
        wait_until(self._reachable, 20, "a gRPC call through the mesh")

    def _proxy(
        self, name: str, service: str, labels: str, app_port: int | None
    ) -> tuple[Proc, dict[str, int]]:
        extra = [f"--access-log={self.tmp / (name + '.access.log')}"]  # for a failure's autopsy
        return self.mesh.proxy(name, service, labels, app_port=app_port, extra=extra)

    def _reachable(self) -> bool:
        try:
            self.call("greeter", "Unary", b"ping", timeout=2)
            return True
        except grpc.RpcError:
            return False

    def channel(self, service: str) -> grpc.Channel:
        if service not in self.channels:
            outbound = self.proxies["client-0"][1]["outbound"]
            self.channels[service] = grpc.insecure_channel(
                f"127.0.0.1:{outbound}",
                options=[
                    ("grpc.default_authority", f"{service}:50051"),
                    ("grpc.enable_http_proxy", 0),
                    ("grpc.enable_retries", 0),  # the mesh retries, not the client library
                ],
            )
        return self.channels[service]

    def method(self, service: str, name: str, kind: str = "unary_unary") -> Any:
        return getattr(self.channel(service), kind)(f"/test.Echo/{name}")

    def call(self, service: str, name: str, request: bytes, timeout: float = 10) -> bytes:
        result: bytes = self.method(service, name)(request, timeout=timeout)
        return result

    def rss_kib(self, proxy: str) -> int:
        popen = self.proxies[proxy][0].popen
        assert popen is not None
        status = Path(f"/proc/{popen.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()
        self.mesh.close()
        for server in self.servers.values():
            server.close()
        self.dead.close()
        self.silent.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcMesh]:
    m = GrpcMesh(tmp_path_factory.mktemp("grpc"))
    try:
        yield m
    finally:
        m.close()


def _error(call: Any, *args: Any, **kwargs: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, **kwargs)
    return e.value


# --- call types ---------------------------------------------------------------------------------


def test_unary_with_metadata_and_trailers(mesh: GrpcMesh) -> None:
    call = mesh.method("greeter", "Unary")
    reply, info = call.with_call(
        b"hello", metadata=(("x-echo-text", "hi"), ("x-echo-bin", b"\x00\x01\xfe")), timeout=10
    )
    assert reply == b"hello"
    initial = dict(info.initial_metadata())
    assert initial["x-echo-text"] == "hi"
    assert initial["x-echo-bin"] == b"\x00\x01\xfe"
    assert initial["x-server"] == "greeter-v1"
    assert initial["x-route"] == "regex"  # the regex rule's ResponseHeaderModifier
    trailing = dict(info.trailing_metadata())
    assert trailing["x-trailer"] == "done"
    assert trailing["x-trailer-bin"] == b"\xff\x00"
    assert info.code() == grpc.StatusCode.OK


def test_canonical_helloworld_greeter(mesh: GrpcMesh) -> None:
    stub = helloworld_pb2_grpc.GreeterStub(mesh.channel("greeter"))
    reply = stub.SayHello(helloworld_pb2.HelloRequest(name="Ada"), timeout=10)
    assert reply.message == "Hello, Ada!"
    stream = stub.SayHelloStream(helloworld_pb2.HelloRequest(name="Ada"), timeout=10)
    assert [r.message for r in stream] == [f"{g}, Ada!" for g in GREETINGS]


def test_server_streaming(mesh: GrpcMesh) -> None:
    replies = list(mesh.method("greeter", "ServerStream", "unary_stream")(b"50,1000", timeout=10))
    assert [int.from_bytes(r[:4], "big") for r in replies] == list(range(50))
    assert all(len(r) == 1000 for r in replies)


def test_client_streaming(mesh: GrpcMesh) -> None:
    parts = [b"part-%d" % i for i in range(100)]
    reply = mesh.method("greeter", "ClientStream", "stream_unary")(iter(parts), timeout=10)
    assert json.loads(reply) == {
        "bytes": sum(map(len, parts)),
        "sha256": hashlib.sha256(b"".join(parts)).hexdigest(),
    }


def test_bidirectional_streaming_interleaves(mesh: GrpcMesh) -> None:
    """Each reply arrives before the next request is sent: the proxies do not buffer a call."""
    sent: list[bytes] = []
    turn = threading.Semaphore(0)

    def requests() -> Iterator[bytes]:
        for i in range(20):
            message = b"ping %d" % i
            sent.append(message)
            yield message
            assert turn.acquire(timeout=10), "no reply to the last message"

    replies = []
    for reply in mesh.method("greeter", "Bidi", "stream_stream")(requests(), timeout=30):
        replies.append(reply)
        turn.release()
    assert replies == [m.upper() for m in sent]


# --- deadlines, statuses --------------------------------------------------------------------------


def test_deadline_reaches_the_app(mesh: GrpcMesh) -> None:
    server = mesh.servers["v1"]
    err = _error(mesh.method("greeter", "Slow"), b"", timeout=0.5)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # grpc-timeout reached the app: it knows its deadline, the caller's (whole milliseconds,
    # rounded up on the way, so a hair above 0.5 s counts as the same deadline).
    assert server.slow_remaining, "the call never reached the server"
    remaining = server.slow_remaining[-1]
    assert remaining is not None and 0 < remaining < 0.51


def test_deadline_is_propagated_and_the_callee_proxy_stops_waiting(mesh: GrpcMesh) -> None:
    """An app that never answers: the caller gets DEADLINE_EXCEEDED, and the proxy in front of
    the app gives up on it too (resets the stream) instead of waiting forever."""
    app = mesh.silent
    app.ended.clear()
    seen = len(app.headers)
    err = _error(mesh.method("silent", "Slow"), b"", timeout=0.5)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert len(app.headers) == seen + 1, "the call never reached the app"
    timeout = grpc_proto.parse_timeout(app.headers[-1].get(b"grpc-timeout", b""))
    assert timeout is not None and 0 < timeout <= 500, app.headers[-1]
    assert app.ended.wait(SLOW_WORK), "the callee's proxy kept waiting for the app"


def test_status_and_message_pass_through(mesh: GrpcMesh) -> None:
    err = _error(mesh.method("greeter", "Abort"), b"no such greeting", timeout=10)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "no such greeting"
    # grpc-message is percent-encoded on the wire; it must arrive intact.
    text = "no such greeting: 100% caf\u00e9, \u4f60\u597d"
    err = _error(mesh.method("greeter", "Abort"), text.encode(), timeout=10)
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, text)


def test_unavailable_upstream_is_a_grpc_status_not_an_http_503(mesh: GrpcMesh) -> None:
    for service in ("down", "empty"):  # the app refuses connections / no endpoint at all
        err = _error(mesh.method(service, "Unary"), b"x", timeout=10)
        assert err.code() == grpc.StatusCode.UNAVAILABLE, (service, err)
        # grpcio reports a non-gRPC HTTP reply as "Received http2 header with status: 503".
        assert "http2 header with status" not in (err.details() or ""), (service, err.details())


def test_no_matching_rule_is_unimplemented_for_grpc_callers(mesh: GrpcMesh) -> None:
    err = _error(mesh.method("down", "Other"), b"x", timeout=10)
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED, err  # the NR local reply, gRPC-shaped
    assert "http2 header with status" not in (err.details() or "")


def test_unknown_service_is_unimplemented_for_grpc_callers(mesh: GrpcMesh) -> None:
    err = _error(mesh.method("nosuchservice", "Unary"), b"x", timeout=10)
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED, err


def test_injected_grpc_fault_and_authorization_denial_are_grpc_statuses(mesh: GrpcMesh) -> None:
    err = _error(mesh.method("greeter", "Faulty"), b"x", timeout=10)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err  # HTTPFault abort.grpcStatus
    err = _error(mesh.method("greeter", "Forbidden"), b"x", timeout=10)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err  # RBAC, from the callee's proxy
    assert "http2 header with status" not in (err.details() or "")
    assert mesh.call("greeter", "Unary", b"still fine") == b"still fine"


# --- GRPCRoute ------------------------------------------------------------------------------------


def test_grpcroute_routes_by_method(mesh: GrpcMesh) -> None:
    assert {mesh.call("greeter", "WhoV2", b"") for _ in range(10)} == {b"greeter-v2"}
    assert {mesh.call("greeter", "Who", b"") for _ in range(10)} == {b"greeter-v1"}


def test_grpcroute_weighted_split(mesh: GrpcMesh) -> None:
    picks = [mesh.call("greeter", "Split", b"") for _ in range(80)]
    v1 = picks.count(b"greeter-v1")
    assert set(picks) == {b"greeter-v1", b"greeter-v2"}
    assert 12 <= v1 <= 68, v1  # 1:1 weights; bounds far outside chance (p < 1e-9)


def test_retry_on_unavailable(mesh: GrpcMesh) -> None:
    server = mesh.servers["v1"]
    # The route for Flaky retries UNAVAILABLE: the caller sees the second try's answer.
    assert mesh.call("greeter", "Flaky", b"key-1") == b"ok after 2"
    assert server.flaky["key-1"] == 2
    # Without a retry rule the UNAVAILABLE reaches the caller, once.
    err = _error(mesh.method("greeter", "FlakyNoRetry"), b"key-2", timeout=10)
    assert (err.code(), err.details()) == (grpc.StatusCode.UNAVAILABLE, "warming up")
    assert server.flaky["key-2"] == 1


# --- a big message, bounded memory ----------------------------------------------------------------


def test_100_mib_streamed_through_with_bounded_proxy_memory(mesh: GrpcMesh) -> None:
    proxies = ("client-0", "greeter-v1-0")
    # Warm up the buffers and pools first, so the baseline is the proxies' working size.
    mesh.method("greeter", "ClientStream", "stream_unary")(iter([CHUNK] * 4), timeout=30)
    before = {p: mesh.rss_kib(p) for p in proxies}
    peak = dict(before)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.05):
            for p in proxies:
                peak[p] = max(peak[p], mesh.rss_kib(p))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        up = mesh.method("greeter", "ClientStream", "stream_unary")
        reply = json.loads(up((CHUNK for _ in range(100)), timeout=90))
        down = mesh.method("greeter", "ServerStream", "unary_stream")(b"100,%d" % MIB, timeout=90)
        received = sum(len(m) for m in down)
    finally:
        stop.set()
        watcher.join()
    assert reply == {"bytes": 100 * MIB, "sha256": hashlib.sha256(CHUNK * 100).hexdigest()}
    assert received == 100 * MIB
    for p in proxies:
        growth = (peak[p] - before[p]) / 1024
        assert growth < 48, f"{p} grew {growth:.1f} MiB carrying 2 x 100 MiB"


def test_proxies_survived(mesh: GrpcMesh) -> None:
    for name, (proc, _) in mesh.proxies.items():
        assert proc.popen is not None and proc.popen.poll() is None, f"{name} exited"


# --- the example: `plait up examples/grpc/mesh.yaml` ---------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "grpc" / "mesh.yaml"


@pytest.fixture
def grpc_example(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`plait up` on the example: (the gateway's /hello URL, the run dir); stopped with SIGINT."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path)}
    for name in ("PLAIT_SERVER", "PLAIT_TOKEN", "http_proxy", "HTTP_PROXY"):
        env.pop(name, None)
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "plait", "up", str(EXAMPLE), "--gateway-port", "0"]
    argv += ["--no-table", "--run-dir", str(run_dir), "--control-port", "0"]
    up = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
    )
    lines: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 60
        assert up.stdout is not None
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"Open (http://127\.0\.0\.1:\d+/hello)$", line.strip()):
                url = m.group(1)
            if "All ready" in line:
                break
        assert url, "plait up did not start:\n" + "".join(lines)
        yield url, run_dir
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()


def test_plait_up_example_serves_sayhello_through_the_mesh(grpc_example: tuple[str, Path]) -> None:
    url, run_dir = grpc_example
    # The demo's own client app calls Greeter through its sidecar (curl -> gateway -> client).
    with urllib.request.urlopen(f"{url}?name=Ada", timeout=10) as reply:
        assert reply.read().decode().startswith("Hello, Ada! (served by greeter-v")
    with urllib.request.urlopen(f"{url}/stream?name=Ada", timeout=10) as reply:
        assert reply.read().decode().splitlines() == [f"{g}, Ada!" for g in GREETINGS]
    # Any gRPC client can do the same through the client's sidecar outbound listener.
    log = (run_dir / "client-0" / "proxy.log").read_text()
    match = re.search(r"outbound (127\.0\.0\.1:\d+)", log)
    assert match, log
    with open_channel(match.group(1)) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        reply, call = stub.SayHello.with_call(helloworld_pb2.HelloRequest(name="Grace"), timeout=10)
        assert reply.message == "Hello, Grace!"
        assert dict(call.trailing_metadata())["x-served-by"].startswith("greeter-v")
        # The example's GRPCRoute sends SayHelloStream to v2 only.
        for _ in range(5):
            stream = stub.SayHelloStream(helloworld_pb2.HelloRequest(name="Grace"), timeout=10)
            assert [r.message for r in stream] == [f"{g}, Grace!" for g in GREETINGS]
            assert dict(stream.trailing_metadata())["x-served-by"] == "greeter-v2-0"
