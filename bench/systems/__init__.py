"""The systems under test, one module each, all with the same shape.

A `System` starts its processes in `start()` (returning where the load generator sends
traffic: a port and the Host header), names its proxy processes for the memory figures in
`proxies()`, and stops everything it started in `close()` (also on failure, as a context
manager). Every system forwards to the same upstream nginx, so the only difference between
two rows of a table is the path in between:

    direct    client -> nginx
    plait     client -> plait outbound -> mTLS -> plait inbound -> nginx
    envoy     client -> Envoy          -> mTLS -> Envoy          -> nginx
    haproxy   client -> HAProxy        -> mTLS -> HAProxy        -> nginx

Each proxy gets one worker/thread, so figures compare per core.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from bench.net import answers_200, wait_until
from bench.pki import Pki
from bench.procs import Processes

__all__ = ["System", "Target", "all_systems"]


@dataclass(frozen=True)
class Target:
    """Where clients send requests: 127.0.0.1:`port` with `Host: host` (None: nginx's own)."""

    port: int
    host: str | None = None


class System(ABC):
    """One system under test; owns its processes (`close()` stops them)."""

    name: ClassVar[str]  # short key: direct, plait, envoy, haproxy
    label: ClassVar[str]  # for tables: "plait pair"

    def __init__(self, workdir: Path, upstream_port: int, pki: Pki) -> None:
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.upstream_port = upstream_port
        self.pki = pki
        self.procs = Processes(self.workdir)

    @abstractmethod
    def start(self) -> Target:
        """Start every process; return once a request through the system answers 200."""

    def wait_answering(
        self, port: int, path: str = "/", host: str | None = None, timeout: float = 20.0
    ) -> None:
        """Until 127.0.0.1:`port` answers 200; fails at once, with its log, if a child exits."""

        def check() -> bool:
            self.procs.check_alive()
            return answers_200(port, path, host)

        wait_until(check, timeout, f"a 200 from 127.0.0.1:{port}{path} ({self.label})")

    def proxies(self) -> dict[str, int]:
        """Proxy processes by role ("client", "server") -> pid; empty for direct."""
        return {}

    def close(self) -> None:
        self.procs.close()

    def __enter__(self) -> System:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def all_systems() -> dict[str, type[System]]:
    """In the order they run."""
    from bench.systems.direct import Direct
    from bench.systems.envoy import EnvoyPair
    from bench.systems.haproxy import HaproxyPair
    from bench.systems.plait import PlaitPair

    return {s.name: s for s in (Direct, PlaitPair, EnvoyPair, HaproxyPair)}
