"""Direct: the client talks to nginx itself. The baseline every added latency is over."""

from __future__ import annotations

from bench.systems import System, Target

__all__ = ["Direct"]


class Direct(System):
    name = "direct"
    label = "direct (no proxy)"

    def start(self) -> Target:
        return Target(self.upstream_port)
