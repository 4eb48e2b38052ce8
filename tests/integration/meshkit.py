"""A small kit for integration tests of a dynamic mesh: real `plait control`, real proxies,
tiny real apps, all subprocesses on loopback, all stopped by `Mesh.close()`."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

APP = r"""
import os, sys, json, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
NAME = os.environ["APP_NAME"]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536  # one send per response: no Nagle/delayed-ACK stall between head and body
    def log_message(self, *a): pass
    def do_GET(self):
        if "sleep_ms=" in self.path:  # hold the request: tests that need one in flight
            time.sleep(int(self.path.split("sleep_ms=")[1].split("&")[0]) / 1000)
        headers = [[k.lower(), v] for k, v in self.headers.items()]
        body = json.dumps({"name": NAME, "path": self.path, "headers": headers}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_POST = do_GET
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def http_json(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5,
) -> Any:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read())


class Reply:
    """An HTTP response as `send_request` read it."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        flags = self.headers.get("x-plait-response-flags")
        return f"Reply({self.status}, {flags!r}, {self.body[:200]!r})"


def send_request(
    port: int,
    target: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    timeout: float = 5,
) -> Reply:
    """One HTTP/1.1 request to 127.0.0.1:port with the target sent exactly as given (no
    normalization of `//admin` or `/./admin`, as httpx and urllib would do)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for name, value in {"host": "localhost", **(headers or {})}.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        body = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        conn.close()


class Proc:
    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log = log
        self.env = {**os.environ, **(env or {})}
        self.popen: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        p = self.popen
        if p is None or p.poll() is not None:
            return
        p.send_signal(sig)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        """The end of its log, for a failure message."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"


class Mesh:
    """A control plane and the proxies and apps a test adds to it."""

    def __init__(
        self, tmp: Path, grace: float = 3.0, control_args: list[str] | None = None
    ) -> None:
        self.tmp = tmp
        self.api_port = free_port()
        self.push_port = free_port()
        self.grace = grace
        # Extra `plait control` flags, e.g. ["--cert-ttl", "6"] for short-lived certificates.
        self.control_args = list(control_args or [])
        self.procs: list[Proc] = []
        self.control = self._control()
        wait_until(self._control_ready, 15, "the control plane")
        self.token = (tmp / "control" / "admin-token").read_text().strip()

    def _control(self) -> Proc:
        proc = Proc(
            [
                sys.executable,
                "-m",
                "plait",
                "control",
                f"--data-dir={self.tmp / 'control'}",
                f"--api=127.0.0.1:{self.api_port}",
                f"--push=127.0.0.1:{self.push_port}",
                f"--grace={self.grace}",
                *self.control_args,
            ],
            self.tmp / "control.log",
        )
        self.procs.append(proc)
        return proc

    def restart_control(self) -> None:
        self.control = self._control()
        wait_until(self._control_ready, 15, "the control plane")

    def _control_ready(self) -> bool:
        try:
            http_json(f"{self.api}/healthz", timeout=1)
            return True
        except (OSError, ValueError):
            return False

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def apply(self, yaml_text: str) -> dict[str, Any]:
        result: dict[str, Any] = http_json(
            f"{self.api}/api/v1/apply",
            "POST",
            yaml_text.encode(),
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/yaml"},
        )
        return result

    def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        req = urllib.request.Request(
            f"{self.api}/api/v1/resources/{kind}/{namespace}/{name}",
            method="DELETE",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=5):
            pass

    def proxies(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = http_json(f"{self.api}/api/v1/proxies")
        return result

    def converged(self, names: set[str] | None = None) -> bool:
        try:
            revision = http_json(f"{self.api}/healthz")["revision"]
            proxies = self.proxies()
        except (OSError, ValueError):
            return False
        if names is not None and not names <= {p["name"] for p in proxies}:
            return False
        return all(p["synced"] and p["compiled_revision"] >= revision for p in proxies)

    def app(self, name: str) -> tuple[Proc, int]:
        port = free_port()
        proc = Proc(
            [sys.executable, "-c", APP],
            self.tmp / f"{name}.app.log",
            {"APP_NAME": name, "PORT": str(port)},
        )
        self.procs.append(proc)
        wait_until(lambda: _connectable(port), 10, f"app {name}")
        return proc, port

    @property
    def bundle(self) -> Path:
        return self.tmp / "control" / "trust-bundle.pem"

    def join_token(self, service: str, namespace: str = "default", ttl: int | None = None) -> str:
        request: dict[str, Any] = {"service": service, "namespace": namespace}
        if ttl is not None:
            request["ttlSeconds"] = ttl
        reply = http_json(
            f"{self.api}/api/v1/tokens",
            "POST",
            json.dumps(request).encode(),
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        return str(reply["token"])

    def proxy(
        self,
        name: str,
        service: str,
        labels: str = "",
        app_port: int | None = None,
        extra: list[str] | None = None,
        token: str | None = None,
        wait: bool = True,
        namespace: str = "default",
    ) -> tuple[Proc, dict[str, int]]:
        """A proxy for `service`, with a fresh join token unless `token` is given; waits until
        it is ready unless `wait` is False."""
        ports = {k: free_port() for k in ("outbound", "inbound", "admin")}
        argv = [
            sys.executable,
            "-m",
            "plait",
            "proxy",
            f"--control=127.0.0.1:{self.push_port}",
            f"--ca-bundle={self.bundle}",
            f"--state-dir={self.tmp / (name + '.state')}",
            f"--name={name}",
            f"--cache={self.tmp / (name + '.snapshot.json')}",
            f"--outbound=127.0.0.1:{ports['outbound']}",
            f"--inbound=127.0.0.1:{ports['inbound']}",
            f"--admin=127.0.0.1:{ports['admin']}",
            "--access-log=off",
            f"--service={service}",
        ]
        if namespace != "default":
            argv.append(f"--namespace={namespace}")
        if labels:
            argv.append(f"--labels={labels}")
        if app_port is not None:
            argv.append(f"--app=127.0.0.1:{app_port}")
        argv += extra or []
        join = self.join_token(service, namespace) if token is None else token
        proc = Proc(argv, self.tmp / f"{name}.proxy.log", {"PLAIT_JOIN_TOKEN": join})
        self.procs.append(proc)
        if wait:
            try:
                wait_until(lambda: _ready(ports["admin"]), 15, f"proxy {name} ready")
            except AssertionError as exc:
                exit_code = proc.popen.poll() if proc.popen is not None else None
                raise AssertionError(
                    f"{exc} (exit code {exit_code}); its log ends:\n{proc.log_tail()}"
                ) from None
        return proc, ports

    def is_ready(self, ports: dict[str, int]) -> bool:
        """Whether the proxy with these ports answers 200 on its admin `/ready`."""
        return _ready(ports["admin"])

    def admin(self, ports: dict[str, int], path: str) -> Any:
        """A proxy's admin JSON: `/config_dump`, `/stats?format=json`, `/clusters`."""
        return http_json(f"http://127.0.0.1:{ports['admin']}{path}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()


def _connectable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
            return r.status == 200
    except (OSError, urllib.error.HTTPError):
        return False
