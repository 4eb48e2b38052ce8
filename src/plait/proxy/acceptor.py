"""Accepting connections that may or may not start with TLS (PeerAuthentication modes).

The inbound listener must refuse plaintext in STRICT mode, accept both in PERMISSIVE mode,
and serve plaintext in DISABLE mode, and the mode can change with each config push. So the
listener accepts raw sockets itself, peeks at the first byte without consuming it (a TLS
handshake starts with record type 0x16, RFC 8446 section 5.1), decides, and hands the
socket to the event loop with or without TLS. The cost is one extra readiness wait per
connection, never per request.

Owns: the listening socket's reader registration, the sockets it has not handed over yet,
and the hand-over tasks (through `spawn`). `close()` stops accepting and closes them.

`Detector` is the protocol every outbound and inbound connection starts with: it decides
what the connection carries, once, and hands the transport (and the bytes it read) to the
protocol that serves it (`transport.set_protocol`): HTTP/1.1 -> `DownstreamConnection`,
the HTTP/2 preface -> the listener's HTTP/2 protocol, anything else -> a TCP tunnel. Over
mTLS the peer proxy's ALPN says it (`h2`, `http/1.1`, `plait-tcp`): no sniffing there.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from plait.proxy import detect
from plait.proxy.downstream import DownstreamConnection
from plait.proxy.original_dst import original_destination
from plait.proxy.runtime import APP_CLUSTER
from plait.proxy.tcp import TCP_ALPN, TcpSession, service_destination, tcp_destination

if TYPE_CHECKING:
    from plait.proxy.listener import ListenerContext
    from plait.proxy.upstream import ClusterRuntime

__all__ = ["DetectingAcceptor", "Detector", "STRICT", "PERMISSIVE", "DISABLE"]

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


def _original_destination(sock: Any) -> tuple[str, int] | None:
    """Where a transparently captured connection was going (None: not captured)."""
    return original_destination(sock) if sock is not None else None


class Detector(asyncio.Protocol):
    """The first protocol of a connection: decides what it carries, then hands it over.

    `target` (namespace, service, port): the TCP service this listener stands for (a
    `--tcp-outbound` listener); otherwise the destination is the original one (capture) on
    the outbound listener, the local app on the inbound one. A destination whose port is
    declared `tcp` skips detection (server-first protocols must not wait); another one waits
    `detect_timeout` for the client's first bytes, then treats silence as TCP (bytes that
    may yet become a request line get the header timeout instead). Without a TCP destination
    only HTTP is possible: HTTP/1.1 takes the connection at once (and passes an h2c preface
    on to HTTP/2 itself). Costs once per connection, never per request.
    """

    __slots__ = (
        "ctx",
        "target",
        "transport",
        "buffer",
        "timer",
        "destination",
        "handed",
        "original",
        "extended",
    )

    def __init__(self, ctx: ListenerContext, target: tuple[str, str, int] | None = None) -> None:
        self.ctx = ctx
        self.target = target
        self.transport: Any = None
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None
        self.destination: ClusterRuntime | None = None
        self.handed = False
        self.original: tuple[str, int] | None = None  # the captured original destination
        self.extended = False  # the wait was extended for a partial request line

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        ctx = self.ctx
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._over_tls(ssl_object)
            return
        destination, declared = self._destination(transport)
        self.destination = destination
        if destination is not None and declared == "tcp":
            _count(ctx, "detect_skipped_tcp")  # declared: no waiting for client bytes
            self._hand_over(detect.TCP)
            return
        if destination is None:
            # HTTP is all this connection can be: HTTP/1.1 serves it (and hands an h2c
            # preface to HTTP/2 itself), with no detection step on the common path.
            self._hand_over(detect.HTTP1)
            return
        self.timer = ctx.loop.call_later(ctx.settings.detect_timeout, self._timed_out)

    def _over_tls(self, ssl_object: ssl.SSLObject) -> None:
        """An mTLS connection from a peer proxy: its ALPN says what it carries."""
        alpn = ssl_object.selected_alpn_protocol()
        ctx = self.ctx
        if alpn == TCP_ALPN:
            peer_id = ctx.peer_identity(ssl_object)
            if peer_id is None:
                self.transport.abort()
                return
            self.handed = True
            session = TcpSession(ctx, ctx.config.current.clusters.get(APP_CLUSTER), peer_id)
            session.start(self.transport, framed=True)
            return
        self._hand_over(detect.HTTP2 if alpn == "h2" else detect.HTTP1)

    def _destination(self, transport: asyncio.BaseTransport) -> tuple[ClusterRuntime | None, str]:
        """(the cluster TCP would go to, the protocol its port declares)."""
        ctx = self.ctx
        if self.target is not None:
            return service_destination(ctx, *self.target)
        if ctx.kind == "inbound":
            return ctx.config.current.clusters.get(APP_CLUSTER), _app_protocol(ctx)
        if ctx.kind != "outbound":
            return None, ""
        original = _original_destination(transport.get_extra_info("socket"))
        if original is None:
            return None, ""
        self.original = original
        return tcp_destination(ctx, original) or (None, "")

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer = self.buffer + data if self.buffer else data
        kind = detect.detect(buffer, final=len(buffer) >= detect.MAX_SNIFF)
        if kind != detect.NEED_MORE:
            self._hand_over(kind)

    def eof_received(self) -> bool | None:
        # The client sent what it will send (maybe nothing) and half closed: decide now.
        protocol = self._hand_over(detect.detect(self.buffer, final=True))
        eof_received = getattr(protocol, "eof_received", None)
        return eof_received() if eof_received is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.buffer and not self.extended:
            # A prefix of HTTP (a slow client's first packet): give it the head's time.
            self.extended = True
            wait = max(self.ctx.settings.header_timeout - self.ctx.settings.detect_timeout, 0.0)
            self.timer = self.ctx.loop.call_later(wait, self._timed_out)
            return
        _count(self.ctx, "detect_timeout")  # the client stayed silent (or stalled): TCP
        self._hand_over(detect.detect(self.buffer, final=True))

    def _hand_over(self, kind: str) -> asyncio.BaseProtocol | None:
        if self.handed:
            return None
        self.handed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        ctx, transport, buffer = self.ctx, self.transport, self.buffer
        self.buffer = b""
        if self.destination is not None:  # detection ran (or was skipped): say what it found
            _count(ctx, f"detected_{kind.replace('-', '_')}")
        if (kind == detect.TCP or kind == detect.TLS) and self.destination is not None:
            session = TcpSession(ctx, self.destination)
            session.start(transport, buffer)
            return session.tunnel.downstream
        protocol: Any = None
        if kind == detect.HTTP2:
            factory = getattr(ctx, "h2_protocol_factory", None)
            if factory is not None:
                protocol = factory()
        if protocol is None:
            # HTTP/1; also what is not HTTP but has no TCP destination (no capture, no
            # --tcp-outbound), and the HTTP/2 preface without an HTTP/2 downstream: a 400.
            protocol = DownstreamConnection(ctx)
        if self.original is not None and hasattr(protocol, "original_dst"):
            protocol.original_dst = f"{self.original[0]}:{self.original[1]}".encode()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if buffer and not transport.is_closing():
            protocol.data_received(buffer)
        return protocol


def _count(ctx: ListenerContext, event: str) -> None:
    """A named detection outcome in the listener's stats (`/stats`: detect_timeout, ...)."""
    events = ctx.stats.events
    events[event] = events.get(event, 0) + 1


# The last (snapshot, flag, app address) asked about and its answer: `app_protocol` scans the
# clusters, so it runs once per snapshot rather than once per connection.
_app: tuple[object, str, object, str] = (None, "", None, "")


def _app_protocol(ctx: ListenerContext) -> str:
    global _app
    snapshot, flag, app = ctx.config.current.snapshot, ctx.app_protocol_flag, ctx.config.app
    if _app[0] is not snapshot or _app[1] != flag or _app[2] != app:
        _app = (snapshot, flag, app, ctx.app_protocol())
    return _app[3]
