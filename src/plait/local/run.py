"""`plait run -- CMD`: one app with its sidecar, on a VM or a bare host.

Theory of operation (Istio's holdApplicationUntilProxyStarts plus its pod shutdown order):

1. start the sidecar (`plait proxy`, marking its upstream sockets when capture is on);
2. wait until its admin `/ready` answers 200 (listening, configured, holding a certificate);
   a sidecar that exits or is not ready in time ends the run before the app starts;
3. install the capture rules (`--capture`), then start the app; without capture the app gets
   `HTTP_PROXY` pointing at the outbound listener (explicit proxying, unless it set its own);
4. forward SIGINT/SIGTERM to the app; when the app exits, SIGTERM the sidecar, which drains
   (finishes requests in flight, then exits), then remove the capture rules: the app is gone
   before its calls can escape the mesh, and the rules go even when the app crashed;
5. exit with the app's status (128 + N when a signal N ended it).

If the sidecar dies first, the app is stopped too (it would be cut off from the mesh) and the
run exits 1. Each child runs in its own process group, so a terminal's Ctrl-C reaches only
`plait run` (which forwards it to the app once). Both children ask the kernel for SIGTERM if
`plait run` itself is killed
(`PR_SET_PDEATHSIG`), so no app outlives it; capture rules left by a `kill -9` only cover the
service VIP range (see `capture`), and `plait capture remove` clears them.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from plait.local.capture import DEFAULT_INCLUDE, CaptureError, CaptureSpec, install, remove

__all__ = ["RunOptions", "add_arguments", "proxy_argv", "run", "run_app"]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL = 0.05  # 50 ms: how often the children are checked
# 1337: Istio's proxy uid, reused as the SO_MARK so rules read familiar.
DEFAULT_MARK = 1337
STOP_GRACE = 10.0  # seconds an app gets after SIGTERM before SIGKILL


@dataclass(frozen=True)
class RunOptions:
    command: list[str]
    service: str = ""
    namespace: str = "default"
    labels: str = ""
    port: int | None = None  # the app's port: enables the sidecar's inbound listener
    capture: bool = False
    control: str | None = None  # host:port of the control plane's push listener
    join_token: str | None = None
    ca_bundle: str | None = None
    state_dir: str | None = None
    outbound: str = "127.0.0.1:15001"
    inbound: str = "127.0.0.1:15006"
    admin: str = "127.0.0.1:15000"
    advertise: str | None = None
    dns: str | None = None
    mark: int = DEFAULT_MARK
    include_cidrs: tuple[str, ...] = DEFAULT_INCLUDE
    exclude_cidrs: tuple[str, ...] = ()
    capture_inbound: bool = False
    netns: str | None = None  # where the capture rules go (None: this process's namespace)
    ready_timeout: float = 30.0
    drain_timeout: float = 5.0
    proxy_args: list[str] = field(default_factory=list)


def _port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def proxy_argv(o: RunOptions) -> list[str]:
    """The sidecar's command line."""
    argv = [sys.executable, "-m", "plait", "proxy", "--mode", "sidecar"]
    argv += [f"--outbound={o.outbound}", f"--admin={o.admin}"]
    argv += [f"--drain-timeout={o.drain_timeout}"]
    if o.port is not None:
        argv += [f"--inbound={o.inbound}", f"--app=127.0.0.1:{o.port}"]
    if o.service:
        argv.append(f"--service={o.service}")
    if o.namespace != "default":
        argv.append(f"--namespace={o.namespace}")
    if o.labels:
        argv.append(f"--labels={o.labels}")
    if o.control:
        argv.append(f"--control={o.control}")
    if o.ca_bundle:
        argv.append(f"--ca-bundle={o.ca_bundle}")
    if o.state_dir:
        argv.append(f"--state-dir={o.state_dir}")
    if o.advertise:
        argv.append(f"--advertise={o.advertise}")
    if o.dns:
        argv.append(f"--dns={o.dns}")
    if o.capture:
        argv.append(f"--mark={o.mark}")
    return argv + list(o.proxy_args)


def _die_with_parent() -> None:
    """In the child: SIGTERM when `plait run` dies, however it dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _ready(admin: str) -> bool:
    host, _, port = admin.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=1) as reply:
            return bool(reply.status == 200)
    except (OSError, urllib.error.HTTPError):
        return False


def _stop(popen: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if popen.poll() is not None:
        return
    popen.terminate()
    try:
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def _say(text: str) -> None:
    print(f"plait run: {text}", file=sys.stderr, flush=True)


def run_app(o: RunOptions, env: dict[str, str] | None = None) -> int:
    """Run the sidecar and the app as described above; the exit status to use."""
    base_env = dict(os.environ if env is None else env)
    proxy_env = dict(base_env)
    if o.join_token:
        proxy_env["PLAIT_JOIN_TOKEN"] = o.join_token
    received: list[int] = []
    app: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _: FrameType | None) -> None:
        received.append(signum)
        if app is not None and app.poll() is None:
            app.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    # Own process groups: a terminal's Ctrl-C reaches `plait run` alone, which forwards it
    # to the app once, and drains the sidecar only after the app is gone.
    proxy = subprocess.Popen(
        proxy_argv(o), env=proxy_env, preexec_fn=_die_with_parent, process_group=0
    )
    captured = False
    try:
        deadline = time.monotonic() + o.ready_timeout
        while not _ready(o.admin):
            if proxy.poll() is not None:
                _say(f"the sidecar exited with status {_status(proxy.returncode)} before ready")
                return 1
            if received:
                return 128 + received[0]
            if time.monotonic() > deadline:
                _say(f"the sidecar was not ready within {o.ready_timeout:g} s")
                return 1
            time.sleep(POLL)
        if o.capture:
            spec = CaptureSpec(
                proxy_mark=o.mark,
                outbound_port=_port_of(o.outbound),
                inbound_port=_port_of(o.inbound),
                inbound_ports=(o.port,) if o.capture_inbound and o.port else (),
                include_cidrs=o.include_cidrs,
                exclude_cidrs=o.exclude_cidrs,
            )
            captured = True  # set first: a half-installed chain is removed too
            install(spec, o.netns)
        app_env = dict(base_env)
        if not o.capture and "HTTP_PROXY" not in app_env:
            app_env["HTTP_PROXY"] = f"http://{o.outbound}"
        if received:
            return 128 + received[0]
        app = subprocess.Popen(o.command, env=app_env, preexec_fn=_die_with_parent, process_group=0)
        _say(f"sidecar ready, app started (pid {app.pid})")
        while True:
            code = app.poll()
            if code is not None:
                return _status(code)
            if proxy.poll() is not None:
                _say(
                    f"the sidecar exited with status {_status(proxy.returncode)}; stopping the app"
                )
                _stop(app, STOP_GRACE)
                return 1
            time.sleep(POLL)
    except CaptureError as exc:
        _say(f"capture: {exc}")
        return 1
    except FileNotFoundError as exc:
        _say(f"cannot start {o.command[0]!r}: {exc.strerror}")
        return 127
    finally:
        if app is not None:
            _stop(app, STOP_GRACE)
        _stop(proxy, o.drain_timeout + 5.0)
        if captured:
            try:
                remove(o.netns)
            except CaptureError as exc:
                _say(f"capture rules not removed: {exc}")
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- command line -----------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = "plait run [OPTIONS] -- CMD [ARG...]"
    p.add_argument("--service", default="", help="the service the app belongs to")
    p.add_argument("--namespace", default="default", help="its namespace (default: default)")
    p.add_argument("--labels", default="", metavar="K=V,...", help="workload labels")
    p.add_argument(
        "--port", type=int, default=None, help="the app's port on 127.0.0.1 (enables inbound)"
    )
    p.add_argument(
        "--capture",
        action="store_true",
        help="transparent capture: iptables redirects the app's calls to service VIPs",
    )
    p.add_argument(
        "--capture-inbound",
        action="store_true",
        help="with --capture: also redirect inbound TCP to --port to the inbound listener",
    )
    p.add_argument("--control", default=None, metavar="ADDR", help="control plane push address")
    p.add_argument("--join-token", default=None, help="default: $PLAIT_JOIN_TOKEN")
    p.add_argument("--ca-bundle", default=None, metavar="FILE", help="mesh trust bundle (mTLS)")
    p.add_argument("--state-dir", default=None, metavar="DIR", help="the sidecar's key and cert")
    p.add_argument("--outbound", default="127.0.0.1:15001", metavar="ADDR")
    p.add_argument("--inbound", default="127.0.0.1:15006", metavar="ADDR")
    p.add_argument("--admin", default="127.0.0.1:15000", metavar="ADDR")
    p.add_argument("--advertise", default=None, metavar="ADDR", help="inbound address for peers")
    p.add_argument("--dns", default=None, metavar="ADDR", help="serve mesh DNS here")
    p.add_argument("--mark", type=int, default=DEFAULT_MARK, help="SO_MARK of the sidecar")
    p.add_argument(
        "--include-cidr",
        default=",".join(DEFAULT_INCLUDE),
        metavar="CIDR,...",
        help="destinations captured (default: the VIP range)",
    )
    p.add_argument("--exclude-cidr", default="", metavar="CIDR,...")
    p.add_argument("--netns", default=None, metavar="NS", help="namespace of the capture rules")
    p.add_argument("--ready-timeout", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("--drain-timeout", type=float, default=5.0, metavar="SECONDS")
    p.add_argument(
        "--proxy-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra `plait proxy` argument (repeatable), e.g. --proxy-arg=--access-log=off",
    )
    p.add_argument("app_command", nargs=argparse.REMAINDER, metavar="CMD", help="-- CMD [ARG...]")


def _split(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def run(args: argparse.Namespace, runner: Callable[[RunOptions], int] = run_app) -> int:
    command = list(args.app_command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print("plait run: give the app's command after --", file=sys.stderr)
        return 2
    for name in ("outbound", "inbound", "admin"):
        value = getattr(args, name)
        if not value.rpartition(":")[2].isdigit():
            print(f"plait run: --{name} {value!r}: expected HOST:PORT", file=sys.stderr)
            return 2
    control = args.control
    if control and "://" in control:
        control = control.split("://", 1)[1].rstrip("/")
    options = RunOptions(
        command=command,
        service=args.service,
        namespace=args.namespace,
        labels=args.labels,
        port=args.port,
        capture=args.capture,
        control=control,
        join_token=args.join_token or os.environ.get("PLAIT_JOIN_TOKEN") or None,
        ca_bundle=args.ca_bundle,
        state_dir=args.state_dir,
        outbound=args.outbound,
        inbound=args.inbound,
        admin=args.admin,
        advertise=args.advertise,
        dns=args.dns,
        mark=args.mark,
        include_cidrs=_split(args.include_cidr),
        exclude_cidrs=_split(args.exclude_cidr),
        capture_inbound=args.capture_inbound,
        netns=args.netns,
        ready_timeout=args.ready_timeout,
        drain_timeout=args.drain_timeout,
        proxy_args=list(args.proxy_arg),
    )
    if options.capture:
        try:
            CaptureSpec(
                proxy_mark=options.mark,
                include_cidrs=options.include_cidrs,
                exclude_cidrs=options.exclude_cidrs,
            ).validate()
        except CaptureError as exc:
            print(f"plait run: {exc}", file=sys.stderr)
            return 2
    return runner(options)
