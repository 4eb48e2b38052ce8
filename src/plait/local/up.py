"""`plait up FILE`: run a mesh file on this machine: a control plane, each app beside a
sidecar proxy, a gateway.

Plan (pure): every app replica gets an app port and its proxy's outbound, inbound and admin
ports; the control plane gets its API port (the mesh file's, 15014 by default) and a push port.
Run: a `Supervisor` starts the control plane (with a fresh data dir), the mesh file's resources
are applied through its API, the CLI is pointed at it, then the proxies start (each registers
its workload and receives its config by push), then the apps, then the gateway, each
ready-checked. It owns them until SIGINT or SIGTERM, when it stops them all and `plait up`
exits 0 (a requested stop is a success, as with `docker compose up`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from plait.cli.client import ApiClient, ClientError
from plait.cli.settings import save_cli_settings
from plait.config.errors import ConfigError, ConfigErrors
from plait.config.mesh import AppSpec, MeshFile, load_mesh_file
from plait.config.snapshot import Node, Snapshot
from plait.control.compiler import CompileError, Instance, compile_snapshot
from plait.control.kinds import to_data
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
SNAPSHOT_VERSION = "plan"  # the local compile only checks the mesh and finds gateway URLs
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
    parser.add_argument(
        "--control-port",
        type=int,
        metavar="PORT",
        help=f"control plane API port on {HOST} (default: the mesh file's, 15014; 0 picks one)",
    )
    parser.add_argument(
        "--no-cli-settings",
        action="store_true",
        help="do not point the CLI (~/.config/plait/config.json) at this mesh's control plane",
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
    tcp_ports: tuple[int, ...] = ()  # one local port per app.tcp_outbound entry

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
        # Its identity's service is the Gateway's name (spiffe://.../sa/<gateway>).
        return Node(self.name, self.name, self.namespace, {}, gateway=self.name)


@dataclass(frozen=True)
class Control:
    """The control plane: its API port (for the CLI), push port (for proxies), data dir."""

    api: int
    push: int
    data_dir: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.api}"


def _sidecar(app: AppSpec, instance: str, ports: PortAllocator) -> Sidecar:
    app_port, outbound, inbound, admin = ports.allocate(4)
    tcp = tuple(ports.allocate(len(app.tcp_outbound)))
    return Sidecar(app, instance, app_port, outbound, inbound, admin, tcp)


def allocate(
    mesh: MeshFile, ports: PortAllocator, gateway_port: int | None
) -> tuple[list[Sidecar], Gateway | None]:
    """Allocate the ports of every app replica, its proxy and the gateway."""
    sidecars = [
        _sidecar(app, instance, ports) for app in mesh.apps for instance in app.instance_names()
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


def _control_spec(control: Control, run_dir: Path) -> ProcessSpec:
    argv = (
        sys.executable,
        "-m",
        "plait",
        "control",
        f"--data-dir={control.data_dir}",
        f"--api={HOST}:{control.api}",
        f"--push={HOST}:{control.push}",
    )
    ready = HttpReady(f"{control.url}/healthz")
    return ProcessSpec("control", argv, {}, ready, str(run_dir / "control.log"))


def _proxy_spec(
    name: str,
    run_dir: Path,
    admin: int,
    control: Control,
    node: Node,
    *flags: str,
    tracing: tuple[str, float] | None = None,
) -> ProcessSpec:
    """A proxy fed by the control plane, caching its snapshot and logging under `run_dir`,
    ready when its admin says so (listening and configured)."""
    labels = ",".join(f"{k}={v}" for k, v in sorted(node.labels.items()))
    argv = (
        sys.executable,
        "-m",
        "plait",
        "proxy",
        f"--control={HOST}:{control.push}",
        f"--ca-bundle={control.data_dir / 'trust-bundle.pem'}",
        f"--state-dir={run_dir / 'identity'}",
        f"--cache={run_dir / 'snapshot.json'}",
        f"--name={node.name}",
        f"--namespace={node.namespace}",
        f"--admin={HOST}:{admin}",
        f"--access-log={run_dir / 'access.log'}",
        *((f"--tracing-endpoint={tracing[0]}", f"--trace-sample={tracing[1]}") if tracing else ()),
        *((f"--service={node.service}",) if node.service else ()),
        *((f"--labels={labels}",) if labels else ()),
        *flags,
    )
    ready = HttpReady(f"http://{HOST}:{admin}/ready")
    # The join token is filled in by `configure` once the control plane can issue it; a
    # proxy restarted later has its certificate in its state dir and needs no token.
    env: dict[str, str] = {"PLAIT_TOKEN_FOR": f"{node.namespace}/{node.service}"}
    return ProcessSpec(f"{name}/proxy", argv, env, ready, str(run_dir / "proxy.log"))


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
        **{t.env: f"{HOST}:{p}" for t, p in zip(s.app.tcp_outbound, s.tcp_ports, strict=True)},
    }
    path = s.app.health.http_path
    ready: ReadyCheck = (
        HttpReady(f"http://{HOST}:{s.app_port}{path}") if path else TcpReady(HOST, s.app_port)
    )
    return ProcessSpec(f"{s.instance}/app", s.app.command, env, ready, str(run_dir / "app.log"))


def _node_spec(
    run_dir: Path,
    control: Control,
    sidecars: Sequence[Sidecar],
    admin: int,
    namespace: str,
    tracing: tuple[str, float] | None = None,
) -> ProcessSpec:
    """Node mode: one proxy for every app instance. Each workload keeps the ports a sidecar
    would have (its app calls out through its own outbound port: local apps all connect
    from 127.0.0.1), its own identity (a join token each, written to a file) and inbound."""
    d = run_dir / "node"
    tokens = d / "tokens"
    workloads = []
    wanted: dict[str, str] = {}
    for s in sidecars:
        labels = "".join(f",label.{k}={v}" for k, v in sorted(s.app.labels.items()))
        health = f",app-health={s.app.health.http_path}" if s.app.health.http_path else ""
        token_file = tokens / s.instance
        wanted[str(token_file)] = f"{s.app.namespace}/{s.app.service}"
        workloads.append(
            f"--workload=name={s.instance},service={s.app.service},namespace={s.app.namespace},"
            f"app={HOST}:{s.app_port},outbound={HOST}:{s.outbound},inbound={HOST}:{s.inbound},"
            f"token-file={token_file}{health}{labels}"
        )
    spec = _proxy_spec(
        "node", d, admin, control, Node("node", "", namespace), "--mode=node", *workloads,
        tracing=tracing,
    )  # fmt: skip
    env = dict(spec.env)
    env.pop("PLAIT_TOKEN_FOR", None)
    env["PLAIT_TOKEN_FILES"] = json.dumps(wanted)  # written by `configure`
    return replace(spec, env=env)


def process_specs(
    run_dir: Path,
    control: Control,
    sidecars: Sequence[Sidecar],
    gateway: Gateway | None,
    tracing: tuple[str, float] | None = None,
    node_admin: int | None = None,
) -> list[list[ProcessSpec]]:
    """Start order after the control plane: all sidecar proxies (or the node proxy, when
    `node_admin` is given), then all apps, then the gateway (each list at once)."""
    proxies = [
        _proxy_spec(
            s.instance,
            run_dir / s.instance,
            s.admin,
            control,
            s.node(),
            "--mode=sidecar",
            f"--outbound={HOST}:{s.outbound}",
            f"--inbound={HOST}:{s.inbound}",
            f"--app={HOST}:{s.app_port}",
            *((f"--app-health={s.app.health.http_path}",) if s.app.health.http_path else ()),
            *(
                f"--tcp-outbound={HOST}:{p}={t.service}.{s.app.namespace}:{t.port}"
                for t, p in zip(s.app.tcp_outbound, s.tcp_ports, strict=True)
            ),
            tracing=tracing,
        )
        for s in sidecars
    ]
    if node_admin is not None and sidecars:
        namespace = sidecars[0].app.namespace
        proxies = [_node_spec(run_dir, control, sidecars, node_admin, namespace, tracing)]
    groups = [proxies, [_app_spec(s, run_dir / s.instance) for s in sidecars]]
    if gateway is not None:
        d = run_dir / gateway.name
        groups.append(
            [
                _proxy_spec(
                    gateway.name,
                    d,
                    gateway.admin,
                    control,
                    gateway.node(),
                    "--mode=gateway",
                    f"--gateway-listen={HOST}:{gateway.port}",
                    f"--gateway-name={gateway.name}",
                    tracing=tracing,
                )
            ]
        )
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


async def _rows(
    sup: Supervisor,
    sidecars: Sequence[Sidecar],
    gateway: Gateway | None,
    node_admin: int | None = None,
) -> list[Row]:
    states = {s.name: s for s in sup.states()}
    admins = [
        (s.admin, "inbound") if node_admin is None else (node_admin, f"{s.instance}.inbound")
        for s in sidecars
    ]
    if gateway is not None:
        admins.append((gateway.admin, "gateway"))
    counts = await asyncio.gather(*(_requests(admin, listener) for admin, listener in admins))
    rows = []
    for s, count in zip(sidecars, counts, strict=False):
        app = states[f"{s.instance}/app"]
        proxy = states.get(f"{s.instance}/proxy") or states["node/proxy"]
        restarts = app.restarts + proxy.restarts
        rows.append(
            Row(s.app.service, s.instance, s.version, _combined(app, proxy), restarts, count)
        )
    if gateway is not None:
        proxy = states[f"{gateway.name}/proxy"]
        rows.append(Row(gateway.name, "gateway", "", proxy.state, proxy.restarts, counts[-1]))
    control = states.get("control")
    if control is not None:
        rows.insert(0, Row("control", "control", "", control.state, control.restarts, None))
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
    """Everything `plait up` will run; directories under `run_dir` are ready."""

    run_dir: Path
    mesh: MeshFile
    control: Control
    sidecars: list[Sidecar]
    gateway: Gateway | None
    specs: list[list[ProcessSpec]]
    urls: list[str]
    node_admin: int | None = None  # proxyMode: node: the node proxy's admin port


def prepare(
    mesh: MeshFile, run_dir: Path, gateway_port: int | None, control_port: int | None = None
) -> Plan:
    """Allocate ports, check the mesh compiles, prepare run directories, build the specs."""
    ports = PortAllocator(HOST)
    sidecars, gateway = allocate(mesh, ports, gateway_port)
    api = ports.reserve(mesh.control_port if control_port is None else control_port)
    (push,) = ports.allocate()
    control = Control(api, push, data_dir=run_dir / "control")
    node_admin = ports.allocate()[0] if mesh.proxy_mode == "node" else None
    snaps = snapshots(mesh, sidecars, gateway)  # raises CompileError before anything starts
    # A local run starts from a clean control plane: no registry entries of a previous run.
    shutil.rmtree(control.data_dir, ignore_errors=True)
    for name in [*snaps, "control", *(("node",) if node_admin is not None else ())]:
        d = run_dir / name
        d.mkdir(parents=True, exist_ok=True)
        for old in [*d.glob("*.log"), *d.glob("snapshot*.json")]:  # fresh logs, no stale cache
            old.unlink()
    urls = gateway_urls(gateway, snaps[gateway.name]) if gateway else []
    specs = [
        [_control_spec(control, run_dir / "control")],
        *process_specs(run_dir, control, sidecars, gateway, mesh.tracing, node_admin),
    ]
    return Plan(run_dir, mesh, control, sidecars, gateway, specs, urls, node_admin)


def configure(plan: Plan, *, save_settings: bool) -> None:
    """Apply the mesh file's resources through the API; point the CLI at this control plane."""
    token = (plan.control.data_dir / "admin-token").read_text().strip()
    client = ApiClient(plan.control.url, token)
    body = json.dumps([to_data(r) for r in plan.mesh.resources]).encode()
    client.apply(body, "application/json")
    for group in plan.specs[1:]:
        for spec in group:
            files = spec.env.get("PLAIT_TOKEN_FILES")
            for path, owner in (json.loads(files) if files else {}).items():
                namespace, service = owner.split("/", 1)
                token_file = Path(path)
                token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                token_file.unlink(missing_ok=True)
                token_file.touch(mode=0o600)
                token_file.write_text(client.create_token(service, namespace, 3600)["token"])
            wanted = spec.env.get("PLAIT_TOKEN_FOR")
            if wanted is not None:
                namespace, service = wanted.split("/", 1)
                env = spec.env
                assert isinstance(env, dict)
                env["PLAIT_JOIN_TOKEN"] = client.create_token(service, namespace, 3600)["token"]
    if save_settings:
        save_cli_settings(plan.control.url, token)


async def _start(sup: Supervisor, plan: Plan, ready_timeout: float, save_settings: bool) -> None:
    await sup.start(plan.specs[:1], ready_timeout=ready_timeout)
    await asyncio.to_thread(configure, plan, save_settings=save_settings)
    await sup.start(plan.specs[1:], ready_timeout=ready_timeout)
    await _converged(plan, ready_timeout)


async def _converged(plan: Plan, timeout: float) -> None:
    """Wait until every app is healthy as its proxy reports it and every proxy runs the
    latest config: only then does the mesh answer as a user expects."""
    client = ApiClient(plan.control.url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wanted = {s.instance for s in plan.sidecars}
    while True:
        try:
            revision = (await asyncio.to_thread(client.health))["revision"]
            proxies = await asyncio.to_thread(client.proxies)
        except ClientError:
            revision, proxies = 0, []
        healthy = {p["name"] for p in proxies if p.get("health") == "healthy"}
        synced = all(p.get("synced") and p.get("compiled_revision", 0) >= revision for p in proxies)
        if wanted <= healthy and synced:
            return
        if loop.time() > deadline:
            missing = ", ".join(sorted(wanted - healthy)) or "config sync"
            raise SupervisorError(
                f"the mesh did not converge in {timeout:.0f} s (waiting for {missing})"
            )
        await asyncio.sleep(0.1)


async def serve(
    plan: Plan, *, show_table: bool, ready_timeout: float, save_settings: bool = True
) -> int:
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
            started = await _unless(stop, _start(sup, plan, ready_timeout, save_settings))
        except SupervisorError as e:
            print(f"plait up: {e}", file=sys.stderr, flush=True)
            return 1
        except (ClientError, OSError) as e:
            print(
                f"plait up: configuring the control plane failed: {e}", file=sys.stderr, flush=True
            )
            return 1
        if started:
            if table:
                table.update(await _rows(sup, plan.sidecars, plan.gateway, plan.node_admin))
            emit(f"Control plane {plan.control.url} (plait status, plait apply -f ...)")
            emit(f"Dashboard {plan.control.url}/ui")
            for url in plan.urls:
                emit(f"Open {url}")
            emit("All ready. Stop with Ctrl-C")
        while not stop.is_set():
            await _unless(stop, asyncio.sleep(REFRESH))
            if table and tty:
                table.update(await _rows(sup, plan.sidecars, plan.gateway, plan.node_admin))
        emit("Stopping.")
    if table and tty:  # leave the final states on screen
        table.update(await _rows(sup, plan.sidecars, plan.gateway, plan.node_admin))
    emit("Stopped.")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        mesh = load_mesh_file(args.file)
        run_dir = Path(args.run_dir or f".plait/run/{mesh.name}")
        plan = prepare(mesh, run_dir, args.gateway_port, args.control_port)
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
            serve(
                plan,
                show_table=not args.no_table,
                ready_timeout=args.ready_timeout,
                save_settings=not args.no_cli_settings,
            )
        )
    except KeyboardInterrupt:  # before our handler was installed; nothing is left running
        return 0
