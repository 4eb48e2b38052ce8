"""The telemetry service: scrapes every connected proxy into the roll-up, and keeps the
Prometheus file_sd target file (`<data-dir>/prometheus-targets.json`) current.

Every 2 s: the push server's proxy list -> one `GET /stats/prometheus` per proxy admin
(at most 16 at once, 1 s each; a slow or dead proxy misses a round, its increments arrive
with its next good scrape) -> `Rollup.ingest`. The file_sd file is rewritten (atomically)
only when the set of proxies changes.

Owns: the scrape task (`start` / `aclose`) and the path aggregator (`plait top`, which taps
proxies only while someone asks). `closing` is set by `aclose()` so long-lived tap streams
end before the API server stops (uvicorn waits for open responses).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait.control.tap_fanin import PathAggregator, admin_address
from plait.control.telemetry import UNKNOWN, ProxyInfo, Rollup, Series, SeriesKey, proxy_series

__all__ = ["ScrapeState", "Telemetry", "file_sd_targets", "http_get"]

log = logging.getLogger("plait.control.telemetry")

SCRAPE_INTERVAL = 2.0  # s: fresh enough to watch a rollout, cheap for the proxies (one render)
SCRAPE_TIMEOUT = 1.0  # s: a proxy slower than this to render is skipped for one round
SCRAPE_CONCURRENCY = 16  # connections in flight at once: bounded work on both sides
MAX_SCRAPE_BYTES = 32 << 20  # 32 MiB: far above a real proxy's exposition
FILE_SD_NAME = "prometheus-targets.json"


def file_sd_targets(proxies: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Prometheus file_sd groups: one per proxy, its admin address and who it is."""
    groups = []
    for p in proxies:
        admin = admin_address(p)
        if admin is None:
            continue
        labels = {
            "service": str(p.get("service") or UNKNOWN),
            "namespace": str(p.get("namespace") or "default"),
            "workload": str(p.get("name") or UNKNOWN),
            "__metrics_path__": "/stats/prometheus",
        }
        groups.append({"targets": [admin], "labels": labels})
    return sorted(groups, key=lambda g: (g["labels"]["workload"], g["targets"][0]))


@dataclass(slots=True)
class ScrapeState:
    """The last scrape of one proxy: when, whether it worked, the plait gauges it showed."""

    time: float = 0.0
    error: str | None = None
    gauges: dict[str, float] = field(default_factory=dict)


class Telemetry:
    """Scrapes every connected proxy every `interval` seconds into a `Rollup`.

    `proxies()` is the push server's status. Owns one task (the loop; each round's scrapes
    are awaited inside it), started by `start()` and cancelled and awaited by `aclose()`."""

    def __init__(
        self,
        proxies: Callable[[], list[dict[str, Any]]],
        data_dir: Path | None = None,
        interval: float = SCRAPE_INTERVAL,
        timeout: float = SCRAPE_TIMEOUT,
        concurrency: int = SCRAPE_CONCURRENCY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.proxies = proxies
        self.rollup = Rollup()
        self.scrapes: dict[str, ScrapeState] = {}
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.closing = asyncio.Event()
        self.paths = PathAggregator(proxies)
        self._limit = asyncio.Semaphore(concurrency)
        self._sd_path = data_dir / FILE_SD_NAME if data_dir is not None else None
        self._sd_written: list[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._write_file_sd([])  # Prometheus can start before the first proxy connects
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        self.closing.set()
        await self.paths.aclose()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.scrape_round()
            except Exception:  # noqa: BLE001 - one bad round must not end the roll-up
                log.exception("telemetry round failed")
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    async def scrape_round(self) -> None:
        """Scrape every proxy once, concurrently, and fold the results into the roll-up."""
        status = self.proxies()
        self._write_file_sd(file_sd_targets(status))
        targets = {
            str(p["name"]): address for p in status if (address := admin_address(p)) is not None
        }
        names = list(targets)
        texts = await asyncio.gather(*(self._scrape(targets[n]) for n in names))
        now = self.clock()
        scrapes: dict[str, dict[SeriesKey, Series] | None] = {}
        for name, (text, error) in zip(names, texts, strict=True):
            state = self.scrapes.setdefault(name, ScrapeState())
            state.time, state.error = now, error
            if text is None:
                scrapes[name] = None
                continue
            scrapes[name], state.gauges = proxy_series(text)
        for gone in set(self.scrapes) - set(targets):
            del self.scrapes[gone]
        meshed = frozenset(str(p["identity"]) for p in status if p.get("identity"))
        self.rollup.ingest(now, scrapes, meshed)

    async def _scrape(self, address: str) -> tuple[str | None, str | None]:
        """(text, None) or (None, why): one GET /stats/prometheus, 1 s at most."""
        async with self._limit:
            try:
                async with asyncio.timeout(self.timeout):
                    status, body = await http_get(address, "/stats/prometheus")
            except (OSError, TimeoutError, ValueError) as exc:
                return None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if status != 200:
            return None, f"HTTP {status}"
        return body.decode("utf-8", "replace"), None

    def proxy_infos(self) -> list[ProxyInfo]:
        return [
            ProxyInfo(
                str(p["name"]),
                f"{p.get('namespace') or 'default'}/{p.get('service') or UNKNOWN}",
                "gateway" in (p.get("addresses") or {}),
            )
            for p in self.proxies()
        ]

    def _write_file_sd(self, groups: list[dict[str, Any]]) -> None:
        if self._sd_path is None or groups == self._sd_written:
            return
        tmp = self._sd_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(groups, indent=2) + "\n")
            os.replace(tmp, self._sd_path)  # atomic: Prometheus never reads half a file
        except OSError as exc:
            log.warning("cannot write %s: %s", self._sd_path, exc)
            return
        self._sd_written = groups


async def http_get(address: str, target: str, limit: int = MAX_SCRAPE_BYTES) -> tuple[int, bytes]:
    """A one-shot HTTP/1.1 GET to a proxy's admin (it always closes after one response)."""
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port), limit=1 << 16)
    chunks: list[bytes] = []
    size = 0
    try:
        writer.write(
            f"GET {target} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n".encode()
        )
        while data := await reader.read(1 << 16):
            size += len(data)
            if size > limit:
                raise ValueError(f"response over {limit} bytes")
            chunks.append(data)
    finally:
        writer.close()
    raw = b"".join(chunks)
    head, sep, body = raw.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if not sep or len(parts) < 2 or not parts[1].isdigit():
        raise ValueError("not an HTTP response")
    return int(parts[1]), body
