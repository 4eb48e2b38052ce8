"""Admin listener (default 15000): `/ready`, `/config_dump`, `/stats`, `/clusters`.

Not on the hot path, so it uses asyncio streams and reads one small request per connection.
`/stats` is Envoy-style text (`listener.outbound.downstream_rq_total: 12`);
`/stats?format=json` is `{"listeners": {...}, "hosts": [...]}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from plait.proxy.tap import TapHub, serve_tap

__all__ = ["AdminServer"]

MAX_REQUEST = 16 * 1024


class AdminServer:
    """Serves read-only views of a running proxy; `ready` says whether listeners are up."""

    def __init__(
        self,
        ready: Callable[[], bool],
        stats: Callable[[], dict[str, Any]],
        config_dump: Callable[[], dict[str, Any]],
        prometheus: Callable[[], bytes] | None = None,
        tap: TapHub | None = None,
        metrics_only: bool = False,
    ) -> None:
        self._tap = tap
        # The Prometheus port (15090) serves only metrics: scrapers need no config dumps or taps.
        self._metrics_only = metrics_only
        self._ready = ready
        self._stats = stats
        self._config_dump = config_dump
        self._prometheus = prometheus

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            writer.close()
            return
        line = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        path = line[1] if len(line) >= 2 else "/"
        if self._tap is not None and not self._metrics_only and path.partition("?")[0] == "/tap":
            await serve_tap(self._tap, path.partition("?")[2], reader, writer)  # until they go
            return
        status, content_type, body = self.respond(line[0], path)
        writer.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, b"OK" if status == 200 else b"Error", content_type.encode(), len(body))
            + body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def respond(self, method: str, target: str) -> tuple[int, str, bytes]:
        path, _, query = target.partition("?")
        if self._metrics_only and path != "/stats/prometheus":
            return 404, "text/plain", b"only /stats/prometheus is served here\n"
        if path == "/ready":
            ok = self._ready()
            return (200 if ok else 503), "text/plain", b"LIVE\n" if ok else b"NOT READY\n"
        if path == "/config_dump":
            return 200, "application/json", _json(self._config_dump())
        if path == "/stats":
            stats = self._stats()
            if "format=json" in query:
                return 200, "application/json", _json(stats)
            return 200, "text/plain", _stats_text(stats)
        if path == "/stats/prometheus" and self._prometheus is not None:
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._prometheus()
        if path == "/clusters":
            return 200, "application/json", _json(self._stats()["hosts"])
        if path == "/":
            return (
                200,
                "text/plain",
                b"/ready\n/config_dump\n/stats\n/stats?format=json\n/stats/prometheus\n/clusters\n",
            )
        return 404, "text/plain", b"not found\n"


def _json(data: Any) -> bytes:
    return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"


def _stats_text(stats: dict[str, Any]) -> bytes:
    lines = []
    for listener, counters in sorted(stats["listeners"].items()):
        for name, value in sorted(counters.items()):
            lines.append(f"listener.{listener}.{name}: {value}")
    for host in stats.get("hosts", []):
        for name, value in sorted(host.items()):
            if name != "address":
                lines.append(f"host.{host['address']}.{name}: {value}")
    return ("\n".join(lines) + "\n").encode()
