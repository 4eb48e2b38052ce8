"""Tap: a live stream of the requests passing this proxy, served at admin `GET /tap`.

Metadata only, never bodies: time, listener, method, authority, path, status, response
flags, duration, upstream host, peer identity, request id and the request headers (the
values of credential headers are replaced by `REDACTED` here, so no secret leaves the proxy).

Cost: the listener calls `publish` only when `hub.subscribers` is non-empty, so with nobody
tapping a request pays one attribute check. With tappers, a record is one dict per request;
each tapper has a bounded buffer and a slow tapper loses records (counted, and reported to
it as `{"dropped": N}`) rather than slowing requests or growing memory.

`serve_tap` owns one admin connection: it subscribes, writes NDJSON batches as records
arrive, and ends (unsubscribing) when the client disconnects or the hub closes.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from plait.proxy.downstream import Stream

__all__ = ["LISTENERS", "Subscription", "TapHub", "serve_tap", "stream_record"]

LISTENERS = ("inbound", "outbound", "gateway")
BUFFER = 1000  # records held per tapper between writes; beyond this they are dropped
KEEPALIVE = 15.0  # s: an idle tap writes an empty line so dead peers are noticed
REDACTED_HEADERS = frozenset(
    {b"authorization", b"proxy-authorization", b"cookie", b"set-cookie", b"x-api-key"}
)


class Subscription:
    """One tapper: its filter, the records waiting for it, how many it lost."""

    __slots__ = ("path_prefix", "listener", "pending", "dropped", "limit", "_wake")

    def __init__(self, path_prefix: str = "", listener: str | None = None, limit: int = BUFFER):
        self.path_prefix = path_prefix
        self.listener = listener
        self.pending: list[dict[str, Any]] = []
        self.dropped = 0
        self.limit = limit
        self._wake = asyncio.Event()

    def offer(self, record: dict[str, Any]) -> None:
        if self.listener is not None and record["listener"] != self.listener:
            return
        if self.path_prefix and not record["path"].startswith(self.path_prefix):
            return
        if len(self.pending) >= self.limit:
            self.dropped += 1
            return
        self.pending.append(record)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def wait(self) -> None:
        await self._wake.wait()
        self._wake.clear()

    def take(self) -> tuple[list[dict[str, Any]], int]:
        """The records waiting and the count dropped since the last take."""
        records, dropped = self.pending, self.dropped
        self.pending, self.dropped = [], 0
        return records, dropped


class TapHub:
    """The proxy's tappers. One per proxy, shared by its listeners and the admin server."""

    __slots__ = ("subscribers", "closed")

    def __init__(self) -> None:
        self.subscribers: list[Subscription] = []
        self.closed = False

    def subscribe(self, path_prefix: str = "", listener: str | None = None) -> Subscription:
        sub = Subscription(path_prefix, listener)
        self.subscribers = [*self.subscribers, sub]  # copy: publish may be iterating
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.subscribers = [s for s in self.subscribers if s is not sub]

    def publish(self, record: dict[str, Any]) -> None:
        if not self.subscribers:
            return
        for sub in self.subscribers:
            sub.offer(record)

    def close(self) -> None:
        """End every tap stream (the proxy is stopping)."""
        self.closed = True
        for sub in self.subscribers:
            sub.wake()


class _Stamp:
    """RFC 3339 times with milliseconds; the seconds part is formatted once per second."""

    __slots__ = ("second", "text")

    def __init__(self) -> None:
        self.second = -1
        self.text = ""

    def __call__(self, wall: float) -> str:
        second = int(wall)
        if second != self.second:
            self.second = second
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        return f"{self.text}{int((wall - second) * 1000):03d}Z"


_stamp = _Stamp()


def stream_record(listener: str, stream: Stream, duration: float) -> dict[str, Any]:
    """The tap record of a finished stream; `duration` in seconds (the listener's clock).
    About 5 us: paid only while someone taps this proxy."""
    head = stream.head
    host = stream.host
    cluster = stream.cluster
    return {
        "time": _stamp(time.time() - duration),  # when the request started
        "listener": listener,
        "method": head.method.decode("latin-1"),
        "authority": stream.authority.decode("latin-1"),
        "path": stream.path.decode("latin-1"),
        "status": stream.status,
        "response_flags": stream.flags or "-",
        "duration_ms": round(duration * 1000, 3),
        "upstream_host": host.label if host is not None else None,
        "upstream_cluster": f"{cluster.name}.{cluster.namespace}" if cluster else None,
        "route": stream.route or None,
        "peer_identity": stream.down.peer_id or None,
        "downstream_peer": stream.down.peer,
        "request_id": stream.request_id.decode("latin-1") or None,
        "request_headers": [  # names are lower case: the codecs lower them
            (n.decode("latin-1"), "REDACTED" if n in REDACTED_HEADERS else v.decode("latin-1"))
            for n, v in head.headers
        ],
        "bytes_received": stream.bytes_received,
        "bytes_sent": stream.bytes_sent,
    }


def _bad_request(writer: asyncio.StreamWriter, reason: str) -> None:
    body = (reason + "\n").encode()
    writer.write(
        b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (len(body), body)
    )


async def serve_tap(
    hub: TapHub, query: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer `GET /tap?path=PREFIX&listener=inbound|outbound|gateway` with NDJSON until the
    client goes away; the response is delimited by closing the connection."""
    params = parse_qs(query)
    prefix = params.get("path", [""])[0]
    listener = params.get("listener", [None])[0] or None
    if listener is not None and listener not in LISTENERS:
        _bad_request(writer, f"listener must be one of {', '.join(LISTENERS)}")
        writer.close()
        return
    sub = hub.subscribe(prefix, listener)
    loop = asyncio.get_running_loop()
    eof = loop.create_task(reader.read(1))  # the client never sends more: data or EOF ends it
    try:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
            b"cache-control: no-store\r\nconnection: close\r\n\r\n"
        )
        while not eof.done() and not hub.closed:
            woke = loop.create_task(sub.wait())
            try:
                await asyncio.wait(
                    {woke, eof}, timeout=KEEPALIVE, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                woke.cancel()
            records, dropped = sub.take()
            lines = [json.dumps(r, separators=(",", ":")) for r in records]
            if dropped:
                lines.append(json.dumps({"dropped": dropped}))
            writer.write(("\n".join(lines) + "\n").encode() if lines else b"\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        hub.unsubscribe(sub)
        eof.cancel()
        writer.close()
