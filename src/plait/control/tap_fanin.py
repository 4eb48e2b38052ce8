"""Tap in the control plane: many proxies' `/tap` streams merged into one, and the busiest
paths and routes aggregated from them.

`tap_stream` follows the taps of every proxy of one service (and proxies of it that connect
later) and yields their records, each tagged with the proxy that saw it. `PathAggregator`
answers `plait top` and `plait stat route`: Istio's metrics carry no path (on purpose: paths
are unbounded), so it taps every proxy while someone is looking, and stops tapping a minute
after the last question: while nobody asks, no proxy pays for a tap.

Ownership: a `tap_stream` owns one reader task per proxy and cancels them however it ends
(client gone, `closing` set). The aggregator owns its reader tasks; `aclose()` ends them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

__all__ = ["PathAggregator", "admin_address", "open_tap", "tap_stream"]

log = logging.getLogger("plait.control.tap")

RESCAN = 5.0  # s: how often a tap looks for new proxies, and sends an idle keep-alive line
MERGE_BUFFER = 10_000  # records queued for one slow client before older ones are dropped
IDLE_STOP = 60.0  # s: the aggregator stops tapping this long after the last question
TOP_WINDOW = 60.0  # s: top and route stats cover the last minute
MAX_RECORDS = 50_000  # records kept by the aggregator (bounded memory under heavy load)

Proxies = Callable[[], list[dict[str, Any]]]


async def open_tap(
    address: str, path: str = "", listener: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The records of one proxy's admin `/tap` until it closes (raises OSError/ValueError
    when it cannot be opened: an unreachable proxy, or one too old to tap)."""
    host, _, port = address.rpartition(":")
    query = urlencode({k: v for k, v in (("path", path), ("listener", listener)) if v})
    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port), limit=1 << 20)
    try:
        writer.write(f"GET /tap?{query} HTTP/1.1\r\nhost: {address}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b""
        if status != b"200":
            raise ValueError(f"{address}/tap answered {status.decode('latin-1') or 'nonsense'}")
        while line := await reader.readline():
            if line.strip():
                yield json.loads(line)
    finally:
        writer.close()


def admin_address(proxy: Mapping[str, Any]) -> str | None:
    """Where to reach a proxy's admin; a wildcard bind is reached on loopback (same host:
    the push server's status does not say which peer address the proxy came from)."""
    admin = (proxy.get("addresses") or {}).get("admin")
    if not admin:
        return None
    host, _, port = str(admin).rpartition(":")
    return f"127.0.0.1:{port}" if host in ("0.0.0.0", "::", "[::]", "") else str(admin)


async def _follow(
    proxy: dict[str, Any], path: str, listener: str | None, out: asyncio.Queue[dict[str, Any]]
) -> bool:
    """Copy one proxy's tap into `out`, tagged with who saw it, until the proxy closes it.
    Returns whether to try again later (not for a proxy that refused the tap)."""
    address = admin_address(proxy)
    if address is None:
        return False
    tag = {
        "proxy": proxy.get("name"),
        "service": proxy.get("service"),
        "namespace": proxy.get("namespace"),
    }
    retry = True
    try:
        async for record in open_tap(address, path, listener):
            _put(out, {**record, **tag})
    except ValueError as exc:  # an answer other than a tap: say so once, do not retry
        _put(out, {"error": f"tap unavailable: {exc}", **tag})
        retry = False
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        log.info("tap of %s ended: %s", proxy.get("name"), exc)
    return retry


def _put(out: asyncio.Queue[dict[str, Any]], record: dict[str, Any]) -> None:
    if out.full():
        out.get_nowait()  # the client is slow: drop the oldest, keep the newest
    out.put_nowait(record)


async def tap_stream(
    proxies: Proxies,
    want: Callable[[dict[str, Any]], bool],
    path: str,
    listener: str | None,
    closing: asyncio.Event,
) -> AsyncGenerator[dict[str, Any] | None, None]:
    """Merged records of every proxy `want` selects; None now and then as a keep-alive.
    Ends when `closing` is set."""
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MERGE_BUFFER)
    followed: dict[str, asyncio.Task[bool]] = {}
    closed = loop.create_task(closing.wait())
    next_scan = 0.0
    try:
        while not closing.is_set():
            if loop.time() >= next_scan:
                for p in proxies():
                    task = followed.get(str(p.get("name")))
                    again = task is None or (task.done() and not task.cancelled() and task.result())
                    if want(p) and again:
                        followed[str(p.get("name"))] = loop.create_task(
                            _follow(p, path, listener, out)
                        )
                next_scan = loop.time() + RESCAN
            if out.empty():  # one wait per batch, not per record
                getter = loop.create_task(out.get())
                try:
                    await asyncio.wait(
                        {getter, closed}, timeout=RESCAN, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:  # also when the client leaves mid-wait (this generator is cancelled)
                    getter.cancel()  # a cancelled get leaves its item in the queue
                    await asyncio.gather(getter, return_exceptions=True)
                if not getter.cancelled():
                    yield getter.result()
                elif out.empty() and not closing.is_set():
                    yield None
            while not out.empty():
                yield out.get_nowait()
    finally:
        for task in [*followed.values(), closed]:
            task.cancel()
        await asyncio.gather(*followed.values(), closed, return_exceptions=True)


# --- aggregation for top and route stats ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the aggregator keeps it."""

    time: float
    key: tuple[str, ...]
    status: int
    duration_ms: float


def _caller(record: dict[str, Any]) -> str:
    """The calling service from a SPIFFE ID (`.../ns/NS/sa/SA` -> SA), or where it came from."""
    peer = record.get("peer_identity") or ""
    if "/sa/" in peer:
        return str(peer.rsplit("/sa/", 1)[1])
    return "unknown"


class PathAggregator:
    """Counts recent requests per path (inbound, where servers see them) and per route
    (outbound and gateway, where callers' routes matched them)."""

    def __init__(self, proxies: Proxies, clock: Callable[[], float] = time.monotonic) -> None:
        self.proxies = proxies
        self.clock = clock
        self.paths: deque[Seen] = deque(maxlen=MAX_RECORDS)
        self.routes: deque[Seen] = deque(maxlen=MAX_RECORDS)
        self.started: float | None = None
        self._asked = 0.0
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def add(self, record: dict[str, Any]) -> None:
        """Fold one tagged tap record in (the pure part, also used by tests)."""
        if "status" not in record:
            return  # an error or a count of dropped records, not a request
        now = self.clock()
        status = int(record.get("status") or 0)
        duration = float(record.get("duration_ms") or 0.0)
        key: tuple[str, ...]
        if record.get("listener") == "inbound":
            path = str(record.get("path", "")).split("?", 1)[0]
            destination = f"{record.get('service')}"
            key = (_caller(record), destination, str(record.get("method", "")), path)
            self.paths.append(Seen(now, key, status, duration))
        elif record.get("route"):
            cluster = str(record.get("upstream_cluster") or "-").split(".", 1)[0]
            key = (str(record["route"]), cluster)
            self.routes.append(Seen(now, key, status, duration))

    def ask(self) -> float:
        """Note a question; start tapping if not yet. Returns seconds collected so far."""
        now = self.clock()
        self._asked = now
        if self._task is None or self._task.done():
            self._closing.clear()
            self.started = now
            self._task = asyncio.get_running_loop().create_task(self._collect())
        return now - (self.started or now)

    async def _collect(self) -> None:
        stream = tap_stream(self.proxies, lambda p: True, "", None, self._closing)
        try:
            async for record in stream:
                if self.clock() - self._asked > IDLE_STOP:
                    break
                if record is not None:
                    self.add(record)
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        self._closing.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def top(self, window: float = TOP_WINDOW, limit: int = 50) -> list[dict[str, Any]]:
        """The busiest paths of the last `window` seconds, busiest first."""
        names = ("source", "destination", "method", "path")
        return self._table(self.paths, names, window)[:limit]

    def route_stats(self, window: float = TOP_WINDOW) -> list[dict[str, Any]]:
        rows = self._table(self.routes, ("name", "service"), window)
        return sorted(rows, key=lambda r: (r["name"], r["service"]))

    def _table(
        self, seen: deque[Seen], names: tuple[str, ...], window: float
    ) -> list[dict[str, Any]]:
        now = self.clock()
        span = min(window, now - (self.started or now))
        groups: dict[tuple[str, ...], list[Seen]] = {}
        for s in seen:
            if now - s.time <= window:
                groups.setdefault(s.key, []).append(s)
        rows = []
        for key, items in groups.items():
            durations = sorted(s.duration_ms for s in items)
            ok = sum(0 < s.status < 500 for s in items)
            rows.append(
                {
                    **dict(zip(names, key, strict=True)),
                    "count": len(items),
                    "rps": len(items) / span if span > 0 else 0.0,
                    "success": ok / len(items),
                    "best": durations[0],
                    "worst": durations[-1],
                    "last": items[-1].duration_ms,
                    "p50": _exact_quantile(durations, 0.5),
                    "p95": _exact_quantile(durations, 0.95),
                    "p99": _exact_quantile(durations, 0.99),
                }
            )
        return sorted(rows, key=lambda r: (-r["count"], *(r[n] for n in names)))


def _exact_quantile(ordered: list[float], q: float) -> float | None:
    """A quantile of the exact durations (nearest rank; tap keeps every duration)."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
