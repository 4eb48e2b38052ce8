"""Raw TCP through the mesh: real apps behind real proxies, mTLS between the proxies.

app -> client proxy (`--tcp-outbound` listener) ==mTLS, ALPN plait-tcp==> server proxy ->
app. Apps: redis-server with redis-cli (client speaks first), a greeting service (server
speaks first), and a half-close echo (reads to EOF, then answers). One mesh for the module.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshkit import Mesh, Proc, free_port, wait_until

pytestmark = pytest.mark.timeout(120)

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: redis}
spec: {selector: {app: redis}, ports: [{name: redis, port: 6379, protocol: tcp}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: greet}
spec: {selector: {app: greet}, ports: [{port: 7000, protocol: tcp}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: greet-auto}
spec: {selector: {app: greet-auto}, ports: [{port: 7001}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: echo}
spec: {selector: {app: echo}, ports: [{port: 7002, protocol: tcp}]}
"""

# A dead endpoint of `redis` (nothing listens there): a static Workload without a proxy.
DEAD_REDIS = """
apiVersion: plait.dev/v1
kind: Workload
metadata: {name: redis-dead}
spec: {address: 127.0.0.1, port: %d, labels: {app: redis}}
"""

TCP_APP = r"""
import os, socket, threading
MODE, PORT = os.environ["MODE"], int(os.environ["PORT"])
def serve(conn):
    with conn:
        if MODE == "greet":  # server-first: a banner on accept, then echo lines
            conn.sendall(b"220 hello from greet\r\n")
            while data := conn.recv(65536):
                conn.sendall(data)
        else:  # half-close echo: read to EOF, then answer and close
            got = b""
            while data := conn.recv(65536):
                got += data
            conn.sendall(b"got %d bytes: " % len(got) + got.upper())
s = socket.create_server(("127.0.0.1", PORT))
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT_ID = "spiffe://cluster.local/ns/default/sa/client"
# The client proxy's TCP idle timeout: short enough to watch, long enough for every exchange.
IDLE_TIMEOUT = 2.0


class TcpMesh:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.mesh = Mesh(tmp)
        self.mesh.apply(SERVICES)
        self.redis_port = free_port()
        self.redis = Proc(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            tmp / "redis.log",
        )
        self.mesh.procs.append(self.redis)
        apps = {}
        for name, mode in (("greet", "greet"), ("greet-auto", "greet"), ("echo", "echo")):
            port = free_port()
            proc = Proc(
                [sys.executable, "-c", TCP_APP],
                tmp / f"{name}.app.log",
                {"MODE": mode, "PORT": str(port)},
            )
            self.mesh.procs.append(proc)
            apps[name] = port
        for port in (self.redis_port, *apps.values()):
            wait_until(lambda p=port: _connectable(p), 10, f"app on {port}")
        self.servers = {}
        for name, port in (("redis", self.redis_port), *apps.items()):
            _, self.servers[name] = self.mesh.proxy(f"{name}-0", name, f"app={name}", app_port=port)
        self.local = {name: free_port() for name in ("redis", "greet", "greet-auto", "echo")}
        self.access_log = tmp / "client.access.log"
        _, self.client = self.mesh.proxy(
            "client-0",
            "client",
            "app=client",
            extra=[
                f"--tcp-outbound=127.0.0.1:{self.local['redis']}=redis:6379",
                f"--tcp-outbound=127.0.0.1:{self.local['greet']}=greet:7000",
                f"--tcp-outbound=127.0.0.1:{self.local['greet-auto']}=greet-auto:7001",
                f"--tcp-outbound=127.0.0.1:{self.local['echo']}=echo:7002",
                f"--access-log={self.access_log}",
                f"--tcp-idle-timeout={IDLE_TIMEOUT}",
            ],
        )
        names = {"client-0", *(f"{n}-0" for n in self.servers)}
        wait_until(lambda: self.mesh.converged(names), 20, "convergence")
        wait_until(lambda: self.redis_cli("PING") == "PONG", 15, "redis through the mesh")

    def redis_cli(self, *args: str, stdin: bytes | None = None) -> str:
        """One redis-cli command through the mesh (`stdin`: the last argument, `-x`)."""
        extra = ["-x"] if stdin is not None else []
        result = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.local["redis"]), *extra, *args],
            input=stdin,
            capture_output=True,
            timeout=10,
        )
        return result.stdout.decode().strip()

    def outbound_stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.mesh.admin(self.client, "/stats?format=json")["listeners"][
            "outbound"
        ]
        return stats

    def prometheus(self, ports: dict[str, int]) -> str:
        url = f"http://127.0.0.1:{ports['admin']}/stats/prometheus"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def tcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TcpMesh]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are needed (apt-get install -y redis-server)")
    m = TcpMesh(tmp_path_factory.mktemp("tcp"))
    try:
        yield m
    finally:
        m.mesh.close()


def _recv_until(sock: socket.socket, marker: bytes) -> bytes:
    got = b""
    while marker not in got:
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got


def _read_to_eof(sock: socket.socket) -> bytes:
    got = b""
    while data := sock.recv(65536):
        got += data
    return got


def test_redis_cli_through_two_proxies(tcp: TcpMesh) -> None:
    assert tcp.redis_cli("SET", "greeting", "hello mesh") == "OK"
    assert tcp.redis_cli("GET", "greeting") == "hello mesh"
    big = "x" * 1_000_000  # a value larger than any socket buffer: backpressure both ways
    assert tcp.redis_cli("SET", "big", stdin=big.encode()) == "OK"
    assert tcp.redis_cli("STRLEN", "big") == "1000000"
    assert tcp.redis_cli("GET", "big") == big


def test_server_first_service_declared_tcp_greets_at_once(tcp: TcpMesh) -> None:
    before = tcp.outbound_stats()
    with socket.create_connection(("127.0.0.1", tcp.local["greet"]), timeout=10) as s:
        # We send nothing: the banner must come anyway (no waiting for client bytes).
        assert _recv_until(s, b"\r\n") == b"220 hello from greet\r\n"
        s.sendall(b"ping\r\n")
        assert _recv_until(s, b"ping\r\n") == b"ping\r\n"
    after = tcp.outbound_stats()
    # Declared tcp: detection was skipped, never timed out waiting for us.
    assert after.get("detect_skipped_tcp", 0) == before.get("detect_skipped_tcp", 0) + 1
    assert after.get("detect_timeout", 0) == before.get("detect_timeout", 0)


def test_server_first_service_on_an_undeclared_port_greets_after_detection(
    tcp: TcpMesh,
) -> None:
    before = tcp.outbound_stats()
    with socket.create_connection(("127.0.0.1", tcp.local["greet-auto"]), timeout=10) as s:
        # Silence from the client for the detection wait (100 ms) means TCP.
        assert _recv_until(s, b"\r\n") == b"220 hello from greet\r\n"
        s.sendall(b"still here\r\n")
        assert _recv_until(s, b"here\r\n") == b"still here\r\n"
    after = tcp.outbound_stats()
    assert after.get("detect_timeout", 0) == before.get("detect_timeout", 0) + 1


def test_half_close_reaches_the_server_and_the_answer_comes_back(tcp: TcpMesh) -> None:
    payload = b"abc" * 100_000
    with socket.create_connection(("127.0.0.1", tcp.local["echo"]), timeout=10) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)  # our FIN: the echo answers only once it sees EOF
        answer = _read_to_eof(s)
    assert answer == b"got 300000 bytes: " + payload.upper()


def test_a_dead_endpoint_is_skipped(tcp: TcpMesh) -> None:
    dead = free_port()
    tcp.mesh.apply(DEAD_REDIS % dead)
    dead_label = f"127.0.0.1:{dead}"

    def has_dead_host() -> bool:
        hosts = tcp.mesh.admin(tcp.client, "/stats?format=json")["hosts"]
        return any(h["address"] == dead_label for h in hosts)

    wait_until(has_dead_host, 15, "the dead endpoint in the client's snapshot")
    for i in range(6):  # round robin would pick the dead one every other connection
        assert tcp.redis_cli("SET", f"k{i}", str(i)) == "OK"
    hosts = tcp.mesh.admin(tcp.client, "/stats?format=json")["hosts"]
    (dead_host,) = [h for h in hosts if h["address"] == dead_label]
    assert dead_host["cx_connect_fail"] >= 1
    tcp.mesh.delete("Workload", "redis-dead")


def test_tcp_metrics_and_access_log(tcp: TcpMesh) -> None:
    assert tcp.redis_cli("PING") == "PONG"

    def closed_on_both_sides() -> bool:
        client = tcp.prometheus(tcp.client)
        server = tcp.prometheus(tcp.servers["redis"])
        return (
            "istio_tcp_connections_closed_total{" in client
            and "istio_tcp_connections_closed_total{" in server
        )

    wait_until(closed_on_both_sides, 10, "TCP connection metrics")
    client = tcp.prometheus(tcp.client)
    opened = [
        line
        for line in client.splitlines()
        if line.startswith("istio_tcp_connections_opened_total{")
        and 'destination_service_name="redis"' in line
    ]
    assert opened and all('reporter="source"' in line for line in opened)
    assert any('connection_security_policy="mutual_tls"' in line for line in opened)
    assert int(float(opened[0].rsplit(" ", 1)[1])) >= 1
    sent = [
        line
        for line in client.splitlines()
        if line.startswith("istio_tcp_sent_bytes_total{")
        and 'destination_service_name="redis"' in line
    ]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in sent) > 0
    server = tcp.prometheus(tcp.servers["redis"])
    received = [
        line
        for line in server.splitlines()
        if line.startswith("istio_tcp_received_bytes_total{") and 'reporter="destination"' in line
    ]
    assert any(f'source_principal="{CLIENT_ID}"' in line for line in received)
    assert sum(float(line.rsplit(" ", 1)[1]) for line in received) > 0

    def tcp_log_lines() -> list[dict[str, object]]:
        if not tcp.access_log.exists():
            return []
        lines = [json.loads(x) for x in tcp.access_log.read_text().splitlines() if x]
        return [x for x in lines if x.get("protocol") == "tcp"]

    lines = wait_until(tcp_log_lines, 10, "a TCP access-log line")
    line = next(x for x in lines if x["upstream_cluster"] == "redis.default")
    assert line["listener"] == "outbound"
    assert line["upstream_tls"] == "mtls"
    assert isinstance(line["bytes_sent"], int) and line["bytes_sent"] > 0


def test_the_inbound_refuses_plaintext_tcp_in_strict_mode(tcp: TcpMesh) -> None:
    """Between the proxies it is TLS: a plaintext TCP client on the inbound port gets
    nothing from redis, and the refusal is counted."""
    inbound = tcp.servers["redis"]["inbound"]
    with socket.create_connection(("127.0.0.1", inbound), timeout=5) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        try:
            answer = _read_to_eof(s)
        except ConnectionResetError:  # closed with our unread bytes in its buffer: a reset
            answer = b""
        assert answer == b""
    stats = tcp.mesh.admin(tcp.servers["redis"], "/stats?format=json")["listeners"]["inbound"]
    assert stats.get("tls.plaintext_refused", 0) >= 1


def test_between_proxies_tcp_is_framed_inside_mtls_with_its_alpn(tcp: TcpMesh) -> None:
    """Speak to redis's proxy as the client proxy does: mTLS with the client's workload
    certificate, ALPN plait-tcp, length-prefixed frames and a zero-length end frame."""
    state = tcp.tmp / "client-0.state"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # peers are verified by SPIFFE ID, not by name
    context.load_verify_locations(cafile=str(state / "bundle.pem"))
    context.load_cert_chain(str(state / "cert.pem"), str(state / "key.pem"))
    context.set_alpn_protocols(["plait-tcp"])
    inbound = tcp.servers["redis"]["inbound"]
    raw = socket.create_connection(("127.0.0.1", inbound), timeout=10)
    with context.wrap_socket(raw) as s:
        assert s.selected_alpn_protocol() == "plait-tcp"
        ping = b"*1\r\n$4\r\nPING\r\n"
        s.sendall(struct.pack("!I", len(ping)) + ping + struct.pack("!I", 0))
        got = b""
        while data := s.recv(65536):
            got += data
            if got.endswith(struct.pack("!I", 0)):
                break
    assert got == struct.pack("!I", 7) + b"+PONG\r\n" + struct.pack("!I", 0)


def test_an_idle_connection_is_closed_by_the_idle_timeout(tcp: TcpMesh) -> None:
    with socket.create_connection(("127.0.0.1", tcp.local["greet"]), timeout=15) as s:
        assert _recv_until(s, b"\r\n") == b"220 hello from greet\r\n"
        # Then nobody says anything: the proxy closes both sides after the idle timeout.
        assert _read_to_eof(s) == b""

    def idle_line() -> bool:
        lines = [json.loads(x) for x in tcp.access_log.read_text().splitlines() if x]
        return any(x.get("response_flags") == "IDLE" for x in lines)

    wait_until(idle_line, 10, "an access-log line with the IDLE flag")


DENY_CLIENT = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: redis-deny-client}
spec:
  selector: {matchLabels: {app: redis}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/client"]}}]
"""


def test_authorization_applies_to_tcp_on_the_callers_identity(tcp: TcpMesh) -> None:
    tcp.mesh.apply(DENY_CLIENT)
    try:
        wait_until(lambda: tcp.redis_cli("PING") != "PONG", 15, "the DENY policy to apply")
        stats = tcp.mesh.admin(tcp.servers["redis"], "/stats?format=json")["policy"]
        assert stats.get("denied", 0) >= 1
    finally:
        tcp.mesh.delete("AuthorizationPolicy", "redis-deny-client")
    wait_until(lambda: tcp.redis_cli("PING") == "PONG", 15, "the policy to go away")


# transparent capture: the original destination (a service VIP:port) picks the service ------

CAPTURE_MARK = "1338"
REDIS_VIP, GREET_VIP = "10.96.7.7", "10.96.7.8"


def test_captured_tcp_to_a_service_vip_reaches_the_service(tmp_path: Path) -> None:
    """In a network namespace with iptables capture: redis-cli dials the redis VIP (declared
    tcp) and a server-first service's VIP (undeclared: detection times out into TCP); the
    proxy finds each service from SO_ORIGINAL_DST."""
    from conftest import PYTHON
    from netns import Topology, netns_unavailable

    why = netns_unavailable()
    if why is not None:
        pytest.skip(why)
    with Topology(1) as topo:
        host = topo.hosts[0]
        redis_port, greet_port = 16379, 17001
        config = {
            "clusters": [
                {
                    "name": "redis",
                    "ports": [6379],
                    "protocols": ["tcp"],
                    "vip": REDIS_VIP,
                    "endpoints": [{"address": "127.0.0.1", "port": redis_port}],
                },
                {
                    "name": "greet",
                    "ports": [7001],
                    "vip": GREET_VIP,
                    "endpoints": [{"address": "127.0.0.1", "port": greet_port}],
                },
            ]
        }
        (tmp_path / "snapshot.json").write_text(json.dumps(config))
        procs = [
            host.popen(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
                + ["--save", "", "--appendonly", "no"],
                tmp_path / "redis.log",
            ),
            host.popen(
                [PYTHON, "-c", TCP_APP],
                tmp_path / "greet.log",
                {"MODE": "greet", "PORT": str(greet_port)},
            ),
            host.popen(
                [PYTHON, "-m", "plait", "proxy", f"--config={tmp_path / 'snapshot.json'}"]
                + ["--outbound=127.0.0.1:15001", "--admin=127.0.0.1:15000"]
                + [f"--mark={CAPTURE_MARK}", f"--access-log={tmp_path / 'access.log'}"],
                tmp_path / "proxy.log",
            ),
        ]
        try:
            wait_until(
                lambda: (
                    host.run("curl", "-sf", "http://127.0.0.1:15000/ready", check=False).returncode
                    == 0
                ),
                15,
                "the proxy in the namespace",
            )
            host.run(PYTHON, "-m", "plait", "capture", "install", f"--proxy-mark={CAPTURE_MARK}")
            try:
                pong = host.run("redis-cli", "-h", REDIS_VIP, "-p", "6379", "PING", check=False)
                assert pong.stdout.strip() == "PONG", (pong.stdout, pong.stderr)
                banner = host.run(
                    PYTHON,
                    "-c",
                    "import socket,sys;s=socket.create_connection((sys.argv[1],7001),10);"
                    "print(s.recv(100).decode().strip())",
                    GREET_VIP,
                ).stdout
                assert banner.strip() == "220 hello from greet"
            finally:
                host.run(PYTHON, "-m", "plait", "capture", "remove", check=False)
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
