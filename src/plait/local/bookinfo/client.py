"""Outgoing JSON calls from one app to another, direct or through the mesh's HTTP_PROXY.

Through a proxy the request target is absolute-form (``GET http://reviews:9080/reviews/0``,
RFC 9112 §3.2.2) and Host names the destination service, which is how the sidecar's outbound
listener learns where the call goes. Idle keep-alive connections are pooled per address and
shared by the handler threads; a ``Client`` lives as long as its app.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from http.client import HTTPConnection, HTTPException, RemoteDisconnected
from typing import Any
from urllib.parse import urlsplit

MAX_IDLE_PER_ADDRESS = 8  # the demo's fan-out is 1-2 calls per request; more idle sockets waste fds

Address = tuple[str, int]


class UpstreamError(Exception):
    """An outgoing call failed: no connection, a timeout, a non-2xx status or a non-JSON body."""


@dataclass(frozen=True)
class UpstreamReply:
    """A successful call's headers and decoded JSON object."""

    headers: Message
    data: dict[str, Any]


class Client:
    """Makes GET calls that return JSON objects, reusing keep-alive connections."""

    def __init__(self, proxy: Address | None) -> None:
        self._proxy = proxy
        self._idle: defaultdict[Address, list[HTTPConnection]] = defaultdict(list)
        self._lock = threading.Lock()

    def get_json(self, url: str, headers: Mapping[str, str], timeout: float) -> UpstreamReply:
        """GET ``url`` with ``headers``; raises UpstreamError unless a 2xx JSON object comes back."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise UpstreamError(f"unsupported URL {url!r}")
        target = parts.path or "/"
        if parts.query:
            target += f"?{parts.query}"
        if self._proxy is None:
            address = (parts.hostname, parts.port or 80)
        else:
            address, target = self._proxy, f"http://{parts.netloc}{target}"
        try:
            status, reply_headers, body = self._exchange(
                address, target, {**headers, "Host": parts.netloc}, timeout
            )
        except (OSError, HTTPException) as exc:
            raise UpstreamError(f"GET {url}: {exc!r}") from exc
        if not 200 <= status < 300:
            raise UpstreamError(f"GET {url}: HTTP {status}")
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise UpstreamError(f"GET {url}: body is not JSON") from exc
        if not isinstance(data, dict):
            raise UpstreamError(f"GET {url}: body is not a JSON object")
        return UpstreamReply(reply_headers, data)

    def _exchange(
        self, address: Address, target: str, headers: dict[str, str], timeout: float
    ) -> tuple[int, Message, bytes]:
        with self._lock:
            idle = self._idle[address].pop() if self._idle[address] else None
        if idle is not None:
            try:
                return self._round_trip(address, idle, target, headers, timeout)
            except (RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                pass  # the peer closed this idle connection first; a GET is safe to resend
        fresh = HTTPConnection(*address, timeout=timeout)
        return self._round_trip(address, fresh, target, headers, timeout)

    def _round_trip(
        self,
        address: Address,
        conn: HTTPConnection,
        target: str,
        headers: dict[str, str],
        timeout: float,
    ) -> tuple[int, Message, bytes]:
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        try:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            body = response.read()
        except BaseException:
            conn.close()
            raise
        self._keep(address, conn)
        return response.status, response.headers, body

    def _keep(self, address: Address, conn: HTTPConnection) -> None:
        # http.client drops the socket itself when the response said "Connection: close".
        with self._lock:
            if conn.sock is not None and len(self._idle[address]) < MAX_IDLE_PER_ADDRESS:
                self._idle[address].append(conn)
                return
        conn.close()
