"""HTTP/1.1 Upgrade (WebSocket and friends): keep the handshake, then become a tunnel.

An HTTP/1.1 request with `Upgrade` keeps its `Upgrade` and `Connection: upgrade` fields end to
end (RFC 9110 section 7.8; they are otherwise dropped as hop-by-hop), and always travels as
HTTP/1.1, between the proxies too (inside mTLS). When the app answers `101 Switching
Protocols`, the downstream and upstream connections stop being HTTP: both transports are
handed to a `tunnel.Tunnel` that copies bytes both ways with backpressure until either side
closes. Any other answer is an ordinary response, after which the client connection closes
(the HTTP/1 parser cannot go on past an upgrade request).

Bytes of the new protocol may come before the switch: in the read that carried the request
head (a client that does not wait for the 101), and in the read that carried the 101 (a
server greeting right after it). The h1 readers keep them (`take_tail`); the downstream stops
reading once an upgrade request is seen, so what it kept is at most about one read, and the
kernel holds the rest. When the 101 comes, both tails go into the tunnel first, in order;
for any other answer the client's are dropped with the connection. (httptools does not
parse a body on an upgrade request: such a body stays in the tail, so an app that waits for
it before answering still waits in vain, as before. WebSocket handshakes have no body.)

Only `Upgrade: websocket` is passed on (Envoy's and Istio's default `upgrade_configs`): other
protocols (`h2c`, ...) would carry requests past routing and authorization once switched, so
their `Upgrade` stays dropped and a 101 for them is refused as a bad upstream answer.

`downstream.Stream` calls `keep_upgrade` from `start` and `upgraded` from `response_head`,
only for requests whose head says upgrade: nothing here runs for other requests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from plait.proto.events import Headers, ResponseHead
from plait.proto.h1 import HOP_BY_HOP, response_head_bytes
from plait.proxy.tunnel import End, Tunnel

if TYPE_CHECKING:
    from plait.proxy.downstream import DownstreamConnection, Stream
    from plait.proxy.resilience import CircuitBreaker
    from plait.proxy.upstream import UpstreamConnection

__all__ = ["keep_upgrade", "upgraded"]

UPGRADE = b"upgrade"
CONNECTION_UPGRADE = (b"connection", b"upgrade")
ALLOWED = b"websocket"
# A bit of DownstreamConnection.pause_bits (next to its PAUSE_* bits): bytes after an upgrade
# request wait, in the kernel, for the answer that says what they are.
PAUSE_UPGRADE = 8


def _protocol(stream: Stream) -> bytes | None:
    """The request's `Upgrade` value when it is one we tunnel, else None."""
    for name, value in stream.head.headers:
        if name == UPGRADE:
            return value if value.strip().lower() == ALLOWED else None
    return None


def keep_upgrade(stream: Stream, forward: Headers) -> None:
    """Forward the request's `Upgrade: websocket` (and `Connection: upgrade`) to the next hop."""
    protocol = _protocol(stream)
    if protocol is not None:
        forward.append((UPGRADE, protocol))
        forward.append(CONNECTION_UPGRADE)
    # httptools stops at an upgrade request: if the app refuses it, close after the answer.
    stream.down_keep_alive = False
    stream.down.pause_reading(PAUSE_UPGRADE)


def upgraded(stream: Stream, head: ResponseHead) -> None:
    """The app switched protocols (101): answer the client, then splice the connections.
    Both legs are HTTP/1.1 here: only an HTTP/1.1 request offers an upgrade."""
    down = cast("DownstreamConnection", stream.down)
    conn = cast("UpstreamConnection | None", stream.upstream)
    ctx = down.ctx
    if conn is None or conn.transport is None or down.transport is None or down.closed:
        return  # nothing left to splice: the stream ends as it would have
    if _protocol(stream) is None:
        stream.local_reply(502, "UPE", b"upstream switched to a protocol that was not offered")
        return
    headers: Headers = [f for f in head.headers if f[0] not in HOP_BY_HOP]
    for name, value in head.headers:
        if name == UPGRADE:
            headers.append((UPGRADE, value))
            break
    headers.append(CONNECTION_UPGRADE)
    down.write(response_head_bytes(101, headers))
    down.flush_out()  # the 101 goes out before any tunnelled byte
    # The HTTP exchange ends here: account for it as a 101, without closing either socket.
    down_transport, up_transport = down.transport, conn.transport
    breaker = conn.breaker
    conn.breaker = None  # its maxConnections slot is held until the tunnel closes
    conn.stream = None
    conn.closed = True  # never pooled; its transport now belongs to the tunnel
    stream.upstream = None
    stream.status = 101
    stream.response_started = stream.response_complete = True
    down.stream = None  # so that the stream's end does not close the client connection
    down.closed = True
    down.deadline_kind = 0
    ctx.connections.discard(down)
    stream.done()

    def closed(tunnel: Tunnel) -> None:
        ctx.tunnels.discard(tunnel)
        _release(breaker)

    tunnel = Tunnel(ctx.settings.tcp_idle_timeout, closed)
    ctx.tunnels.add(tunnel)
    # What each reader kept past its head (the client's early bytes, the server's greeting)
    # enters the tunnel before anything read from now on.
    tunnel.accept(down_transport, framed=False, first=down.reader.take_tail())
    end = End(tunnel, framed=False)
    up_transport.set_protocol(end)
    end.connection_made(up_transport)
    greeting = conn.reader.take_tail()
    if greeting:
        end.data_received(greeting)
    tunnel.connected(end)
    # Either side may have been paused for HTTP backpressure or pipelining: the tunnel
    # decides from now on.
    down_transport.resume_reading()
    up_transport.resume_reading()


def _release(breaker: CircuitBreaker | None) -> None:
    if breaker is not None:
        breaker.release_connection()
