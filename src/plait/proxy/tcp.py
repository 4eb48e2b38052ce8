"""Raw TCP through the mesh: one accepted connection proxied as a byte stream.

Outbound: a connection for a TCP service (a `--tcp-outbound` listener, or a captured
connection whose original destination is a service VIP) is balanced per connection over the
service's endpoints with the cluster's balancer, circuit breaker (maxConnections) and
outlier/health state; a connect failure tries another endpoint. Toward an endpoint with a
proxy the stream travels inside mTLS with ALPN `plait-tcp` (framed, so half close survives
TLS: see `tunnel`); toward an endpoint without one, in plaintext as is.
Inbound: an mTLS connection that negotiated `plait-tcp` (or plaintext that detection found
not to be HTTP) is authorized on the caller's identity and piped to the local app.

Each connection counts in Istio's `istio_tcp_*` series and writes one access-log line when
it closes. `TcpSession` owns its tunnel and the connect task (spawned on the listener's
owner); `close()` ends it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from time import monotonic
from typing import TYPE_CHECKING, Any

from plait.identity.tls import PeerVerificationError, verify_peer
from plait.proxy.tunnel import End, Tunnel

if TYPE_CHECKING:
    from plait.config.snapshot import Cluster
    from plait.proxy.listener import ListenerContext
    from plait.proxy.upstream import ClusterRuntime, Host
    from plait.telemetry.metrics import TcpSeries

__all__ = [
    "TCP_ALPN",
    "TcpSession",
    "parse_tcp_outbound",
    "service_destination",
    "tcp_destination",
]

# Our ALPN token for a framed TCP stream between two plait proxies.
TCP_ALPN = "plait-tcp"
# Endpoints tried per connection before giving up (each a different one while any is left).
MAX_CONNECT_ATTEMPTS = 5


# (snapshot, {(namespace, name): its Cluster}, {(vip, port): its Cluster}) of the last snapshot
# asked about: built once per snapshot, so finding a destination is two dict lookups.
_index: tuple[object, dict[tuple[str, str], Cluster], dict[tuple[str, int], Cluster]] = (
    None,
    {},
    {},
)


def _clusters(
    ctx: ListenerContext,
) -> tuple[dict[tuple[str, str], Cluster], dict[tuple[str, int], Cluster]]:
    global _index
    snapshot = ctx.config.current.snapshot
    if _index[0] is not snapshot:
        by_name = {(c.namespace, c.name): c for c in snapshot.clusters}
        by_vip = {(c.vip, p): c for c in snapshot.clusters if c.vip for p in c.ports}
        _index = (snapshot, by_name, by_vip)
    return _index[1], _index[2]


def service_destination(
    ctx: ListenerContext, namespace: str, name: str, port: int
) -> tuple[ClusterRuntime | None, str]:
    """(the cluster of service `namespace/name`, the protocol it declares for `port`)."""
    cluster = _clusters(ctx)[0].get((namespace, name))
    declared = cluster.protocol(port) if cluster is not None else ""
    return ctx.config.current.clusters.get((namespace, name)), declared


def tcp_destination(
    ctx: ListenerContext, address: tuple[str, int]
) -> tuple[ClusterRuntime | None, str] | None:
    """The service a connection to `address` means (transparent capture: the original
    destination) and the protocol it declares for that port: a service VIP and one of its
    ports. None: not a service (keep this the one place that maps addresses to services)."""
    cluster = _clusters(ctx)[1].get(address)
    if cluster is None:
        return None
    return ctx.config.current.clusters.get((cluster.namespace, cluster.name)), cluster.protocol(
        address[1]
    )


class TcpSession:
    """One proxied TCP connection, from accept to its access-log line."""

    __slots__ = (
        "ctx",
        "cluster",
        "host",
        "tunnel",
        "started",
        "peer",
        "peer_id",
        "tried",
        "series",
        "framed_up",
    )

    def __init__(self, ctx: ListenerContext, cluster: ClusterRuntime | None, peer_id: str = ""):
        self.ctx = ctx
        self.cluster = cluster
        self.host: Host | None = None
        self.started = monotonic()
        self.peer = ""
        self.peer_id = peer_id
        self.tried: tuple[Host, ...] = ()
        self.series: TcpSeries | None = None
        self.framed_up = False
        self.tunnel = Tunnel(ctx.settings.tcp_idle_timeout, self._closed, self._progress)

    def start(self, transport: Any, first: bytes = b"", framed: bool = False) -> None:
        """Take over the accepted `transport` (`first`: bytes already read from it)."""
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        ctx = self.ctx
        ctx.tunnels.add(self)
        ctx.stats.cx_total += 1
        self.tunnel.accept(transport, framed, first)
        if self.cluster is None:
            self.tunnel.close("NR")  # no service for this destination
            return
        if ctx.kind == "inbound" and not self._authorized():
            self.tunnel.close("RBAC")
            return
        ctx.spawn(self._connect())

    def close(self) -> None:
        self.tunnel.close()

    def _authorized(self) -> bool:
        """Inbound authorization on what a TCP connection has: the caller's identity and
        address (rules on HTTP fields apply as Istio applies them to TCP)."""
        policy = self.ctx.inbound_policy()
        if policy is None or not policy.enabled:
            return True
        verdict = policy.check_connection(self.peer_id, self.peer.rpartition(":")[0])
        if verdict is not None and verdict[1] and self.ctx.metrics is not None:
            self.ctx.metrics.metrics.authz_denied.inc()
        return verdict is None

    async def _connect(self) -> None:
        cluster = self.cluster
        assert cluster is not None
        ctx = self.ctx
        tunnel = self.tunnel
        breaker = cluster.breaker
        # Consistent hashing has no request to hash for TCP: the client's address it is
        # (Istio's useSourceIp), so one client keeps reaching one endpoint.
        key = (
            self.peer.rpartition(":")[0].encode()
            if cluster.policy.load_balancer.kind == "RING_HASH"
            else None
        )
        for _ in range(min(MAX_CONNECT_ATTEMPTS, max(len(cluster.hosts), 1))):
            host = cluster.pick(self.tried, key)
            if host is None or host in self.tried or tunnel.finished:
                break
            if not breaker.try_acquire_connection():
                # maxConnections reached: refuse at once (Envoy's circuit breaking).
                if ctx.metrics is not None:
                    ctx.metrics.metrics.circuit_breaker_overflow.labels(cluster.name).inc()
                tunnel.close("UO")
                return
            self.tried += (host,)
            host.active += 1
            host.rq_total += 1
            cluster.balancer.on_start(host)
            try:
                end = await self._open(host)
            except (OSError, TimeoutError, ssl.SSLError):
                breaker.release_connection()
                host.active -= 1
                now = monotonic()
                cluster.balancer.on_finish(host, None, now)
                if cluster.detector is not None:
                    cluster.detector.record(host, None, None, now)  # a connect failure
                ctx.stats.upstream_cx_connect_fail += 1
                continue
            self.host = host
            if cluster.detector is not None:
                # Connected: a success for outlier detection (Envoy's local-origin success),
                # which resets the host's run of connect failures.
                cluster.detector.record(host, 200, None, monotonic())
            if tunnel.finished:  # the client left while we connected
                end.abort()
                self._release()
                return
            if ctx.metrics is not None:
                self.series = ctx.metrics.tcp_series(cluster, host, self.peer_id)
                self.series.opened()
            tunnel.connected(end)
            return
        tunnel.close("UF" if self.tried else "UH")

    async def _open(self, host: Host) -> End:
        """Connect to `host`: framed inside mTLS toward a proxy, else as the cluster says."""
        ctx = self.ctx
        tls, expected, sni = ctx.upstream_tls(host, self.cluster)
        framed = False
        certs = ctx.certs
        identity = certs.identity if certs is not None else None
        if tls is not None and identity is not None and expected != ():
            # mTLS to a peer proxy (SIMPLE TLS verifies by name: expected is ()): say what
            # we carry with ALPN, and frame it.
            tls = identity.client_context(alpn=(TCP_ALPN,))
            framed = True
        host.cx_total += 1
        loop = asyncio.get_running_loop()
        tunnel = self.tunnel
        try:
            async with asyncio.timeout(ctx.settings.connect_timeout):
                transport, end = await loop.create_connection(
                    lambda: End(tunnel, framed),
                    host.address,
                    host.port,
                    ssl=tls,
                    server_hostname=sni if tls is not None else None,
                )
        except (OSError, TimeoutError, ssl.SSLError):
            host.cx_connect_fail += 1
            raise
        if tls is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            wanted = (host.identity,) if expected is None else expected
            try:
                if wanted:
                    verify_peer(ssl_object, wanted)
                if framed and ssl_object.selected_alpn_protocol() != TCP_ALPN:
                    raise PeerVerificationError(
                        "alpn", f"the peer proxy does not accept {TCP_ALPN} (old version?)"
                    )
            except PeerVerificationError as exc:
                host.cx_connect_fail += 1
                transport.abort()
                raise ConnectionRefusedError(f"{host.label}: {exc}") from None
        self.framed_up = framed
        return end

    def _release(self) -> None:
        host, cluster = self.host, self.cluster
        if host is None or cluster is None:
            return
        self.host = None
        host.active -= 1
        cluster.balancer.on_finish(host, None, monotonic())
        cluster.breaker.release_connection()

    def _progress(self, tunnel: Tunnel) -> None:
        series = self.series
        if series is not None:
            sent, received = tunnel.sent, tunnel.received
            series.transferred(sent - tunnel.reported[0], received - tunnel.reported[1])
            tunnel.reported = (sent, received)

    def _closed(self, tunnel: Tunnel) -> None:
        ctx = self.ctx
        ctx.tunnels.discard(self)
        host = self.host
        self._progress(tunnel)
        flags = tunnel.flags
        if self.series is not None:
            self.series.closed(flags)
        elif ctx.metrics is not None and flags:
            # Never connected (no endpoint, refused, overloaded): still one closed connection.
            series = ctx.metrics.tcp_series(self.cluster, None, self.peer_id)
            series.opened()
            series.closed(flags)
        self._release()
        log = ctx.access_log
        if log is None:
            return
        now = monotonic()
        cluster = self.cluster
        log.write(
            {
                "time": log.timestamp(time.time() - (now - self.started)),
                "listener": ctx.kind,
                "protocol": "tcp",
                "response_flags": flags or "-",
                "upstream_host": host.label if host is not None else None,
                "upstream_cluster": f"{cluster.name}.{cluster.namespace}" if cluster else None,
                "duration_ms": round((now - self.started) * 1000, 3),
                "bytes_received": tunnel.received,
                "bytes_sent": tunnel.sent,
                "downstream_peer": self.peer,
                "peer_identity": self.peer_id or None,
                "upstream_tls": "mtls" if self.framed_up else None,
            }
        )


def parse_tcp_outbound(text: str) -> tuple[tuple[str, int], str, str, int]:
    """`[HOST:]PORT=SERVICE[.NAMESPACE]:PORT` (`--tcp-outbound`) -> (listen address,
    namespace, service, service port). Raises ValueError naming what is wrong."""
    listen, sep, service = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected LISTEN=SERVICE:PORT, e.g. 127.0.0.1:16379=redis:6379")
    host, colon, port = listen.rpartition(":")
    name, colon2, target = service.rpartition(":")
    if not colon2 or not name:
        raise ValueError(f"{text!r}: the service needs a port (SERVICE:PORT)")
    try:
        listen_port, target_port = int(port), int(target)
    except ValueError:
        raise ValueError(f"{text!r}: ports must be numbers") from None
    if not 0 <= listen_port < 65536 or not 0 < target_port < 65536:
        raise ValueError(f"{text!r}: port out of range")
    service_name, _, namespace = name.partition(".")
    if not service_name:
        raise ValueError(f"{text!r}: empty service name")
    return (
        ((host.strip("[]") if colon else "") or "127.0.0.1", listen_port),
        (namespace or "default"),
        service_name,
        target_port,
    )
