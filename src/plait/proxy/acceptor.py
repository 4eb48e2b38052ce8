"""Accepting connections that may or may not start with TLS (PeerAuthentication modes).

The inbound listener must refuse plaintext in STRICT mode, accept both in PERMISSIVE mode,
and serve plaintext in DISABLE mode, and the mode can change with each config push. So the
listener accepts raw sockets itself, peeks at the first byte without consuming it (a TLS
handshake starts with record type 0x16, RFC 8446 section 5.1), decides, and hands the
socket to the event loop with or without TLS. The cost is one extra readiness wait per
connection, never per request.

Owns: the listening socket's reader registration, the sockets it has not handed over yet,
and the hand-over tasks (through `spawn`). `close()` stops accepting and closes them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["DetectingAcceptor", "STRICT", "PERMISSIVE", "DISABLE"]

log = logging.getLogger("plait.proxy.acceptor")

STRICT, PERMISSIVE, DISABLE = "STRICT", "PERMISSIVE", "DISABLE"
TLS_HANDSHAKE = 0x16
# A client must send its first byte within this long (the HTTP header timeout applies after).
FIRST_BYTE_TIMEOUT = 10.0
HANDSHAKE_TIMEOUT = 10.0


class DetectingAcceptor:
    """Accepts on `sock`; each connection becomes `factory()` over TLS or plaintext."""

    def __init__(
        self,
        sock: socket.socket,
        factory: Callable[[], asyncio.Protocol],
        mode: Callable[[], str],
        tls: Callable[[], ssl.SSLContext | None],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        counters: dict[str, int],
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.on_refused = on_refused  # e.g. the plait_tls_handshakes_total counter
        self.sock = sock
        self.factory = factory
        self.mode = mode
        self.tls = tls
        self.spawn = spawn
        self.counters = counters
        self.loop = asyncio.get_running_loop()
        self._waiting: dict[int, tuple[socket.socket, asyncio.TimerHandle]] = {}
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(64):  # bounded: other callbacks get their turn under a connection storm
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep the listener alive
                log.warning("accept failed: %s", exc)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fd = conn.fileno()
            timer = self.loop.call_later(FIRST_BYTE_TIMEOUT, self._give_up, fd)
            self._waiting[fd] = (conn, timer)
            self.loop.add_reader(fd, self._first_bytes, fd)

    def _give_up(self, fd: int) -> None:
        entry = self._waiting.pop(fd, None)
        if entry is not None:
            self.loop.remove_reader(fd)
            entry[0].close()

    def _first_bytes(self, fd: int) -> None:
        entry = self._waiting.pop(fd, None)
        self.loop.remove_reader(fd)
        if entry is None:
            return
        conn, timer = entry
        timer.cancel()
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except OSError:
            first = b""
        if not first:
            conn.close()
            return
        is_tls = first[0] == TLS_HANDSHAKE
        mode = self.mode()
        context = self.tls() if is_tls and mode != DISABLE else None
        if mode == STRICT and context is None:
            # Plaintext (or no certificate yet) on a STRICT port: refused, as Istio does.
            self._refused(
                "plaintext_refused", "plaintext connection refused (mTLS mode STRICT)", _peer(conn)
            )
            conn.close()
            return
        self.spawn(self._hand_over(conn, context))

    async def _hand_over(self, conn: socket.socket, context: ssl.SSLContext | None) -> None:
        peer = _peer(conn)
        try:
            if context is None:
                await self.loop.connect_accepted_socket(self.factory, conn)
            else:
                await self.loop.connect_accepted_socket(
                    self.factory, conn, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
                )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            reason = _handshake_reason(exc)
            detail = str(exc) or type(exc).__name__
            self._refused(
                f"handshake_failed.{reason}", f"TLS handshake refused ({reason}): {detail}", peer
            )
            conn.close()

    def _refused(self, counter: str, message: str, peer: str) -> None:
        """Count a refused connection; log the 1st, 2nd, 4th, 8th... of each kind, so a flood
        of them (a port scan) cannot flood the log, yet every kind of refusal is seen."""
        count = self.counters[counter] = self.counters.get(counter, 0) + 1
        if self.on_refused is not None:
            self.on_refused(counter)
        if count & (count - 1) == 0:
            log.warning("inbound %s from %s (%s: %d so far)", message, peer, counter, count)

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return  # already closed
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for fd, (conn, timer) in list(self._waiting.items()):
            timer.cancel()
            self.loop.remove_reader(fd)
            conn.close()
        self._waiting.clear()


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


def _handshake_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "certificate required" in text or "peer did not return a certificate" in text:
        return "no_client_certificate"
    if "certificate has expired" in text or "expired" in text:
        return "expired_certificate"
    if "unknown ca" in text or "certificate verify failed" in text or "unable to get" in text:
        return "untrusted_certificate"
    if "version" in text or "protocol" in text:
        return "protocol_version"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError):
        return "connection_reset"  # the client gave up (e.g. it refused our SPIFFE ID)
    return "other"
