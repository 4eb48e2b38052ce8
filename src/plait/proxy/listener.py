"""Listeners: the sockets a proxy accepts on, and the context their connections share.

Each listener (outbound 15001, inbound 15006, gateway) has a `ListenerContext`: its settings,
how it routes (`route`), its counters, the access log and the set of open connections. A
ticker visits every connection once a second for header and idle deadlines, which costs far
less per request than a timer per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any, Final

from plait.identity.tls import PeerVerificationError, verify_peer
from plait.proto.events import Headers
from plait.proto.h1 import HOP_BY_HOP
from plait.proxy.certificates import CertificateManager
from plait.proxy.downstream import ATTEMPT, UPGRADED, DownstreamConnection
from plait.proxy.filters.inbound_policy import InboundPolicy
from plait.proxy.filters.metrics import ListenerMetrics
from plait.proxy.original_dst import original_destination
from plait.proxy.routing import Decision
from plait.proxy.runtime import APP_CLUSTER, ConfigHolder, Runtime
from plait.proxy.tap import TapHub, stream_record
from plait.proxy.upstream import ClusterRuntime, Host
from plait.telemetry.accesslog import AccessLog
from plait.telemetry.stats import ListenerStats
from plait.telemetry.tracing import CLIENT, SERVER, Tracer, extract

if TYPE_CHECKING:
    from plait.proxy.downstream import Stream
    from plait.proxy.h2_downstream import H2DownstreamConnection

__all__ = ["ListenerContext", "ProxySettings", "OUTBOUND", "INBOUND", "GATEWAY"]

OUTBOUND, INBOUND, GATEWAY = "outbound", "inbound", "gateway"
# (TLS context or None, SPIFFE IDs the peer must prove (None: the host's own), SNI)
UpstreamTls = tuple["ssl.SSLContext | None", "tuple[str, ...] | None", str]
NO_TLS: Final[UpstreamTls] = (None, None, "")
XFCC: Final = b"x-forwarded-client-cert"
# Never forwarded as received: hop-by-hop fields, a client-certificate header that only the
# inbound proxy may set (a caller could forge it to impersonate another workload), and the
# marker one proxy gives the next for an HTTP/1.1 request it carries over HTTP/2.
DROP_HEADERS: Final = HOP_BY_HOP | {XFCC, UPGRADED}

log = logging.getLogger("plait.proxy.listener")

# The cluster to balance over (None: no healthy host, or the decision answers locally) and
# the route decision (filters, timeouts, faults); None: no route (404 NR).
RouteResult = tuple[ClusterRuntime | None, Decision] | None
INBOUND_DECISION: Final = Decision(APP_CLUSTER, "inbound|app")


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Limits and timeouts; every default carries its reason."""

    # 10 s to send a request head: Envoy's request_headers_timeout guidance against slowloris.
    header_timeout: float = 10.0
    # Idle keep-alive connections from clients close after 5 min (configurable per proxy).
    idle_timeout: float = 300.0
    # Pooled upstream connections idle longer than 10 s are closed before the app does it
    # (many app servers close idle sockets after 5-60 s; closing first avoids stale reuse).
    upstream_idle_timeout: float = 10.0
    # 5 s to connect to an upstream: loopback/LAN connects take microseconds; a black hole
    # should fail fast enough for the request to be retried elsewhere.
    connect_timeout: float = 5.0
    max_head_bytes: int = 60 * 1024
    max_headers: int = 100
    # 100 ms for a client's first bytes on a port not declared `tcp` before it is treated as
    # TCP: server-first protocols must not hang (Linkerd waits 10 s; the issue asks for less).
    detect_timeout: float = 0.1
    # 1 h without a byte either way closes a TCP tunnel (Istio's TCP idle_timeout default).
    tcp_idle_timeout: float = 3600.0


class ListenerContext:
    """What the connections of one listener share. Owned by the proxy app."""

    def __init__(
        self,
        kind: str,
        settings: ProxySettings,
        config: ConfigHolder,
        access_log: AccessLog | None,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        certs: CertificateManager | None = None,
        metrics: ListenerMetrics | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.kind = kind
        self.tap: TapHub | None = None  # set by the proxy app: `plait tap` streams from it
        self.tracer = tracer
        # Envoy's span kinds: the server side's proxy records SERVER, the caller's CLIENT.
        self.span_kind = SERVER if kind == INBOUND else CLIENT
        self.certs = certs
        self.metrics = metrics
        self.drop_headers = DROP_HEADERS
        self.tls_counters: dict[str, int] = {}
        self.settings = settings
        self.config = config
        self.access_log = access_log
        self.spawn = spawn
        self.loop = asyncio.get_running_loop()
        self.stats = ListenerStats()
        self.connections: set[DownstreamConnection | H2DownstreamConnection] = set()
        self.tunnels: set[Any] = set()  # open TCP sessions (plait.proxy.tcp), closed on exit
        self.app_protocol_flag = ""  # `--app-protocol`, set by the proxy app
        self.draining = False
        # Outbound connections may be redirected by iptables (`plait capture`): their
        # original destination routes a request whose Host names no service.
        self.captures = kind == OUTBOUND
        self.route: Callable[[bytes, bytes, bytes, Headers, bytes], RouteResult] = {
            OUTBOUND: self._route_outbound,
            GATEWAY: self._route_gateway,
            INBOUND: self._route_inbound,
        }[kind]

    def app_protocol(self) -> str:
        """What the local app speaks (http, http2, grpc, tcp; "" unknown): `--app-protocol`,
        else the protocol its Service declares for the app's port (or its only port)."""
        if self.app_protocol_flag:
            return self.app_protocol_flag
        app = self.config.app
        return self.config.current.snapshot.app_protocol(app[1] if app is not None else 0)

    def protocol_factory(self) -> DownstreamConnection:
        return DownstreamConnection(self)

    def h2_protocol_factory(self) -> H2DownstreamConnection:
        """The HTTP/2 protocol (h2c prior knowledge, or TLS that negotiated ALPN `h2`)."""
        from plait.proxy.h2_downstream import H2DownstreamConnection

        return H2DownstreamConnection(self)

    # routing -------------------------------------------------------------------------
    def _route_outbound(
        self, authority: bytes, method: bytes, path: bytes, headers: Headers, query: bytes
    ) -> RouteResult:
        runtime = self.config.current
        return _resolve(
            runtime, runtime.table.outbound(authority, method, path, headers, query=query)
        )

    def _route_gateway(
        self, authority: bytes, method: bytes, path: bytes, headers: Headers, query: bytes
    ) -> RouteResult:
        runtime = self.config.current
        return _resolve(
            runtime, runtime.table.gateway(authority, method, path, headers, query=query)
        )

    def _route_inbound(
        self, authority: bytes, method: bytes, path: bytes, headers: Headers, query: bytes
    ) -> RouteResult:
        return (self.config.current.clusters.get(APP_CLUSTER), INBOUND_DECISION)

    def original_authority(self, transport: asyncio.BaseTransport) -> bytes:
        """`vip:port` the app connected to before a REDIRECT; b"" when not redirected."""
        sock = transport.get_extra_info("socket")
        found = original_destination(sock) if sock is not None else None
        return f"{found[0]}:{found[1]}".encode() if found is not None else b""

    def cluster(self, service: tuple[str, str]) -> ClusterRuntime | None:
        return self.config.current.clusters.get(service)

    def peer_identity(self, ssl_object: ssl.SSLObject) -> str | None:
        """The caller's SPIFFE ID from its (already chain-verified) certificate, or None."""
        try:
            peer = verify_peer(ssl_object, None)
        except PeerVerificationError as exc:
            key = f"peer_refused.{exc.reason}"
            count = self.tls_counters[key] = self.tls_counters.get(key, 0) + 1
            self.tls_event(key)
            if count & (count - 1) == 0:  # the 1st, 2nd, 4th...: bounded log volume
                log.warning("%s caller refused: %s (%s: %d so far)", self.kind, exc, key, count)
            return None
        self.tls_counters["handshakes"] = self.tls_counters.get("handshakes", 0) + 1
        self.tls_event("ok")
        return peer

    def tls_event(self, result: str) -> None:
        """Count a handshake outcome in `plait_tls_handshakes_total{result}` (Prometheus)."""
        if self.metrics is not None:
            self.metrics.metrics.tls_handshakes.labels(result).inc()

    def upstream_tls(self, host: Host, cluster: ClusterRuntime | None = None) -> UpstreamTls:
        """How to reach `host`: (context or None, SPIFFE IDs it must prove, SNI).

        AUTO (Istio's auto mTLS): mTLS toward endpoints with a proxy, plaintext otherwise.
        A DestinationRule's `tls.mode` overrides: ISTIO_MUTUAL (mTLS even toward a registered
        workload without a proxy; SANs from `subjectAltNames`), SIMPLE (TLS with a CA file,
        server verified by name), DISABLE (plaintext)."""
        policy = cluster.policy if cluster is not None else None
        mode = policy.tls_mode if policy is not None else "AUTO"
        certs = self.certs
        if mode == "DISABLE":
            return NO_TLS
        if mode == "SIMPLE" and policy is not None:
            return (_simple_context(policy.ca_file), (), policy.sni or host.address)
        if certs is None or (mode == "AUTO" and not host.identity):
            return NO_TLS
        if mode == "ISTIO_MUTUAL" and not host.identity:
            sans = tuple(policy.subject_alt_names) if policy is not None else ()
            return (certs.client_context(), sans or None, "")
        return (certs.client_context(), None, "")

    def inbound_policy(self) -> InboundPolicy | None:
        return self.config.current.inbound_policy if self.kind == INBOUND else None

    def add_request_headers(self, stream: Stream, headers: Headers) -> None:
        if self.kind == INBOUND:
            peer_id = stream.down.peer_id
            certs = self.certs
            if peer_id and certs is not None and certs.identity is not None:
                # Envoy's SANITIZE_SET: the app learns who called, from us only.
                headers.append((XFCC, f"By={certs.identity.spiffe_id};URI={peer_id}".encode()))
        if self.kind != INBOUND:
            # Which try the upstream sees (retries count up); a caller's value is not ours.
            for name, _ in headers:
                if name == ATTEMPT:
                    headers[:] = [f for f in headers if f[0] != ATTEMPT]
                    break
            headers.append((ATTEMPT, b"1"))
        if self.kind == GATEWAY:
            # Edge of the mesh: record the client (RFC 7239's de-facto predecessor XFF).
            peer = stream.down.peer.rpartition(":")[0].encode()
            for i, (name, value) in enumerate(headers):
                if name == b"x-forwarded-for":
                    headers[i] = (name, value + b", " + peer)
                    break
            else:
                headers.append((b"x-forwarded-for", peer))
            headers.append((b"x-forwarded-proto", b"http"))

    # accounting ----------------------------------------------------------------------
    def record(self, stream: Stream) -> None:
        self.stats.record_status(stream.status, stream.flags)
        now = monotonic()
        if self.metrics is not None:
            self.metrics.record(stream, (now - stream.started) * 1000)
        tap = self.tap
        if tap is not None and tap.subscribers:
            tap.publish(stream_record(self.kind, stream, now - stream.started))
        span = stream.span
        if span is not None and self.tracer is not None:
            cluster = stream.cluster
            self.tracer.end_span(
                span,
                stream.status,
                stream.flags,
                stream.host.label if stream.host is not None else "",
                f"{cluster.name}.{cluster.namespace}" if cluster is not None else "",
                stream.down.peer_id,
            )
        log = self.access_log
        if log is not None and log.wants(stream.status, stream.flags):
            wall = time.time()
            head = stream.head
            host = stream.host
            cluster = stream.cluster
            log.write(
                {
                    "time": log.timestamp(wall - (now - stream.started)),
                    "listener": self.kind,
                    "method": head.method.decode("latin-1"),
                    "authority": stream.authority.decode("latin-1"),
                    "path": stream.path.decode("latin-1"),
                    "protocol": "HTTP/" + head.version.decode(),
                    "status": stream.status,
                    "response_flags": stream.flags or "-",
                    "upstream_host": host.label if host is not None else None,
                    "upstream_cluster": f"{cluster.name}.{cluster.namespace}" if cluster else None,
                    "route": stream.route or None,
                    "duration_ms": round((now - stream.started) * 1000, 3),
                    "bytes_received": stream.bytes_received,
                    "bytes_sent": stream.bytes_sent,
                    "request_id": stream.request_id.decode("latin-1") or None,
                    "downstream_peer": stream.down.peer,
                    "peer_identity": stream.down.peer_id or None,
                    "trace_id": _trace_id(stream),
                }
            )

    def log_refusal(self, conn: DownstreamConnection, status: int, reason: str) -> None:
        """A request refused before it became a stream (400, 408, 431)."""
        self.stats.record_status(status, "DPE")
        log = self.access_log
        if log is not None:
            log.write(
                {
                    "time": log.timestamp(time.time()),
                    "listener": self.kind,
                    "status": status,
                    "response_flags": "DPE",
                    "detail": reason,
                    "downstream_peer": conn.peer,
                }
            )

    def tick(self, now: float) -> None:
        """Once a second: expire header/idle deadlines."""
        for conn in [c for c in self.connections if c.deadline_kind and c.deadline <= now]:
            conn.on_deadline(now)

    def stats_dict(self) -> dict[str, int]:
        return self.stats.as_dict(len(self.connections))


def _resolve(runtime: Runtime, decision: Decision | None) -> RouteResult:
    """A route decision as the stream needs it: the cluster (None if it has no host)."""
    if decision is None:
        return None
    cluster = runtime.clusters.get(decision.service)
    if cluster is not None and not cluster.hosts:
        fallback = cluster.policy.fallback
        # No healthy endpoint: a configured fallback service answers instead (plait extension).
        cluster = runtime.clusters.get((fallback.namespace, fallback.name)) if fallback else None
    return (cluster if cluster and cluster.hosts else None, decision)


@functools.lru_cache(maxsize=16)
def _simple_context(ca_file: str) -> ssl.SSLContext:
    """DestinationRule SIMPLE: ordinary TLS to a server outside the mesh, verified by name."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def _trace_id(stream: Stream) -> str | None:
    """The request's trace id for its log line: our span's, or the caller's (W3C or B3)."""
    context: Any = stream.span if stream.span is not None else extract(stream.head.headers)
    trace_id = getattr(context, "trace_id", b"")
    return trace_id.decode() if trace_id else None
