"""Proxy assembly: builds the listeners of one proxy from its parts and runs them.

Read bottom-up, as linkerd2-proxy's stacks: a snapshot becomes a Runtime (routes, clusters,
pooled hosts); each listener gets a context (how it routes, its limits, counters, access
log); the admin server shows all of it; a ticker expires deadlines and flushes logs.
`Proxy` owns every socket and task it starts; `aclose()` releases them all.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import socket
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plait.config import wire
from plait.config.snapshot import Snapshot
from plait.proxy.acceptor import DetectingAcceptor, Detector
from plait.proxy.admin import AdminServer
from plait.proxy.agent import ControlAgent, load_cached_snapshot
from plait.proxy.certificates import CertificateManager
from plait.proxy.dns import DnsServer, MeshNames
from plait.proxy.filters.audit import AuditLog
from plait.proxy.filters.jwt_authn import JwksCache
from plait.proxy.filters.metrics import ListenerMetrics
from plait.proxy.health import AppHealthCheck
from plait.proxy.listener import GATEWAY, INBOUND, OUTBOUND, ListenerContext, ProxySettings
from plait.proxy.runtime import ConfigHolder
from plait.proxy.tap import TapHub
from plait.proxy.upstream import ClusterRuntime, Host, check_host, set_socket_mark
from plait.telemetry.accesslog import AccessLog
from plait.telemetry.exposition import render
from plait.telemetry.metrics import ProxyMetrics
from plait.telemetry.tracing import Tracer

__all__ = ["Proxy", "ProxyOptions"]

Address = tuple[str, int]
# While draining, how long a just-accepted connection may take to send its first request.
FIRST_REQUEST_GRACE = 0.5


@dataclass(frozen=True)
class ProxyOptions:
    """Everything `plait proxy` was asked to do; see `plait proxy --help`."""

    snapshot: Snapshot
    mode: str = "sidecar"
    outbound: Address | None = ("127.0.0.1", 15001)
    inbound: Address | None = ("127.0.0.1", 15006)
    gateway: Address | None = None
    admin: Address | None = ("127.0.0.1", 15000)
    # Istio's Prometheus port (15090) serving /stats/prometheus only; off unless asked for,
    # since several proxies share a host in local runs (the admin port serves it too).
    prometheus: Address | None = None
    app: Address | None = None
    settings: ProxySettings = field(default_factory=ProxySettings)
    access_log: str = "-"  # "-" stdout, a path, or "off"
    # 1 % of successful requests (every error is logged): a JSON line costs more than the
    # rest of a small request's metrics; `--access-log-sample 1` logs them all.
    access_log_sample: float = 0.01
    # 5 s: Istio's default terminationDrainDuration.
    drain_timeout: float = 5.0
    # After `bye`, keep accepting this long: callers still pick us until the control plane's
    # push reaches them (tens of ms on a LAN); refusing sooner would cost them retries.
    deregister_delay: float = 0.5
    # Dynamic configuration: the control plane's push address; `snapshot` is then only the
    # starting point (empty, or the cache), and the proxy is ready once it has a real one.
    control: Address | None = None
    cache_path: Path | None = None
    # Where other proxies reach this one's inbound listener (defaults to --inbound).
    advertise: Address | None = None
    app_health_path: str | None = None
    # Identity: the trust bundle that anchors the control plane (and turns on mTLS), where
    # the key and certificate are kept, the one-time join token, the trust domain.
    ca_bundle: bytes | None = None
    state_dir: Path | None = None
    join_token: str | None = None
    trust_domain: str = "cluster.local"
    audit_log: str = "-"
    # Tracing: spans exported over OTLP/HTTP to this URL; 1 % of new traces (Istio's default).
    tracing_endpoint: str | None = None
    trace_sample: float = 0.01
    # Mesh DNS (`plait proxy --dns 127.0.0.53:53`): service names -> VIPs, the rest forwarded.
    dns: Address | None = None
    dns_forward: Address | None = None
    # SO_MARK on upstream sockets, for `plait capture --proxy-mark` (0: none).
    socket_mark: int = 0
    # `--tcp-outbound 127.0.0.1:16379=redis:6379`: (listen address, namespace, service, port);
    # a listener per entry whose connections go to that service port (TCP without capture).
    tcp_outbound: tuple[tuple[Address, str, str, int], ...] = ()
    # `--app-protocol`: what the local app speaks when no Service declares it (static configs).
    app_protocol: str = ""


class Proxy:
    """A running proxy: listeners, admin, ticker. Use `async with` or call `aclose()`."""

    def __init__(self, options: ProxyOptions) -> None:
        self.options = options
        node = options.snapshot.node
        self.audit = (
            None
            if options.audit_log == "off" or options.app is None
            else AuditLog(options.audit_log, destination=f"{node.name}.{node.namespace}")
        )
        self.jwks = JwksCache()
        self.config = ConfigHolder(options.snapshot, options.app, self.audit, self.jwks.get)
        # mTLS is on when the proxy has a trust anchor (and so gets a workload certificate).
        self.certs = (
            CertificateManager(options.state_dir) if options.ca_bundle is not None else None
        )
        self.acceptors: list[DetectingAcceptor] = []
        self.metrics = ProxyMetrics()
        self._ejections_seen: dict[tuple[str, str], int] = {}
        self.tap = TapHub()
        self.exporter: Any = None
        if options.tracing_endpoint:
            from plait.telemetry.otlp import OtlpExporter  # ~10 MiB: only when tracing is on

            node = options.snapshot.node
            self.exporter = OtlpExporter(
                options.tracing_endpoint,
                node.service or node.name,
                {"service.namespace": node.namespace},
            )
        # No collector, no spans: trace headers the apps forward still pass through untouched.
        self.tracer = Tracer(options.trace_sample, self.exporter.submit) if self.exporter else None
        self.metrics.config_version.set_function(_version_number(self.config))
        if self.certs is not None:
            certs = self.certs
            self.metrics.certificate_expiry.set_function(
                lambda: (
                    certs.identity.not_after.timestamp() - time.time() if certs.identity else 0.0
                )
            )
        self.access_log = (
            None
            if options.access_log == "off"
            else AccessLog(options.access_log, options.access_log_sample)
        )
        self.contexts: dict[str, ListenerContext] = {}
        self.servers: list[asyncio.Server] = []
        self.addresses: dict[str, Address] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._ready = False
        self.agent: ControlAgent | None = None
        self.health: AppHealthCheck | None = None
        self.dns: DnsServer | None = None
        # Static config is complete as given; a dynamic proxy waits for its first snapshot.
        self._configured = options.control is None
        self._cached_state: wire.ResourceState | None = None
        if options.control is not None and options.cache_path is not None:
            cached = load_cached_snapshot(options.cache_path, options.snapshot.node)
            if cached is not None:
                self.config.apply(cached[0])
                self._cached_state = cached[1]
                self._configured = True

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a task owned by the proxy (cancelled and awaited by `aclose`)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Bind every listener; returns when all accept connections."""
        loop = asyncio.get_running_loop()
        wanted: list[tuple[str, Address | None]] = []
        if self.options.mode == GATEWAY:
            wanted.append((GATEWAY, self.options.gateway or ("0.0.0.0", 8080)))
        else:
            wanted.append((OUTBOUND, self.options.outbound))
            if self.options.app is not None:
                wanted.append((INBOUND, self.options.inbound))
        for kind, address in wanted:
            if address is None:
                continue
            ctx = self.make_context(kind)
            factory = self.connection_factory(ctx)
            if kind == INBOUND and self.certs is not None:
                # mTLS inbound: TLS or plaintext decided per connection by the snapshot's
                # PeerAuthentication mode (STRICT refuses plaintext).
                sock = socket.create_server(address, backlog=1024, reuse_port=False)
                certs = self.certs
                self.acceptors.append(
                    DetectingAcceptor(
                        sock,
                        factory,
                        lambda: self.config.current.snapshot.mtls_mode,
                        functools.partial(_server_context, certs),
                        self.spawn,
                        ctx.tls_counters,
                        ctx.tls_event,
                    )
                )
                self.addresses[kind] = sock.getsockname()[:2]
                continue
            server = await loop.create_server(factory, address[0], address[1], backlog=1024)
            self.servers.append(server)
            self.addresses[kind] = server.sockets[0].getsockname()[:2]
        outbound = self.contexts.get(OUTBOUND)
        for listen, namespace, service, port in self.options.tcp_outbound:
            if outbound is None:
                break
            server = await loop.create_server(
                functools.partial(Detector, outbound, (namespace, service, port)),
                listen[0],
                listen[1],
                backlog=1024,
            )
            self.servers.append(server)
            bound = server.sockets[0].getsockname()[:2]
            self.addresses[f"tcp {service}.{namespace}:{port}"] = bound
        if self.options.admin is not None:
            admin = AdminServer(
                lambda: self.ready,
                self.stats,
                self.config_dump,
                lambda: render(self.metrics.registry),
                self.tap,
            )
            server = await asyncio.start_server(admin.handle, *self.options.admin)
            self.servers.append(server)
            self.addresses["admin"] = server.sockets[0].getsockname()[:2]
        if self.options.prometheus is not None:
            scrape = AdminServer(
                lambda: True,
                self.stats,
                self.config_dump,
                lambda: render(self.metrics.registry),
                metrics_only=True,
            )
            server = await asyncio.start_server(scrape.handle, *self.options.prometheus)
            self.servers.append(server)
            self.addresses["prometheus"] = server.sockets[0].getsockname()[:2]
        if self.options.socket_mark:
            set_socket_mark(self.options.socket_mark)
        if self.options.dns is not None:
            names = MeshNames(lambda: self.config.current.snapshot)
            self.dns = await DnsServer.open(self.options.dns, names.table, self.options.dns_forward)
            self.addresses["dns"] = self.dns.address
        self.spawn(self._tick())
        if self.exporter is not None:
            self.exporter.start()
        if self.options.app is not None:
            self.health = AppHealthCheck(self.options.app, self.options.app_health_path)
            self.spawn(self.health.run())
        if self.options.control is not None:
            self.agent = self._make_agent(self.options.control)
            self.spawn(self.agent.run())
        self.spawn(self.jwks.run())
        self.spawn(self._active_health_checks())
        self._ready = True

    def make_context(self, kind: str) -> ListenerContext:
        """The context of this proxy's `kind` listener (node mode: connections a shared
        listener accepts from this workload's app are handed to it)."""
        recorder = ListenerMetrics(self.metrics, kind, self.options.snapshot.node, self.certs)
        ctx = ListenerContext(
            kind,
            self.options.settings,
            self.config,
            self.access_log,
            self.spawn,
            self.certs,
            recorder,
            self.tracer,
        )
        ctx.tap = self.tap
        ctx.app_protocol_flag = self.options.app_protocol
        self.contexts[kind] = ctx
        return ctx

    @staticmethod
    def connection_factory(ctx: ListenerContext) -> Callable[[], asyncio.Protocol]:
        """What serves a connection accepted for `ctx`."""
        # Outbound and inbound connections start with protocol detection (HTTP/1.1, the
        # HTTP/2 preface, or TCP); a gateway serves HTTP only.
        if ctx.kind == GATEWAY:
            return ctx.protocol_factory  # type: ignore[return-value]  # a protocol by duck typing
        return functools.partial(Detector, ctx)

    def _make_agent(self, control: Address) -> ControlAgent:
        addresses = {k: f"{h}:{p}" for k, (h, p) in self.addresses.items()}
        endpoint = self.options.advertise or self.addresses.get(INBOUND)

        def applied(_: Snapshot) -> None:
            self._configured = True
            policy = self.config.current.inbound_policy
            if policy is not None:
                self.jwks.want(policy.authn.jwks_uris)

        return ControlAgent(
            control,
            self.options.snapshot.node,
            self.config,
            addresses,
            endpoint,
            cache_path=self.options.cache_path,
            health=self.health,
            on_applied=applied,
            state=self._cached_state,
            certs=self.certs,
            ca_bundle=self.options.ca_bundle,
            join_token=self.options.join_token,
            control_id=f"spiffe://{self.options.trust_domain}/ns/plait-system/sa/plait-control",
            mode=self.options.mode,
        )

    @property
    def ready(self) -> bool:
        """Listening, configured and (with mTLS) holding a certificate."""
        has_identity = self.certs is None or self.certs.identity is not None
        return self._ready and self._configured and has_identity

    async def _active_health_checks(self) -> None:
        """Check the hosts of clusters that configure it, each at its interval."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            outbound = self.contexts.get(OUTBOUND) or self.contexts.get(GATEWAY)
            for cluster in self.config.current.clusters.values():
                check = cluster.policy.health_check
                if check is None or now < cluster.next_check:
                    continue
                cluster.next_check = now + check.interval_ms / 1000
                for host in cluster.hosts:
                    tls = outbound.upstream_tls(host, cluster)[0] if outbound is not None else None
                    self.spawn(self._check(cluster, host, tls))

    async def _check(self, cluster: ClusterRuntime, host: Host, tls: ssl.SSLContext | None) -> None:
        check = cluster.policy.health_check
        assert check is not None
        ok = await check_host(host, check.kind, check.path, check.timeout_ms / 1000, tls)
        state = cluster.checks.get(host)
        if state is not None and state.observe(ok) is not None:
            cluster.health_changed()

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            for ctx in self.contexts.values():
                ctx.tick(now)
            cutoff = now - self.options.settings.upstream_idle_timeout
            for host in self.config.hosts:
                host.close_idle_before(cutoff)
            clock = time.monotonic()
            for cluster in self.config.current.clusters.values():
                detector = cluster.detector
                if detector is not None:
                    detector.sweep(clock)  # outlier detection's interval work
                    # plait_outlier_ejections_total follows the detector's own count.
                    key = (cluster.namespace, cluster.name)
                    new = detector.ejections_total - self._ejections_seen.get(key, 0)
                    if new > 0:
                        self.metrics.outlier_ejections.labels(cluster.name).inc(new)
                        self._ejections_seen[key] = detector.ejections_total
            if self.access_log is not None:
                self.access_log.flush()
            if self.audit is not None:
                self.audit.flush()

    def stats(self) -> dict[str, Any]:
        policy = self.config.current.inbound_policy
        return {
            "listeners": {
                kind: {**ctx.stats_dict(), **{f"tls.{k}": v for k, v in ctx.tls_counters.items()}}
                for kind, ctx in self.contexts.items()
            },
            "policy": dict(policy.counters) if policy is not None else {},
            "hosts": [h.stats() for h in self.config.hosts],
            "clusters": {
                f"{c.name}.{c.namespace}": c.stats() for c in self.config.current.clusters.values()
            },
            "config_version": self.config.current.snapshot.version,
        }

    def config_dump(self) -> dict[str, Any]:
        agent = self.agent
        return {
            "mode": self.options.mode,
            "control_plane": None
            if agent is None
            else {
                "connected": agent.connected,
                "last_error": agent.last_error,
                "version": agent.state.version,
            },
            "app_health": self.health.status if self.health else None,
            "certificate": self.certs.status() if self.certs is not None else None,
            "listeners": {k: f"{a[0]}:{a[1]}" for k, a in self.addresses.items()},
            "app": f"{self.options.app[0]}:{self.options.app[1]}" if self.options.app else None,
            "snapshot": self.config.current.snapshot.to_dict(),
        }

    async def drain(self) -> None:
        """Leave without failing a request: deregister first, keep accepting while callers
        learn it, stop accepting, let streams in flight finish (up to the drain timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.drain_timeout
        if await self.begin_drain():
            await asyncio.sleep(min(self.options.deregister_delay, self.options.drain_timeout))
        self.stop_accepting()
        await self.wait_drained(deadline)

    async def begin_drain(self) -> bool:
        """Not ready, answers say `Connection: close`, idle connections close, and the
        control plane hears `bye` (True if it did: callers stop picking us on its push)."""
        self._ready = False
        for ctx in self.contexts.values():
            ctx.draining = True
            for conn in list(ctx.connections):
                conn.drain()  # idle: closed now; HTTP/2: GOAWAY, in-flight streams finish
        agent = self.agent
        if agent is None or not agent.connected:
            return False
        await agent.say_bye()
        return True

    def stop_accepting(self) -> None:
        for acceptor in self.acceptors:
            acceptor.close()
        for server in self.servers:
            server.close()

    async def wait_drained(self, deadline: float) -> None:
        """Until no stream is in flight (or `deadline`, loop time). A connection accepted
        just before the listener closed gets a moment to send its first request, which a
        caller could not safely retry if we closed the connection under it."""
        loop = asyncio.get_running_loop()
        first_request_by = loop.time() + FIRST_REQUEST_GRACE
        while loop.time() < deadline:
            newcomers = loop.time() < first_request_by
            if not any(
                conn.stream is not None or (newcomers and _awaits_first_request(conn))
                for ctx in self.contexts.values()
                for conn in ctx.connections
            ):
                return
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        self.tap.close()
        self._ready = False
        if self.dns is not None:
            await self.dns.aclose()
        for server in self.servers:
            server.close()
        for acceptor in self.acceptors:
            acceptor.close()
        self.acceptors = []
        for ctx in self.contexts.values():
            for conn in list(ctx.connections):
                conn.close()
            for tunnel in list(ctx.tunnels):
                tunnel.close()
        for host in self.config.hosts:
            host.close_all_idle()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.access_log is not None:
            self.access_log.close()
        if self.audit is not None:
            self.audit.close()
        if self.exporter is not None:
            await asyncio.to_thread(self.exporter.close)

    async def __aenter__(self) -> Proxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def serve(options: ProxyOptions, on_ready: Any = None) -> None:
    """Run a proxy until SIGTERM/SIGINT, then drain and exit."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    proxy = Proxy(options)
    try:
        await proxy.start()
        if on_ready is not None:
            on_ready(proxy)
        await stop.wait()
        await proxy.drain()
    finally:
        await proxy.aclose()


def _awaits_first_request(conn: Any) -> bool:
    """Accepted, never answered a request: its request head is due (`deadline_kind` 1)."""
    return conn.stream is None and conn.deadline_kind == 1 and not conn.closed


def _version_number(config: ConfigHolder) -> Any:
    """`plait_config_version` as a number: the pushed version, or 0 for a static file."""

    def value() -> float:
        version = config.current.snapshot.version
        return float(version) if version.isdigit() else 0.0

    return value


def _server_context(certs: CertificateManager) -> ssl.SSLContext | None:
    """The inbound TLS context of the current certificate (None before the first one)."""
    return certs.server.context if certs.server is not None else None
