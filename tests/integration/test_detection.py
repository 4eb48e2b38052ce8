"""Protocol detection on one outbound listener: HTTP/1.1, h2c with prior knowledge and raw
TCP arrive on the same port and each reaches its service through the mesh (mTLS between
the proxies).

The listener is a `--tcp-outbound` one for `redis:6379`, a port that declares no protocol:
the proxy reads the client's first bytes to tell HTTP/1.1 (routed by Host, like the main
outbound listener), the HTTP/2 preface (routed by :authority) and anything else (tunnelled to
redis) apart. The main outbound listener serves HTTP/1.1 and h2c as well.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshkit import Mesh, Proc, free_port, send_request, wait_until

from plait.proxy.listener import ListenerContext

pytestmark = pytest.mark.timeout(90)

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: redis}
spec: {selector: {app: redis}, ports: [{port: 6379}]}
"""


class DetectionMesh:
    def __init__(self, tmp: Path) -> None:
        self.mesh = Mesh(tmp)
        self.mesh.apply(SERVICES)
        _, web_port = self.mesh.app("web")
        redis_port = free_port()
        redis = Proc(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            tmp / "redis.log",
        )
        self.mesh.procs.append(redis)
        wait_until(lambda: _connectable(redis_port), 10, "redis-server")
        self.mesh.proxy("web-0", "web", "app=web", app_port=web_port)
        self.mesh.proxy("redis-0", "redis", "app=redis", app_port=redis_port)
        self.port = free_port()
        _, self.client = self.mesh.proxy(
            "client-0", "client", "app=client", extra=[f"--tcp-outbound={self.port}=redis:6379"]
        )
        wait_until(lambda: self.mesh.converged({"web-0", "redis-0", "client-0"}), 20, "sync")
        wait_until(
            lambda: send_request(self.port, "/", headers={"host": "web"}).status == 200, 15, "web"
        )


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DetectionMesh]:
    for tool in ("redis-server", "redis-cli", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed for this test")
    m = DetectionMesh(tmp_path_factory.mktemp("detect"))
    try:
        yield m
    finally:
        m.mesh.close()


def test_http1_on_the_mixed_listener_is_routed_by_host(mixed: DetectionMesh) -> None:
    reply = send_request(mixed.port, "/hello", headers={"host": "web"})
    assert reply.status == 200
    assert reply.json()["name"] == "web"
    assert reply.json()["path"] == "/hello"


def test_keep_alive_requests_are_detected_once(mixed: DetectionMesh) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", mixed.port, timeout=5)
    try:
        for i in range(5):
            conn.request("GET", f"/n{i}", headers={"Host": "web"})
            response = conn.getresponse()
            assert response.status == 200
            assert f"/n{i}" in response.read().decode()
    finally:
        conn.close()


def test_tcp_on_the_mixed_listener_reaches_redis(mixed: DetectionMesh) -> None:
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(mixed.port), "PING"],
        capture_output=True,
        timeout=10,
    )
    assert out.stdout.decode().strip() == "PONG"


@pytest.mark.parametrize("listener", ["mixed", "outbound"])
def test_h2c_prior_knowledge_is_detected(mixed: DetectionMesh, listener: str) -> None:
    if not hasattr(ListenerContext, "h2_protocol_factory"):
        pytest.skip("no HTTP/2 downstream in this build yet (core's h2_protocol_factory)")
    port = mixed.port if listener == "mixed" else mixed.client["outbound"]
    out = subprocess.run(
        [
            "curl",
            "-sS",
            "--http2-prior-knowledge",
            "-H",
            "host: web",
            "-o",
            "-",
            "-w",
            "\\n%{http_version} %{http_code}",
            f"http://127.0.0.1:{port}/over-h2",
        ],
        capture_output=True,
        timeout=15,
    )
    body, _, status = out.stdout.decode().rpartition("\n")
    assert status == "2 200", (out.stdout, out.stderr)
    assert '"/over-h2"' in body


def test_a_request_line_split_across_a_pause_is_still_http(mixed: DetectionMesh) -> None:
    """Bytes that may still become a request line are not mistaken for TCP when the
    detection wait ends: they get the request head's time."""
    import time

    with socket.create_connection(("127.0.0.1", mixed.port), timeout=10) as s:
        s.sendall(b"GE")
        time.sleep(0.3)  # longer than the detection wait (100 ms)
        s.sendall(b"T /slow HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        answer = b""
        while data := s.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"/slow"' in answer
