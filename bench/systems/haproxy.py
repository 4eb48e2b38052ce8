"""The HAProxy pair: two HAProxy 2.6 processes (Debian's), `nbthread 1` each, mTLS between.

Configs are bench/haproxy/client.cfg and server.cfg; `-db` keeps each in the foreground
(no daemon, no master process), so the pid we hold is the one doing the work.
"""

from __future__ import annotations

import shutil

from bench.net import free_port
from bench.systems import System, Target
from bench.templates import render

__all__ = ["HaproxyPair"]


class HaproxyPair(System):
    name = "haproxy"
    label = "HAProxy pair"

    def start(self) -> Target:
        client_svid, server_svid = self.pki.issue("client"), self.pki.issue("web")
        listen, server_port = free_port(), free_port()
        server = render(
            "haproxy/server.cfg",
            self.workdir / "server.cfg",
            listen_port=server_port,
            app_port=self.upstream_port,
            combined=server_svid.combined,
            bundle=self.pki.bundle,
        )
        client = render(
            "haproxy/client.cfg",
            self.workdir / "client.cfg",
            listen_port=listen,
            server_port=server_port,
            combined=client_svid.combined,
            bundle=self.pki.bundle,
        )
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self._server = self.procs.spawn("haproxy-server", [haproxy, "-db", "-f", str(server)])
        self._client = self.procs.spawn("haproxy-client", [haproxy, "-db", "-f", str(client)])
        target = Target(listen, "web")
        self.wait_answering(target.port, "/", target.host)
        return target

    def proxies(self) -> dict[str, int]:
        return {"client": self._client.pid, "server": self._server.pid}
