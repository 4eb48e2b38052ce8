"""`plait up FILE`: run a mesh file on this machine: each app beside a sidecar proxy, a gateway.

Plan (pure): every app replica gets an app port and its proxy's outbound, inbound and admin
ports; each proxy gets a snapshot compiled for it, written under the run dir with its logs.
Run: a `Supervisor` starts the proxies, then the apps, then the gateway, each ready-checked, and
owns them until SIGINT or SIGTERM, when it stops them all and `plait up` exits 0 (a requested
stop is a success, as with `docker compose up`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plait.config.errors import ConfigError, ConfigErrors
from plait.config.mesh import AppSpec, MeshFile, load_mesh_file
from plait.config.snapshot import Node, Snapshot
from plait.control.compiler import CompileError, Instance, compile_snapshot
from plait.local.ports import PortAllocator
from plait.local.supervisor import (
    HttpReady,
    ProcessSpec,
    ProcessState,
    ReadyCheck,
    Supervisor,
    SupervisorError,
    TcpReady,
    http_get,
)
from plait.local.table import LiveTable, Row

__all__ = ["add_arguments", "run"]

HOST = "127.0.0.1"  # everything binds loopback only: `plait up` is a developer's sandbox
SNAPSHOT_VERSION = "1"  # static until the control plane pushes new ones
REFRESH = 1.0  # seconds between table redraws on a terminal


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="mesh file: apps and mesh resources")
    parser.add_argument(
        "--run-dir", help="snapshots and logs go here (default .plait/run/<mesh name>)"
    )
    parser.add_argument(
        "--gateway-port",
        type=int,
        metavar="PORT",
        help=f"gateway listener port on {HOST} (default: the mesh file's; 0 picks a free one)",
    )
    parser.add_argument("--no-table", action="store_true", help="print event lines only")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long each process may take to become ready (default 30)",
    )


@dataclass(frozen=True)
class Sidecar:
    """One app replica and its proxy, with the ports allocated to them."""

    app: AppSpec
    instance: str
    app_port: int
    outbound: int
    inbound: int
    admin: int

    @property
    def version(self) -> str:
        return self.app.labels.get("version", "")

    def node(self) -> Node:
        return Node(self.instance, self.app.service, self.app.namespace, self.app.labels)


@dataclass(frozen=True)
class Gateway:
    """The gateway proxy: its name (the Gateway resource's) and ports."""

    name: str
    namespace: str
    port: int
    admin: int

    def node(self) -> Node:
        return Node(self.name, "", self.namespace, {}, gateway=self.name)


def allocate(
    mesh: MeshFile, ports: PortAllocator, gateway_port: int | None
) -> tuple[list[Sidecar], Gateway | None]:
    """Allocate the ports of every app replica, its proxy and the gateway."""
    sidecars = [
        Sidecar(app, instance, *ports.allocate(4))
        for app in mesh.apps
        for instance in app.instance_names()
    ]
    gateway = None
    if mesh.gateway is not None:
        port = mesh.gateway.port if gateway_port is None else gateway_port
        gateway = Gateway(mesh.gateway.name, mesh.namespace, ports.reserve(port), *ports.allocate())
    return sidecars, gateway


def snapshots(
    mesh: MeshFile, sidecars: Sequence[Sidecar], gateway: Gateway | None
) -> dict[str, Snapshot]:
    """One snapshot per proxy, keyed by instance name; endpoints are the proxies' inbounds."""
    instances = [
        Instance(s.instance, s.app.service, s.app.namespace, s.app.labels, HOST, s.inbound)
        for s in sidecars
    ]
    nodes = [(s.instance, s.node()) for s in sidecars]
    if gateway is not None:
        nodes.append((gateway.name, gateway.node()))
    return {
        name: compile_snapshot(mesh.resources, instances, node, SNAPSHOT_VERSION)
        for name, node in nodes
    }


def _proxy_spec(name: str, run_dir: Path, admin: int, *flags: str) -> ProcessSpec:
    """A proxy on `run_dir/snapshot.json`, logging there, ready when its admin says so."""
    argv = (
        sys.executable,
        "-m",
        "plait",
        "proxy",
        f"--config={run_dir / 'snapshot.json'}",
        f"--admin={HOST}:{admin}",
        f"--access-log={run_dir / 'access.log'}",
        *flags,
    )
    ready = HttpReady(f"http://{HOST}:{admin}/ready")
    return ProcessSpec(f"{name}/proxy", argv, {}, ready, str(run_dir / "proxy.log"))


def _app_spec(s: Sidecar, run_dir: Path) -> ProcessSpec:
    """The app, calling out through its proxy (HTTP_PROXY) and logging to `run_dir/app.log`."""
    proxy_url = f"http://{HOST}:{s.outbound}"
    env = {
        **s.app.env,
        "PORT": str(s.app_port),
        "HOST": HOST,
        "HTTP_PROXY": proxy_url,
        "http_proxy": proxy_url,  # curl and others read only the lower-case name
        "NO_PROXY": "",  # an inherited NO_PROXY=127.0.0.1 would bypass the mesh
        "no_proxy": "",
        "PLAIT_SERVICE": s.app.service,
        "PLAIT_INSTANCE": s.instance,
        "PLAIT_NAMESPACE": s.app.namespace,
    }
    path = s.app.health.http_path
    ready: ReadyCheck = (
        HttpReady(f"http://{HOST}:{s.app_port}{path}") if path else TcpReady(HOST, s.app_port)
    )
    return ProcessSpec(f"{s.instance}/app", s.app.command, env, ready, str(run_dir / "app.log"))


def process_specs(
    run_dir: Path, sidecars: Sequence[Sidecar], gateway: Gateway | None
) -> list[list[ProcessSpec]]:
    """Start order: all sidecar proxies, then all apps, then the gateway (each list at once)."""
    proxies = [
        _proxy_spec(
            s.instance,
            run_dir / s.instance,
            s.admin,
            "--mode=sidecar",
            f"--outbound={HOST}:{s.outbound}",
            f"--inbound={HOST}:{s.inbound}",
            f"--app={HOST}:{s.app_port}",
        )
        for s in sidecars
    ]
    groups = [proxies, [_app_spec(s, run_dir / s.instance) for s in sidecars]]
    if gateway is not None:
        listen = f"--gateway-listen={HOST}:{gateway.port}"
        d = run_dir / gateway.name
        groups.append([_proxy_spec(gateway.name, d, gateway.admin, "--mode=gateway", listen)])
    return groups


def gateway_urls(gateway: Gateway, snapshot: Snapshot) -> list[str]:
    """What to open: each Exact path routed by this gateway, else its root."""
    paths = [
        match.path.value
        for route in snapshot.routes
        if route.parent_kind == "Gateway" and route.parent_name == gateway.name
        for rule in route.rules
        for match in rule.matches
        if match.path is not None and match.path.type == "Exact"
    ]
    return [f"http://{HOST}:{gateway.port}{p}" for p in dict.fromkeys(paths or ["/"])]


def _combined(app: ProcessState, proxy: ProcessState) -> str:
    """One word for an instance: the worse of its two processes, naming which one it is."""
    order = ("failed", "backoff", "starting", "stopped", "ready")
    if app.state == proxy.state:
        return app.state
    worst, who = min((app.state, "app"), (proxy.state, "proxy"), key=lambda p: order.index(p[0]))
    return f"{who} {worst}"


async def _requests(admin: int, listener: str) -> int | None:
    """The listener's `downstream_rq_total` from the proxy's admin, None when unknown."""
    try:
        status, body = await http_get(f"http://{HOST}:{admin}/stats?format=json")
        count = json.loads(body)["listeners"][listener]["downstream_rq_total"]
    except (OSError, TimeoutError, ValueError, KeyError, TypeError):
        return None
    return count if status == 200 and isinstance(count, int) else None


async def _rows(sup: Supervisor, sidecars: Sequence[Sidecar], gateway: Gateway | None) -> list[Row]:
    states = {s.name: s for s in sup.states()}
    admins = [(s.admin, "inbound") for s in sidecars]
    if gateway is not None:
        admins.append((gateway.admin, "gateway"))
    counts = await asyncio.gather(*(_requests(admin, listener) for admin, listener in admins))
    rows = []
    for s, count in zip(sidecars, counts, strict=False):
        app, proxy = states[f"{s.instance}/app"], states[f"{s.instance}/proxy"]
        restarts = app.restarts + proxy.restarts
        rows.append(
            Row(s.app.service, s.instance, s.version, _combined(app, proxy), restarts, count)
        )
    if gateway is not None:
        proxy = states[f"{gateway.name}/proxy"]
        rows.append(Row(gateway.name, "gateway", "", proxy.state, proxy.restarts, counts[-1]))
    return rows


async def _unless(stop: asyncio.Event, coro: Coroutine[Any, Any, None]) -> bool:
    """Run `coro` unless `stop` is set first (then cancel it): True if it completed."""
    task = asyncio.create_task(coro)
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, stopped):
            t.cancel()
        await asyncio.gather(task, stopped, return_exceptions=True)
    if task.cancelled():
        return False
    task.result()  # raises what `coro` raised
    return True


@dataclass(frozen=True)
class Plan:
    """Everything `plait up` will run, with snapshots already written under `run_dir`."""

    run_dir: Path
    sidecars: list[Sidecar]
    gateway: Gateway | None
    specs: list[list[ProcessSpec]]
    urls: list[str]


def prepare(mesh: MeshFile, run_dir: Path, gateway_port: int | None) -> Plan:
    """Allocate ports, compile and write each proxy's snapshot, build the process specs."""
    sidecars, gateway = allocate(mesh, PortAllocator(HOST), gateway_port)
    snaps = snapshots(mesh, sidecars, gateway)
    for name, snap in snaps.items():
        d = run_dir / name
        d.mkdir(parents=True, exist_ok=True)
        for old_log in d.glob("*.log"):  # a fresh run starts fresh logs (and error log tails)
            old_log.unlink()
        (d / "snapshot.json").write_text(json.dumps(snap.to_dict(), indent=2))
    urls = gateway_urls(gateway, snaps[gateway.name]) if gateway else []
    return Plan(run_dir, sidecars, gateway, process_specs(run_dir, sidecars, gateway), urls)


async def serve(plan: Plan, *, show_table: bool, ready_timeout: float) -> int:
    """Start everything, show the table until SIGINT/SIGTERM, then stop everything."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tty = sys.stdout.isatty()
    table = LiveTable(sys.stdout, tty=tty) if show_table else None
    emit: Callable[[str], None] = table.event if table else lambda line: print(line, flush=True)
    emit(f"Starting {sum(map(len, plan.specs))} processes; logs in {plan.run_dir}")
    async with Supervisor(on_event=emit) as sup:
        try:
            started = await _unless(stop, sup.start(plan.specs, ready_timeout=ready_timeout))
        except SupervisorError as e:
            print(f"plait up: {e}", file=sys.stderr, flush=True)
            return 1
        if started:
            if table:
                table.update(await _rows(sup, plan.sidecars, plan.gateway))
            for url in plan.urls:
                emit(f"Open {url}")
            emit("All ready. Stop with Ctrl-C")
        while not stop.is_set():
            await _unless(stop, asyncio.sleep(REFRESH))
            if table and tty:
                table.update(await _rows(sup, plan.sidecars, plan.gateway))
        emit("Stopping.")
    if table and tty:  # leave the final states on screen
        table.update(await _rows(sup, plan.sidecars, plan.gateway))
    emit("Stopped.")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        mesh = load_mesh_file(args.file)
        plan = prepare(mesh, Path(args.run_dir or f".plait/run/{mesh.name}"), args.gateway_port)
    except (ConfigError, ConfigErrors) as e:
        print(e, file=sys.stderr)
        return 2
    except CompileError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"plait up: {e}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(
            serve(plan, show_table=not args.no_table, ready_timeout=args.ready_timeout)
        )
    except KeyboardInterrupt:  # before our handler was installed; nothing is left running
        return 0
