"""The plait pair, set up as a user would: a real control plane, resources applied through
its API, and two proxies that join with tokens and get their certificates and snapshots
pushed.

    wrk --Host: web--> client-0 (outbound) --mTLS--> web-0 (inbound) --> nginx

What is on is what plait ships: routing through a GAMMA HTTPRoute, LEAST_REQUEST balancing
(the default), the proxy's metrics, authorization (no policy: allow), and access logs at the
default sampling (`--access-log-sample` is not passed) written to a file in the run's
directory (a file, not a pipe, so the reader of a pipe cannot slow the proxy down).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from typing import Any, ClassVar

from bench.net import free_port, wait_until
from bench.systems import System, Target

__all__ = ["PlaitPair"]

RESOURCES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web, namespace: default}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{name: web, port: 80}]
"""


class PlaitPair(System):
    name = "plait"
    label = "plait pair"
    resources: ClassVar[str] = RESOURCES  # what is applied (bench/grpc_h2.py: protocol grpc)

    def start(self) -> Target:
        self.data = self.workdir / "control"
        self.api = free_port()
        push = free_port()
        self.procs.spawn(
            "control",
            [
                sys.executable,
                "-m",
                "plait",
                "control",
                f"--data-dir={self.data}",
                f"--api=127.0.0.1:{self.api}",
                f"--push=127.0.0.1:{push}",
            ],
        )
        wait_until(self._control_up, 20, "the plait control plane")
        self.admin_token = (self.data / "admin-token").read_text().strip()
        self._call("POST", "/api/v1/apply", self.resources.encode(), "application/yaml")

        self.ports = {k: free_port() for k in ("out", "client_admin", "in", "server_admin")}
        common = [
            sys.executable,
            "-m",
            "plait",
            "proxy",
            f"--control=127.0.0.1:{push}",
            f"--ca-bundle={self.data / 'trust-bundle.pem'}",
        ]
        self._server = self._proxy(
            "web-0",
            common
            + [
                "--service=web",
                "--labels=app=web",
                f"--inbound=127.0.0.1:{self.ports['in']}",
                f"--app=127.0.0.1:{self.upstream_port}",
                # Its own outbound port, unused: the default 15001 may be taken.
                f"--outbound=127.0.0.1:{free_port()}",
                f"--admin=127.0.0.1:{self.ports['server_admin']}",
            ],
            "web",
        )
        self._client = self._proxy(
            "client-0",
            common
            + [
                "--service=client",
                f"--outbound=127.0.0.1:{self.ports['out']}",
                f"--admin=127.0.0.1:{self.ports['client_admin']}",
            ],
            "client",
        )
        for admin in (self.ports["server_admin"], self.ports["client_admin"]):
            self.wait_answering(admin, "/ready", timeout=30)
        wait_until(self._synced, 30, "both proxies synced in /api/v1/proxies")
        target = Target(self.ports["out"], "web")
        self.wait_answering(target.port, "/", target.host)
        return target

    def _proxy(self, name: str, argv: list[str], service: str) -> subprocess.Popen[bytes]:
        token = self._call(
            "POST",
            "/api/v1/tokens",
            json.dumps({"service": service, "namespace": "default"}).encode(),
            "application/json",
        )["token"]
        argv = argv + [
            f"--name={name}",
            f"--state-dir={self.workdir / (name + '.state')}",
            f"--access-log={self.workdir / (name + '.access.log')}",
        ]
        return self.procs.spawn(name, argv, {"PLAIT_JOIN_TOKEN": token})

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str = "") -> Any:
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        if ctype:
            headers["Content-Type"] = ctype
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api}{path}", data=body, method=method, headers=headers
        )
        with urllib.request.urlopen(req, timeout=10) as response:
            return json.loads(response.read())

    def _control_up(self) -> bool:
        self.procs.check_alive()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api}/healthz", timeout=1):
                return (self.data / "admin-token").exists()
        except OSError:
            return False

    def _synced(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api}/healthz", timeout=2) as r:
            revision = json.loads(r.read())["revision"]
        proxies = self._call("GET", "/api/v1/proxies")
        names = {p["name"] for p in proxies}
        return {"web-0", "client-0"} <= names and all(
            p["synced"] and p["compiled_revision"] >= revision for p in proxies
        )

    def proxies(self) -> dict[str, int]:
        return {"client": self._client.pid, "server": self._server.pid}
