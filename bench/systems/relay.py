"""The bare relay pair (bench/relay.py): the ceiling a Python pair can reach here.

    wrk -> relay --mTLS (or plain)--> relay -> nginx

Not one of `make bench`'s systems: `python -m bench.cpu_per_request --relay` measures it
beside plait (and `--haproxy`), so the figure issue 6's target rests on is checked on the
machine that runs the benchmark.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from bench.net import free_port
from bench.systems import System, Target

__all__ = ["PlainRelayPair", "RelayPair"]

REPO = Path(__file__).resolve().parents[2]  # holds `bench`, whatever the working directory


class RelayPair(System):
    name = "relay"
    label = "bare relay pair (mTLS)"
    plain = False

    def start(self) -> Target:
        self.pki.issue("client")
        self.pki.issue("web")
        listen, server_port = free_port(), free_port()
        extra = ["--plain"] if self.plain else []
        relay = [sys.executable, "-m", "bench.relay"]
        pki = str(self.pki.directory)
        env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        }
        self._server = self.procs.spawn(
            "relay-server",
            [*relay, "server", str(server_port), str(self.upstream_port), pki, *extra],
            env,
        )
        self._client = self.procs.spawn(
            "relay-client", [*relay, "client", str(listen), str(server_port), pki, *extra], env
        )
        target = Target(listen, "web")
        self.wait_answering(target.port, "/", target.host)
        return target

    def proxies(self) -> dict[str, int]:
        return {"client": self._client.pid, "server": self._server.pid}


class PlainRelayPair(RelayPair):
    name = "relay-plain"
    label = "bare relay pair (no TLS)"
    plain = True
