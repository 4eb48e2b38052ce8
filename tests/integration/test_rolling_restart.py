"""Rolling restart of a service's replicas under steady load: zero failed requests.

Three replicas of `web`, each an app behind its own proxy, get steady traffic from a client
proxy (threads on keep-alive connections, a few hundred requests per second, the default
retry policy only). Each replica in turn is restarted the way an orchestrator does it: its
proxy gets SIGTERM (it says `bye`, drains and exits), then its app stops, then both come
back. Every request must succeed: the proxy deregisters before it stops accepting, callers
stop picking it once the push arrives, and what races the push (a refused connect, a pooled
connection closed before any byte) is retried on another replica.
"""

from __future__ import annotations

import http.client
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from meshkit import Mesh, Proc, free_port, wait_until

SERVICE = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 9080}]}
"""

# The replica's app: each answer takes 20 ms, so requests are always in flight when a proxy
# gets SIGTERM (its drain must finish them).
APP = r"""
import os, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
NAME = os.environ["APP_NAME"].encode()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536
    def log_message(self, *a): pass
    def do_GET(self):
        time.sleep(2.0 if self.path == "/slow" else 0.02)
        body = b'{"name": "' + NAME + b'"}'
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""

THREADS = 6
# Per thread: 6 threads x ~50 requests per second = a few hundred per second in all.
PERIOD = 0.02


class Load:
    """Client threads sending GETs through the client's proxy; counts every outcome."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.served_by: dict[str, int] = {}
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(THREADS)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        next_at = time.monotonic()
        while not self.stop.is_set():
            try:
                conn.request("GET", "/item", headers={"Host": "web.default:9080"})
                response = conn.getresponse()
                body = response.read()
                if response.status == 200:
                    name = body.split(b'"name": "', 1)[1].split(b'"', 1)[0].decode()
                    with self.lock:
                        self.ok += 1
                        self.served_by[name] = self.served_by.get(name, 0) + 1
                else:
                    flags = response.getheader("x-plait-response-flags")
                    with self.lock:
                        self.failures.append(f"{response.status} {flags} {body[:120]!r}")
                if response.getheader("connection", "").lower() == "close":
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                # The client's own proxy never restarts: any error here is a failed request.
                with self.lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                conn.close()
            next_at += PERIOD
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_at = time.monotonic()
        conn.close()

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def total(self) -> int:
        with self.lock:
            return self.ok + len(self.failures)


@pytest.mark.timeout(120)
def test_rolling_restart_under_load_fails_no_request(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    load: Load | None = None
    try:
        mesh.apply(SERVICE)
        replicas: list[tuple[Any, int, Any, dict[str, int]]] = []
        for i in range(3):
            port = free_port()
            app = Proc(
                [sys.executable, "-c", APP],
                tmp_path / f"web-{i}.app.log",
                {"APP_NAME": f"web-{i}", "PORT": str(port)},
            )
            mesh.procs.append(app)
            wait_until(lambda p=port: _connectable(p), 10, f"app web-{i}")
            proxy, ports = mesh.proxy(f"web-{i}", "web", "app=web", app_port=port)
            replicas.append((app, port, proxy, ports))
        _, client = mesh.proxy("client-0", "client", "app=client")
        wait_until(mesh.converged, 15, "every proxy to acknowledge the mesh")
        load = Load(client["outbound"])
        load.start()
        wait_until(lambda: len(load.served_by) == 3, 15, "traffic to reach all three replicas")
        for i, (app, app_port, proxy, ports) in enumerate(replicas):
            before = load.total()
            proxy.stop()  # SIGTERM: bye, drain, exit (within the 5 s drain timeout)
            assert proxy.popen.returncode == 0, (tmp_path / f"web-{i}.proxy.log").read_text()
            app.stop()
            app.start()
            wait_until(lambda p=app_port: _connectable(p), 10, f"app web-{i} back")
            proxy.start()
            wait_until(lambda p=ports: mesh.is_ready(p), 15, f"web-{i} ready again")
            wait_until(mesh.converged, 15, "every proxy to see the restarted replica")
            # Traffic kept flowing while this replica was away.
            wait_until(lambda b=before: load.total() > b + 400, 15, "traffic to continue")
        served_before = dict(load.served_by)
        wait_until(
            lambda: all(load.served_by[n] > served_before[n] for n in served_before),
            15,
            "every restarted replica to serve again",
        )
        load.close()
        assert load.failures == [], f"{len(load.failures)} of {load.total()} failed"
        assert load.ok > 1000
    finally:
        if load is not None:
            load.close()
        mesh.close()


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_draining_proxy_is_withdrawn_at_once_and_finishes_in_flight(tmp_path: Path) -> None:
    """SIGTERM during a 2 s request: callers lose the endpoint while the proxy still serves
    that request (deregistered first, not after the registry's grace), which then completes."""
    mesh = Mesh(tmp_path, grace=30.0)  # a missed `bye` would keep the endpoint for 30 s
    try:
        mesh.apply(SERVICE)
        port = free_port()
        mesh.procs.append(
            Proc([sys.executable, "-c", APP], tmp_path / "web.app.log",
                 {"APP_NAME": "web-0", "PORT": str(port)})
        )  # fmt: skip
        wait_until(lambda: _connectable(port), 10, "app web-0")
        web, _ = mesh.proxy("web-0", "web", "app=web", app_port=port)
        _, client = mesh.proxy("client-0", "client", "app=client")
        wait_until(lambda: _endpoints(mesh, client) == 1, 15, "the client to see web-0")
        result: dict[str, Any] = {}

        def slow() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", client["outbound"], timeout=20)
            try:
                conn.request("GET", "/slow", headers={"Host": "web.default:9080"})
                response = conn.getresponse()
                result["status"], result["body"] = response.status, response.read()
            finally:
                conn.close()

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.5)  # the request reached the app (it answers after 2 s)
        assert web.popen is not None
        web.popen.send_signal(signal.SIGTERM)
        wait_until(lambda: _endpoints(mesh, client) == 0, 10, "web-0 withdrawn from the client")
        assert web.popen.poll() is None  # ...while it still drains the request in flight
        thread.join(timeout=20)
        assert result.get("status") == 200, result
        assert web.popen.wait(timeout=10) == 0
    finally:
        mesh.close()


def _endpoints(mesh: Mesh, ports: dict[str, int]) -> int:
    dump = mesh.admin(ports, "/config_dump")
    clusters = [c for c in dump["snapshot"]["clusters"] if c["name"] == "web"]
    return len(clusters[0]["endpoints"]) if clusters else 0
