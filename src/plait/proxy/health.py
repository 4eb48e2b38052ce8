"""Health of the local app, checked by its proxy and reported to the control plane.

A TCP connect, or an HTTP GET of a path expecting a 2xx/3xx (Kubernetes probe semantics).
Two failures in a row make the app unhealthy (one lost SYN must not withdraw an endpoint);
one success makes it healthy again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["AppHealthCheck"]

FAILURES_TO_UNHEALTHY = 2


class AppHealthCheck:
    """Owns nothing but its state; its owner runs `run()` as a task and cancels it."""

    def __init__(
        self,
        address: tuple[str, int],
        http_path: str | None = None,
        interval: float = 1.0,
        timeout: float = 1.0,
    ) -> None:
        self.address = address
        self.http_path = http_path
        self.interval = interval
        self.timeout = timeout
        self.status = "unknown"
        self._failures = 0
        # Called with the new status on every change (the agent reports it at once).
        self.on_change: Callable[[str], None] | None = None

    async def run(self) -> None:
        while True:
            ok = await self.check_once()
            before = self.status
            if ok:
                self._failures = 0
                self.status = "healthy"
            else:
                self._failures += 1
                if self._failures >= FAILURES_TO_UNHEALTHY or self.status == "unknown":
                    self.status = "unhealthy"
            if self.status != before and self.on_change is not None:
                self.on_change(self.status)
            await asyncio.sleep(self.interval)

    async def check_once(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(*self.address)
                try:
                    if self.http_path is None:
                        return True
                    host = f"{self.address[0]}:{self.address[1]}"
                    writer.write(
                        f"GET {self.http_path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: plait-health\r\n"
                        "Connection: close\r\n\r\n".encode()
                    )
                    status_line = await reader.readline()
                    parts = status_line.split()
                    return len(parts) >= 2 and parts[1][:1] in (b"2", b"3")
                finally:
                    writer.close()
        except (OSError, TimeoutError, ValueError):
            return False
