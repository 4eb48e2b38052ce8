"""Node mode: one proxy process serves every workload of its host, each with its own identity.

Theory of operation. The node runs one logical sidecar per workload: a `Proxy` with its own
control-plane subscription, snapshot, certificate, policies, upstream pools and inbound
listener, all in one process and one event loop (sharing the interpreter, the loop, the
outbound port, the admin port and the access log). So nothing on the data path changes:

- outbound: one shared listener (15001). A connection is handed, in `connection_made`, to the
  outbound context of the workload whose app opened it, found by the connection's source
  address (each workload has its own local IP: 127.0.0.11, a namespace address...). From
  then on the connection belongs to that workload's proxy: its routes, its certificate toward
  upstreams, its pools (pools never mix identities: each workload has its own hosts). Cost:
  one dict lookup per connection, none per request.
- inbound: each workload has its own inbound address (the node's inbound port + its index,
  or its own), registered as its endpoint; the listener there presents that workload's
  certificate, applies that workload's policy and forwards to that workload's app. Callers
  need nothing new: endpoints stay distinct (address, port) pairs, as the mesh keys them.

A workload is declared with `--workload name=...,service=...,app=HOST:PORT,source=IP,...`
(see `parse_workload`) or in a YAML file (`load_workloads`). `NodeProxy` owns the shared
listeners and the workload proxies; `aclose()` closes all of them.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from plait.config.snapshot import Node
from plait.proxy.admin import AdminServer
from plait.proxy.app import Proxy, ProxyOptions
from plait.proxy.cli import parse_address
from plait.proxy.listener import OUTBOUND
from plait.telemetry.accesslog import AccessLog
from plait.telemetry.exposition import render_families
from plait.telemetry.metrics import MetricFamily

__all__ = [
    "NodeProxy",
    "WorkloadError",
    "WorkloadSpec",
    "load_workloads",
    "parse_workload",
    "serve",
]

log = logging.getLogger("plait.proxy.node")

Address = tuple[str, int]
# A workload with no `source` takes connections from any address (one workload only).
ANY_SOURCE = ""
WILDCARDS = ("0.0.0.0", "::", "")


class WorkloadError(ValueError):
    """A workload declaration that cannot be used (the message names the field)."""


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload served by the node proxy."""

    name: str
    service: str
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    app: Address | None = None
    # The address its app's outbound connections come from; "" for any (one workload only).
    source: str = ANY_SOURCE
    # Where other proxies reach it; None: the node's inbound host, port + index.
    inbound: Address | None = None
    # Its own outbound listener instead of the shared one (no source address needed: for
    # apps that cannot pick their source address, e.g. all on 127.0.0.1 under `plait up`).
    outbound: Address | None = None
    token: str | None = None
    app_health: str | None = None


_FIELDS = {
    "name",
    "service",
    "namespace",
    "app",
    "source",
    "inbound",
    "outbound",
    "token",
    "token-file",
    "app-health",
}


def _address(text: str, where: str) -> Address:
    """The proxy's own HOST:PORT parsing (a port alone is not enough here)."""
    error = WorkloadError(f"{where}: {text!r} is not HOST:PORT")
    if ":" not in text:
        raise error
    try:
        return parse_address(text)
    except argparse.ArgumentTypeError:
        raise error from None


def _source(text: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise WorkloadError(f"{where}: {text!r} is not an IP address") from None


def parse_workload(text: str) -> WorkloadSpec:
    """`name=alpha-0,service=alpha,app=127.0.0.1:9080,source=127.0.0.11,token=...` ->
    WorkloadSpec. Labels are `label.KEY=VALUE` (default `app=<service>`, as a Kubernetes
    Deployment's pods carry); `token-file=PATH` keeps the join token out of `ps`."""
    values: dict[str, str] = {}
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        where = f"--workload {key}"
        if not sep:
            raise WorkloadError(f"--workload: {item!r} is not KEY=VALUE")
        if key.startswith("label."):
            if not key[6:]:
                raise WorkloadError(f"{where}: empty label name")
            labels[key[6:]] = value
        elif key in _FIELDS:
            values[key] = value
        else:
            raise WorkloadError(
                f"--workload: unknown field {key!r} (known: {', '.join(sorted(_FIELDS))}, label.KEY)"
            )
    return _spec(values, labels, "--workload")


def _spec(values: Mapping[str, Any], labels: Mapping[str, str], where: str) -> WorkloadSpec:
    name = str(values.get("name") or "")
    service = str(values.get("service") or "")
    if not name:
        raise WorkloadError(f"{where}: name is required")
    if not service:
        raise WorkloadError(f"{where} {name}: service is required")
    token = values.get("token")
    token_file = values.get("token-file") or values.get("tokenFile")
    if token_file:
        try:
            token = Path(str(token_file)).read_text().strip()
        except OSError as exc:
            raise WorkloadError(f"{where} {name}: cannot read token file: {exc.strerror}") from None
    app = values.get("app")
    inbound = values.get("inbound")
    outbound = values.get("outbound")
    source = values.get("source")
    return WorkloadSpec(
        name=name,
        service=service,
        namespace=str(values.get("namespace") or "default"),
        labels=dict(labels) or {"app": service},
        app=_address(str(app), f"{where} {name}.app") if app else None,
        source=_source(str(source), f"{where} {name}.source") if source else ANY_SOURCE,
        inbound=_address(str(inbound), f"{where} {name}.inbound") if inbound else None,
        outbound=_address(str(outbound), f"{where} {name}.outbound") if outbound else None,
        token=str(token) if token else None,
        app_health=str(values.get("app-health") or values.get("appHealth") or "") or None,
    )


_FILE_FIELDS = {
    "name",
    "service",
    "namespace",
    "labels",
    "app",
    "source",
    "inbound",
    "outbound",
    "token",
    "tokenFile",
    "appHealth",
}


def load_workloads(path: str) -> list[WorkloadSpec]:
    """A workloads file: `workloads: [{name, service, namespace, labels, app, source,
    inbound, token | tokenFile, appHealth}]` (YAML or JSON)."""
    import yaml  # only for the file: a node proxy given flags keeps the proxy lean

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise WorkloadError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{path}: not YAML: {exc}") from None
    items = data.get("workloads") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise WorkloadError(f"{path}: expected a mapping with a 'workloads' list")
    specs = []
    for i, item in enumerate(items):
        where = f"{path}: workloads[{i}]"
        if not isinstance(item, dict):
            raise WorkloadError(f"{where}: expected a mapping")
        unknown = set(item) - _FILE_FIELDS
        if unknown:
            raise WorkloadError(f"{where}.{sorted(unknown)[0]}: unknown field")
        labels = item.get("labels") or {}
        if not isinstance(labels, dict):
            raise WorkloadError(f"{where}.labels: expected a mapping")
        values = {k: v for k, v in item.items() if k != "labels"}
        for key in ("app", "inbound", "source", "port"):
            if isinstance(values.get(key), int):
                raise WorkloadError(f"{where}.{key}: expected a string")
        specs.append(_spec(values, {str(k): str(v) for k, v in labels.items()}, where))
    return specs


def check_workloads(specs: Iterable[WorkloadSpec]) -> list[WorkloadSpec]:
    """Refuse what would make connections ambiguous: names, sources, inbound addresses."""
    specs = list(specs)
    if not specs:
        raise WorkloadError("node mode needs at least one --workload (or --workloads FILE)")
    seen: dict[str, str] = {}
    for spec in specs:
        key = f"{spec.namespace}/{spec.name}"
        if key in seen:
            raise WorkloadError(f"workload {key} is declared twice")
        seen[key] = spec.name
    sources: dict[str, str] = {}
    shared = [spec for spec in specs if spec.outbound is None]  # on the shared listener
    for spec in shared:
        if spec.source in sources:
            which = spec.source or "any source (no source=)"
            raise WorkloadError(
                f"workloads {sources[spec.source]} and {spec.name} both claim {which}: "
                "each workload needs its own source address"
            )
        sources[spec.source] = spec.name
    if ANY_SOURCE in sources and len(shared) > 1:
        raise WorkloadError(
            f"workload {sources[ANY_SOURCE]} has no source=: with several workloads each "
            "needs the address its app connects from"
        )
    for kind in ("inbound", "outbound"):
        addresses = (getattr(spec, kind) for spec in specs)
        bound = [a for a in addresses if a is not None and a[1] != 0]  # port 0: any free one
        if len(set(bound)) != len(bound):
            raise WorkloadError(f"two workloads share an {kind} address")
    return specs


@dataclass(frozen=True)
class NodeOptions:
    """`plait proxy --mode node`: the shared settings (`base`) and the workloads."""

    base: ProxyOptions
    workloads: tuple[WorkloadSpec, ...]
    # `--cache FILE`: each workload caches its snapshot beside it, in FILE.<name>.json
    # (snapshot.json -> snapshot.alpha-0.json); None: no cache.
    cache: Path | None = None


class _Dispatch(asyncio.Protocol):
    """Protocol of one accepted outbound connection until `connection_made` hands it over."""

    __slots__ = ("node",)

    def __init__(self, node: NodeProxy) -> None:
        self.node = node

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        source = peer[0] if peer else ""
        if source.startswith("::ffff:"):
            source = source[7:]  # IPv4 on a dual-stack listener
        factory = self.node.outbound.get(source) or self.node.outbound.get(ANY_SOURCE)
        if factory is None:
            self.node.refused(source)
            transport.abort()  # type: ignore[attr-defined]
            return
        protocol = factory()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)

    # Never called: the connection's real protocol replaced this one in connection_made.
    def data_received(self, data: bytes) -> None:  # pragma: no cover
        pass

    def eof_received(self) -> bool:  # pragma: no cover
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        pass

    def pause_writing(self) -> None:  # pragma: no cover
        pass

    def resume_writing(self) -> None:  # pragma: no cover
        pass


class NodeProxy:
    """The workloads' proxies and the listeners they share. `async with` or `aclose()`."""

    def __init__(self, options: NodeOptions) -> None:
        self.options = options
        self.specs = check_workloads(options.workloads)
        base = options.base
        self.access_log = (
            None if base.access_log == "off" else AccessLog(base.access_log, base.access_log_sample)
        )
        self.proxies: dict[str, Proxy] = {}
        # What serves an outbound connection, by the source address of its workload's app.
        self.outbound: dict[str, Callable[[], asyncio.Protocol]] = {}
        self.servers: list[asyncio.Server] = []
        self.addresses: dict[str, Address] = {}
        self.refused_total = 0
        self._ready = False

    def _workload_options(self, spec: WorkloadSpec, index: int) -> ProxyOptions:
        base = self.options.base
        inbound = spec.inbound
        if inbound is None and spec.app is not None and base.inbound is not None:
            host, port = base.inbound
            inbound = (host, port + index if port else 0)
        state_dir = base.state_dir / spec.name if base.state_dir is not None else None
        cache = self.options.cache
        if cache is not None:
            cache = cache.with_name(f"{cache.stem}.{spec.name}{cache.suffix}")
        advertise = None
        if base.advertise is not None and inbound is not None and inbound[0] in WILDCARDS:
            # --advertise names the node's host; each workload keeps its own port (a workload
            # listening on an address of its own is reached there).
            advertise = (base.advertise[0], inbound[1])
        node = Node(
            name=spec.name, service=spec.service, namespace=spec.namespace, labels=spec.labels
        )
        return replace(
            base,
            snapshot=replace(base.snapshot, node=node),
            mode="node",
            outbound=spec.outbound,
            inbound=inbound,
            admin=None,
            prometheus=None,
            app=spec.app,
            access_log="off",  # the node's one access log is shared (see start)
            advertise=advertise if advertise and advertise[1] else None,
            app_health_path=spec.app_health,
            state_dir=state_dir,
            cache_path=cache,
            join_token=spec.token,
            # One mesh DNS server per node (the first workload's: every workload sees the
            # same services); TCP listeners are per sidecar, not per node.
            dns=base.dns if index == 0 else None,
            tcp_outbound=(),
        )

    async def start(self) -> None:
        """Bind the shared listeners, start every workload's proxy; returns when all listen."""
        loop = asyncio.get_running_loop()
        base = self.options.base
        if state := base.state_dir:
            state.mkdir(mode=0o700, parents=True, exist_ok=True)
        for index, spec in enumerate(self.specs):
            proxy = Proxy(self._workload_options(spec, index))
            proxy.access_log = self.access_log
            self.proxies[spec.name] = proxy
        for spec in self.specs:
            if spec.outbound is not None:
                continue  # its own outbound listener, bound by its proxy
            proxy = self.proxies[spec.name]
            # The outbound context exists before the inbound binds and the agent says hello.
            ctx = proxy.make_context(OUTBOUND)
            self.outbound[spec.source] = proxy.connection_factory(ctx)
        if base.outbound is not None and self.outbound:
            server = await loop.create_server(
                lambda: _Dispatch(self),
                base.outbound[0],
                base.outbound[1],
                backlog=1024,
            )
            self.servers.append(server)
            self.addresses[OUTBOUND] = server.sockets[0].getsockname()[:2]
        for spec in self.specs:
            proxy = self.proxies[spec.name]
            await proxy.start()
            for kind, address in proxy.addresses.items():
                self.addresses[f"{spec.name}.{kind}"] = address
        if base.admin is not None:
            admin = AdminServer(lambda: self.ready, self.stats, self.config_dump, self.prometheus)
            server = await asyncio.start_server(admin.handle, *base.admin)
            self.servers.append(server)
            self.addresses["admin"] = server.sockets[0].getsockname()[:2]
        if base.prometheus is not None:
            scrape = AdminServer(
                lambda: True, self.stats, self.config_dump, self.prometheus, metrics_only=True
            )
            server = await asyncio.start_server(scrape.handle, *base.prometheus)
            self.servers.append(server)
            self.addresses["prometheus"] = server.sockets[0].getsockname()[:2]
        self._ready = True

    @property
    def ready(self) -> bool:
        """Every workload's proxy is ready (configured, holding its certificate)."""
        return self._ready and all(p.ready for p in self.proxies.values())

    def refused(self, source: str) -> None:
        """An outbound connection from an address no workload claims: closed, counted."""
        self.refused_total += 1
        n = self.refused_total
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th...: bounded log volume
            log.warning(
                "outbound connection from %s refused: no workload has that source (%d so far)",
                source,
                n,
            )

    # admin views ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        workloads = {name: proxy.stats() for name, proxy in self.proxies.items()}
        return {
            "listeners": {
                f"{name}.{kind}": counters
                for name, stats in workloads.items()
                for kind, counters in stats["listeners"].items()
            },
            "hosts": [
                {**host, "address": f"{name}/{host['address']}"}
                for name, stats in workloads.items()
                for host in stats["hosts"]
            ],
            "outbound_refused_unknown_source": self.refused_total,
            "workloads": workloads,
        }

    def config_dump(self) -> dict[str, Any]:
        return {
            "mode": "node",
            "listeners": {k: f"{a[0]}:{a[1]}" for k, a in self.addresses.items()},
            "workloads": {
                name: {
                    **proxy.config_dump(),
                    "source": spec.source or "*",
                }
                for spec in self.specs
                for name, proxy in [(spec.name, self.proxies[spec.name])]
            },
        }

    def prometheus(self) -> bytes:
        """Every workload's metrics in one exposition, each series labelled with its
        workload (`node_workload`), HELP/TYPE once per family."""
        families: dict[str, MetricFamily] = {}
        for name, proxy in self.proxies.items():
            label = ("node_workload", name)
            for family in proxy.metrics.registry.collect():
                series = [((label, *labels), value) for labels, value in family.series]
                known = families.get(family.name)
                if known is None:
                    families[family.name] = family._replace(series=series)
                else:
                    known.series.extend(series)
        return render_families(families.values())

    # lifecycle -----------------------------------------------------------------------
    async def drain(self) -> None:
        """As a sidecar drains (see `Proxy.drain`), every workload at once: all say `bye`,
        the node keeps accepting while callers learn it, then stops and lets streams end."""
        base = self.options.base
        loop = asyncio.get_running_loop()
        deadline = loop.time() + base.drain_timeout
        self._ready = False
        said = await asyncio.gather(*(p.begin_drain() for p in self.proxies.values()))
        if any(said):
            await asyncio.sleep(min(base.deregister_delay, base.drain_timeout))
        for server in self.servers:
            server.close()
        for proxy in self.proxies.values():
            proxy.stop_accepting()
        await asyncio.gather(*(p.wait_drained(deadline) for p in self.proxies.values()))

    async def aclose(self) -> None:
        self._ready = False
        for server in self.servers:
            server.close()
        for proxy in self.proxies.values():
            proxy.access_log = None  # shared: closed once, below
            await proxy.aclose()
        if self.access_log is not None:
            self.access_log.close()

    async def __aenter__(self) -> NodeProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def serve(options: NodeOptions, on_ready: Callable[[NodeProxy], None] | None = None) -> None:
    """Run a node proxy until SIGTERM/SIGINT, then drain and exit."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    node = NodeProxy(options)
    try:
        await node.start()
        if on_ready is not None:
            on_ready(node)
        await stop.wait()
        await node.drain()
    finally:
        await node.aclose()
