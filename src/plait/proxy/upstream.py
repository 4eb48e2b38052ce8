"""Upstream side: clusters of hosts, per-host connection pools, the upstream connection.

A `Host` is one endpoint at run time: it counts requests in flight (for the balancer) and
keeps idle keep-alive connections (LIFO: the most recently used socket is the least likely
to have been closed by the peer). Hosts outlive snapshots: a new snapshot that lists the
same address reuses the Host, so its pool survives a config push.

`UpstreamConnection` is an asyncio Protocol: it parses responses with the h1 codec and hands
events to the stream attached to it; it has no task of its own. Connecting is the one
place that awaits; the caller owns that task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Iterable, Iterator, Mapping
from time import monotonic
from typing import TYPE_CHECKING, Any, Final

from plait.config.snapshot import Cluster, Endpoint
from plait.config.traffic_policy import ClusterPolicy
from plait.identity.tls import PeerVerificationError, verify_peer
from plait.proto.errors import ProtocolError
from plait.proto.h1 import ResponseReader
from plait.proxy import batching
from plait.proxy.balance import Balancer, make_balancer, panic_hosts
from plait.proxy.outlier import HealthCheckState, OutlierDetector
from plait.proxy.resilience import CircuitBreaker, RetryBudget
from plait.proxy.sides import Upstream

if TYPE_CHECKING:
    from plait.proxy.downstream import Stream
    from plait.proxy.h2_upstream import H2UpstreamConnection

__all__ = ["ClusterRuntime", "Host", "HostRegistry", "UpstreamConnection"]

log = logging.getLogger("plait.proxy.upstream")

# Above this many bytes queued for a socket we pause the other side (explicit high water).
WRITE_HIGH_WATER: Final = 64 * 1024
# Idle pooled connections kept per host; more are closed rather than hoarded.
MAX_IDLE_PER_HOST: Final = 64
# SO_MARK put on upstream sockets (0: none), so `plait capture --proxy-mark` can exempt the
# proxy's own connections from the redirect. Set once at start (`set_socket_mark`).
SOCKET_MARK = 0


def set_socket_mark(mark: int) -> None:
    """Mark every upstream socket opened from now on (needs CAP_NET_ADMIN)."""
    global SOCKET_MARK
    SOCKET_MARK = mark


async def _marked_socket(address: str, port: int) -> socket.socket:
    """A TCP socket with SO_MARK set, connected to (address, port); the caller owns it."""
    loop = asyncio.get_running_loop()
    info = await loop.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, target = info[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, SOCKET_MARK)
        await loop.sock_connect(sock, target)
    except BaseException:
        sock.close()
        raise
    return sock


# PLAIT_H2_UPGRADE=1 or 0: every HTTP/1.1 request to another proxy over HTTP/2, or none,
# for the whole proxy (None: decided per cluster, see _h2_upgrade_modes).
UPGRADE_BETWEEN_PROXIES: bool | None = {
    "1": True,
    "true": True,
    "UPGRADE": True,
    "0": False,
    "false": False,
    "DO_NOT_UPGRADE": False,
}.get(os.environ.get("PLAIT_H2_UPGRADE", ""))


def _h2_upgrade_modes(policy: str, hosts: tuple[Host, ...]) -> tuple[bool, bool]:
    """(upgrade every HTTP/1.1 request, upgrade those that overlap others) for a cluster.

    h2UpgradePolicy UPGRADE / DO_NOT_UPGRADE decide, else PLAIT_H2_UPGRADE=1 / 0. Otherwise
    (DEFAULT), when every endpoint is a plait proxy (its protocol hint says it downgrades, as
    Linkerd's do), requests that start while others to the cluster are in flight share the
    multiplexed HTTP/2 connection, and a lone request takes pooled HTTP/1.1: HTTP/2 between
    the proxies costs a third less CPU per request under concurrency (one write and one TLS
    record carry many streams) but more for a request alone, whose latency it adds to
    (bench/RESULTS.md, "HTTP/1.1 or HTTP/2 between the proxies"). Only a plait peer
    downgrades an upgraded request again (an Envoy with a mesh certificate would pass HTTP/2
    on to an HTTP/1.1 app): the control plane gives the endpoints plait proxies registered
    the protocol hint "h2".
    """
    if policy in ("UPGRADE", "DO_NOT_UPGRADE"):
        return policy == "UPGRADE", False
    if UPGRADE_BETWEEN_PROXIES is not None:
        return UPGRADE_BETWEEN_PROXIES, False
    return False, bool(hosts) and all(h.protocol_hint == "h2" for h in hosts)


class UpstreamConnection(batching.BatchedWriter, Upstream):
    """One HTTP/1.1 connection to a host, carrying one stream at a time."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.transport: asyncio.Transport | None = None
        self.reader = ResponseReader()
        self.stream: Stream | None = None
        self.closed = False
        self.reused = False  # True once it has served a request: a stale socket may fail
        self.idle_since = 0.0
        self.reading_paused = False
        self.got_bytes = False
        self.out: list[bytes] = []  # writes batched during one socket event (see batching)
        self.breaker: CircuitBreaker | None = None  # whose maxConnections slot it holds
        self.served = 0  # requests answered on it (maxRequestsPerConnection)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(WRITE_HIGH_WATER)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        started = batching.begin()
        try:
            self._received(data)
        finally:
            if started:
                batching.end()

    def _received(self, data: bytes) -> None:
        stream = self.stream
        if stream is None:
            self.close()  # bytes nobody asked for: the connection is not safe to reuse
            return
        self.got_bytes = True
        try:
            events = self.reader.feed(data)
        except ProtocolError as exc:
            if exc.events and self.transport is not None:
                # A whole response followed by junk is still that response: deliver what was
                # complete before the bad bytes, on a connection closed now, never pooled.
                self.closed = True
                self.transport.close()
                for event in exc.events:
                    stream.on_upstream_event(self, event)
                    if stream.finished:
                        return
            stream.on_upstream_protocol_error(self, exc)
            return
        for event in events:
            stream.on_upstream_event(self, event)
            if self.stream is not stream:
                break  # the stream finished (or failed) on this event

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        breaker, self.breaker = self.breaker, None
        if breaker is not None:
            breaker.release_connection()
        stream = self.stream
        if stream is not None:
            self.stream = None
            stream.on_upstream_closed(self)
        else:
            self.host.forget_idle(self)

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream.upstream_buffer_full()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream.upstream_buffer_drained()

    def pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        self.stream = None
        if not self.closed and self.transport is not None:
            self.flush_out()
            self.closed = True
            self.transport.close()
        self.host.forget_idle(self)

    def abort(self) -> None:
        """Drop the connection at once (the exchange on it can no longer complete)."""
        self.stream = None
        self.out.clear()
        if not self.closed and self.transport is not None:
            self.closed = True
            self.transport.abort()
        self.host.forget_idle(self)


class Host:
    """One endpoint at run time: load, pool and counters; shared by the clusters listing it."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.address = endpoint.address
        self.port = endpoint.port
        self.labels: Mapping[str, str] = endpoint.labels
        self.workload = endpoint.workload
        # The SPIFFE ID the endpoint must prove; empty: no proxy there, plaintext (auto mTLS).
        self.identity = endpoint.identity
        self.protocol_hint = endpoint.protocol_hint  # "h2": a plait proxy, which downgrades
        self.label = f"{self.address}:{self.port}"
        self.active = 0
        self.idle: list[UpstreamConnection] = []
        self.cx_total = 0
        self.cx_connect_fail = 0
        self.cx_tls_fail = 0
        self.rq_total = 0
        self.h2: list[H2UpstreamConnection] = []  # multiplexed HTTP/2 connections
        # While an HTTP/2 connection to it is being opened: the streams waiting for it (a
        # burst then opens one connection, not one per request, as Envoy's pool does).
        self.h2_waiting: list[Any] | None = None

    def take_h2(self) -> H2UpstreamConnection | None:
        """An HTTP/2 connection that can open one more stream, if any."""
        for conn in self.h2:
            if conn.available():
                return conn
        return None

    def forget_h2(self, conn: H2UpstreamConnection) -> None:
        if conn in self.h2:
            self.h2.remove(conn)

    def take_idle(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put_idle(self, conn: UpstreamConnection, now: float) -> None:
        if conn.closed or conn.reading_paused or len(self.idle) >= MAX_IDLE_PER_HOST:
            conn.close()
            return
        conn.stream = None
        conn.reused = True
        conn.got_bytes = False
        conn.idle_since = now
        self.idle.append(conn)

    def forget_idle(self, conn: UpstreamConnection) -> None:
        if conn in self.idle:  # a short list (at most MAX_IDLE_PER_HOST)
            self.idle.remove(conn)

    def close_idle_before(self, cutoff: float) -> None:
        """Close pooled connections idle since before `cutoff` (called by the ticker)."""
        for conn in [c for c in self.idle if c.idle_since < cutoff]:
            conn.close()
        for h2 in [c for c in self.h2 if not c.streams and c.idle_since < cutoff]:
            h2.close()

    def close_all_idle(self) -> None:
        for conn in list(self.idle):
            conn.close()
        for h2 in list(self.h2):
            if not h2.streams:
                h2.close()

    async def open_connection(
        self,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        expected: tuple[str, ...] | None = None,
        server_hostname: str = "",
    ) -> UpstreamConnection:
        """Connect a new pooled connection, over TLS when `tls` is given; with mTLS the peer
        must prove one of the `expected` SPIFFE IDs (default: this host's `identity`; `()`:
        plain TLS, verified by the context itself). Raises OSError or TimeoutError."""
        conn = await self._connect(UpstreamConnection, timeout, tls, expected, server_hostname)
        return conn

    async def open_h2_connection(
        self,
        timeout: float,
        tls: ssl.SSLContext | None = None,
        expected: tuple[str, ...] | None = None,
        server_hostname: str = "",
    ) -> H2UpstreamConnection:
        """Connect a multiplexed HTTP/2 connection (h2c, or TLS with ALPN `h2`) and keep it
        in `h2` for the streams that follow. Raises OSError or TimeoutError."""
        from plait.proxy.h2_upstream import H2UpstreamConnection

        conn: H2UpstreamConnection = await self._connect(
            H2UpstreamConnection, timeout, tls, expected, server_hostname
        )
        if tls is not None:
            ssl_object = conn.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                self.cx_connect_fail += 1
                conn.abort()
                raise ConnectionRefusedError(f"{self.label}: the peer did not agree to h2")
        self.h2.append(conn)
        return conn

    async def _connect(
        self,
        factory: Any,
        timeout: float,
        tls: ssl.SSLContext | None,
        expected: tuple[str, ...] | None,
        server_hostname: str,
    ) -> Any:
        loop = asyncio.get_running_loop()
        self.cx_total += 1
        try:
            async with asyncio.timeout(timeout):
                if SOCKET_MARK:
                    _, proto = await loop.create_connection(
                        lambda: factory(self),
                        sock=await _marked_socket(self.address, self.port),
                        ssl=tls,
                        server_hostname=server_hostname if tls is not None else None,
                    )
                else:
                    _, proto = await loop.create_connection(
                        lambda: factory(self),
                        self.address,
                        self.port,
                        ssl=tls,
                        server_hostname=server_hostname if tls is not None else None,
                    )
        except ssl.SSLError as exc:
            self.cx_connect_fail += 1
            self._tls_failed(str(exc))
            raise
        except (OSError, TimeoutError):
            self.cx_connect_fail += 1
            raise
        wanted = (self.identity,) if expected is None else expected
        if tls is not None and wanted:
            try:
                verify_peer(proto.transport.get_extra_info("ssl_object"), wanted)
            except PeerVerificationError as exc:
                self.cx_connect_fail += 1
                self._tls_failed(str(exc))
                proto.abort()
                raise ConnectionRefusedError(f"{self.label}: {exc}") from None
        return proto

    def _tls_failed(self, why: str) -> None:
        """Count an mTLS failure; log the 1st, 2nd, 4th, 8th... per host (bounded log volume)."""
        self.cx_tls_fail += 1
        count = self.cx_tls_fail
        if count & (count - 1) == 0:
            log.warning(
                "upstream %s refused over mTLS: %s (cx_tls_fail: %d)", self.label, why, count
            )

    def stats(self) -> dict[str, Any]:
        return {
            "address": self.label,
            "workload": self.workload,
            "active": self.active,
            "idle_connections": len(self.idle),
            "h2_connections": len(self.h2),
            "cx_total": self.cx_total,
            "cx_connect_fail": self.cx_connect_fail,
            "cx_tls_fail": self.cx_tls_fail,
            "identity": self.identity,
            "rq_total": self.rq_total,
        }


class HostRegistry:
    """All hosts of a proxy by address, so pools survive snapshot swaps."""

    def __init__(self) -> None:
        self._hosts: dict[tuple[str, int], Host] = {}

    def host_for(self, endpoint: Endpoint) -> Host:
        host = self._hosts.get(endpoint.key)
        if host is None:
            host = self._hosts[endpoint.key] = Host(endpoint)
        else:
            host.labels, host.workload, host.identity, host.protocol_hint = (
                endpoint.labels,
                endpoint.workload,
                endpoint.identity,
                endpoint.protocol_hint,
            )
        return host

    def retain(self, keep: Iterable[Host]) -> None:
        """Drop hosts no snapshot lists any more, closing their idle connections."""
        wanted = {(h.address, h.port) for h in keep}
        for key in [k for k in self._hosts if k not in wanted]:
            self._hosts.pop(key).close_all_idle()

    def __iter__(self) -> Iterator[Host]:
        return iter(list(self._hosts.values()))


class ClusterRuntime:
    """A service at run time: its hosts, which of them are healthy, the balancer over those,
    and the per-cluster resilience state (circuit breaker, retry budget, outlier detector).

    Built once per snapshot; the resilience state carries over from the runtime it replaces
    (`previous`) so a config push does not reset a breaker's counts or an ejection.
    """

    def __init__(
        self,
        name: str,
        namespace: str,
        hosts: tuple[Host, ...],
        policy: ClusterPolicy | None = None,
        previous: ClusterRuntime | None = None,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self.hosts = hosts
        policy = policy or ClusterPolicy()
        self.policy = policy
        # What the service's ports declare (`http2`/`grpc`: speak HTTP/2 to it); "" until
        # resolved (see resolve_protocol), "-" when nothing is declared.
        self.protocol = ""
        # HTTP/1.1 requests to other proxies over HTTP/2: all of them, or those that overlap
        # others (see _h2_upgrade_modes).
        upgrade = getattr(policy.connection_pool, "h2_upgrade_policy", "DEFAULT")
        self.h2_upgrade, self.h2_multiplex = _h2_upgrade_modes(upgrade, hosts)
        self.h2_check = self.h2_upgrade or self.h2_multiplex  # HTTP/1.1 may go over HTTP/2
        same_policy = previous is not None and previous.policy == policy
        self.breaker: CircuitBreaker
        self.budget: RetryBudget
        if previous is not None:
            self.breaker = previous.breaker
            self.breaker.limits = policy.connection_pool
        else:
            self.breaker = CircuitBreaker(policy.connection_pool)
        self.budget = (
            previous.budget
            if previous is not None and previous.policy.retry_budget == policy.retry_budget
            else RetryBudget.from_policy(policy.retry_budget, monotonic)
        )
        self.detector: OutlierDetector | None = None
        if policy.outlier is not None:
            if same_policy and previous is not None and previous.detector is not None:
                self.detector = previous.detector
            else:
                self.detector = OutlierDetector(policy.outlier, hosts)
            self.detector.set_hosts(hosts)
        self.panic = False
        # Active health checks (TrafficPolicy healthCheck): one verdict per host, carried over
        # a config push; `checked_ok` is the hosts not failing them (the same tuple object
        # until a verdict changes, so the outlier detector's cache keeps working).
        check = policy.health_check
        previous_checks = previous.checks if previous is not None and same_policy else {}
        self.checks: dict[Host, HealthCheckState] = {}
        if check is not None:
            for h in hosts:
                self.checks[h] = previous_checks.get(h) or HealthCheckState(
                    check.unhealthy_threshold, check.healthy_threshold
                )
        self.next_check = 0.0
        self.checked_ok: tuple[Host, ...] = hosts
        self.health_changed()
        self._healthy: tuple[Host, ...] = self.checked_ok
        self.balancer: Balancer = self._balancer(hosts, previous.balancer if previous else None)

    def _balancer(self, hosts: tuple[Host, ...], inherit: object) -> Balancer:
        lb = self.policy.load_balancer
        return make_balancer(lb.kind, hosts, policy=lb, clock=monotonic, inherit=inherit)

    @classmethod
    def from_cluster(
        cls, cluster: Cluster, registry: HostRegistry, previous: ClusterRuntime | None = None
    ) -> ClusterRuntime:
        hosts = tuple(registry.host_for(e) for e in cluster.endpoints if e.healthy)
        runtime = cls(cluster.name, cluster.namespace, hosts, cluster.policy, previous)
        declared = set(getattr(cluster, "protocols", ()))
        if len(declared) == 1:
            runtime.resolve_protocol(declared.pop())
        return runtime

    def resolve_protocol(self, protocol: str) -> None:
        """Set the protocol the service speaks ("" or "-": not declared)."""
        self.protocol = protocol.lower() or "-"
        self.h2_check = self.h2_upgrade or self.h2_multiplex or self.protocol in ("http2", "grpc")

    def health_changed(self) -> None:
        """Recompute the hosts that pass their active health checks (after a verdict change)."""
        if self.checks:
            self.checked_ok = tuple(h for h in self.hosts if self.checks[h].healthy)

    def pick(self, avoid: tuple[Host, ...] = (), key: bytes | None = None) -> Host | None:
        detector = self.detector
        base = self.checked_ok
        if detector is not None or base is not self._healthy:
            healthy = detector.healthy(base, monotonic()) if detector is not None else base
            if healthy is not self._healthy:
                # Ejections changed: balance over the healthy hosts, or over all of them
                # when too few are healthy (panic mode: degraded beats down).
                self._healthy = healthy
                chosen, self.panic = panic_hosts(
                    self.hosts, healthy, self.policy.panic_threshold_percent
                )
                self.balancer = self._balancer(tuple(chosen), self.balancer)
        host = self.balancer.pick(avoid, key)
        return host  # type: ignore[return-value]

    def stats(self) -> dict[str, Any]:
        now = monotonic()
        return {
            "breaker": self.breaker.stats(),
            "retry_budget": {"balance": self.budget.balance, "refused": self.budget.refused},
            "outlier": self.detector.stats(now) if self.detector is not None else None,
            "panic": self.panic,
            "hosts": {
                h.label: {
                    "active": h.active,
                    "rq_total": h.rq_total,
                    "ejected": bool(self.detector and self.detector.is_ejected(h, now)),
                }
                for h in self.hosts
            },
        }


async def check_host(
    host: Host, kind: str, path: str, timeout: float, tls: ssl.SSLContext | None
) -> bool:
    """One active health check: a TCP connect, or an HTTP GET whose status is 2xx/3xx."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host.address, host.port, ssl=tls, server_hostname="" if tls else None
            )
            try:
                if kind != "http":
                    return True
                writer.write(
                    f"GET {path} HTTP/1.1\r\nHost: {host.label}\r\nUser-Agent: plait-health\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                parts = (await reader.readline()).split()
                return len(parts) >= 2 and parts[1][:1] in (b"2", b"3")
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return False
