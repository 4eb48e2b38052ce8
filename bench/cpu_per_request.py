"""CPU time per request per proxy: plait pair against the Envoy pair, in the same minute.

    python -m bench.cpu_per_request [--seconds 3] [--rounds 6] [--h2-upgrade]
                                    [--base SRC] [--no-envoy] [--haproxy] [--relay]
                                    [--keep]

Throughput on a shared machine says more about the neighbours than about the proxy; CPU time
per request does not (much): each proxy's utime+stime from /proc/PID/stat, read before and
after a `wrk -t1 -c32` run, divided by the requests wrk completed. Every system is started
once and kept running; the rounds then visit them in turn (warm-up, measure; every other
round in reverse order), so a change in the machine's load lands on all of them alike. Each
proxy's idle CPU rate (timers, control plane heartbeats), measured before the rounds, is
subtracted. Medians over rounds are printed with the spread (min-max), and the median of the
per-round ratio of each system's pair cost to the reference's (the `--base` tree, else Envoy)
measured beside it: the steadiest figure on a busy machine (neighbours on the same cores
inflate every absolute figure alike, by up to 1.5x here; this VM has no hardware counters to
count instructions instead). It also prints what of each plait tree runs compiled (mypyc) and what
as Python.

Systems: `plait` (this tree as shipped: HTTP/1.1 between the proxies, and HTTP/2 for the
requests that overlap others), `plait-h2` (`--h2-upgrade`: PLAIT_H2_UPGRADE=1, every request
over one multiplexed HTTP/2 mTLS connection between the proxies), `base` and
`base-h2` (`--base DIR`: another copy of the plait package, DIR holding `plait/`, for a
before -> after comparison in the same minute) and `envoy` (bench/systems/envoy.py, the
yardstick) and, with `--haproxy`, `haproxy`; with `--relay`, `relay` and `relay-plain`
(bench/relay.py: a featureless uvloop + httptools pair, with mTLS and without: the ceiling
of a Python pair). The "pair, user space" column is the pair's CPU outside the kernel (not
idle-corrected). It asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from bench.load import wrk
from bench.pki import Pki
from bench.procs import Processes, cpu_split
from bench.systems import System, Target
from bench.systems.envoy import EnvoyPair
from bench.systems.haproxy import HaproxyPair
from bench.systems.plait import PlaitPair
from bench.systems.relay import PlainRelayPair, RelayPair
from bench.upstream import Nginx

__all__ = ["main"]

CONNECTIONS = 32
IDLE_SECONDS = 2.0


@contextmanager
def _environment(**values: str | None) -> Iterator[None]:
    """Set (or unset, for None) environment variables while children are spawned."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


Started = tuple[System, Target]


def _plait(source: Path | None, h2: bool) -> Callable[[Path, int, Pki], Started]:
    """A PlaitPair factory whose processes run the package under `source` (None: this one)."""

    def start(work: Path, upstream: int, pki: Pki) -> Started:
        system = PlaitPair(work, upstream, pki)
        path = os.environ.get("PYTHONPATH")
        if source is not None:
            path = os.pathsep.join([str(source), *filter(None, [path])])
        with _environment(PLAIT_H2_UPGRADE="1" if h2 else None, PYTHONPATH=path):
            return _started(system)

    return start


def _started(system: System) -> Started:
    """Start `system`; if it cannot come up, stop what it spawned."""
    try:
        return system, system.start()
    except BaseException:
        system.close()
        raise


_COMPILED = """
from plait import native_core
from plait.proto import h1
from plait.proxy import h2_upstream
codec = getattr(h2_upstream, "CODEC", h2_upstream.H2Connection)  # older trees: CODEC
print("data path", "compiled" if native_core.active() else "python",
      "h1", "compiled" if getattr(h1, "NATIVE", h1.__file__.endswith(".so")) else "python",  # NATIVE: older trees
      "h2", "compiled" if ".so" in str(getattr(__import__(codec.__module__, fromlist=["x"]),
                                               "__file__", "")) else "python")
"""


def compiled(source: Path | None) -> str:
    """What of a plait tree's proxies runs compiled (mypyc) and what runs as Python."""
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), *filter(None, [env.get("PYTHONPATH")])])
    done = subprocess.run(
        [sys.executable, "-c", _COMPILED], env=env, capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip() or f"unknown ({done.stderr.strip()[-200:]})"


def _peer(pair: Callable[[Path, int, Pki], System]) -> Callable[[Path, int, Pki], Started]:
    """A factory for a peer pair (Envoy, HAProxy) measured beside plait."""

    def start(work: Path, upstream: int, pki: Pki) -> Started:
        return _started(pair(work, upstream, pki))

    return start


def _cpu(pids: dict[str, int]) -> dict[str, tuple[float, float]]:
    return {role: cpu_split(pid) for role, pid in pids.items()}


def measure(
    target: Target,
    pids: dict[str, int],
    seconds: float,
    idle: dict[str, float],
    connections: int = CONNECTIONS,
) -> dict[str, float]:
    """One wrk run: us of CPU per request for each proxy (idle rate subtracted), of which
    user space (`ROLE-user`: the proxy's own code, OpenSSL, the event loop), and req/s."""
    before, t0 = _cpu(pids), time.monotonic()
    result = wrk(target, connections, seconds)
    after, elapsed = _cpu(pids), time.monotonic() - t0
    requests = result["requests"]
    if not requests or result["errors"]:
        raise RuntimeError(f"wrk: {requests} requests, {result['errors']} errors")
    out: dict[str, float] = {"rps": result["rps"]}
    for role in pids:
        user = after[role][0] - before[role][0]
        total = user + after[role][1] - before[role][1]
        out[role] = max(0.0, total - idle[role] * elapsed) / requests * 1e6
        out[f"{role}-user"] = user / requests * 1e6
    return out


def idle_rates(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds per second each proxy spends with no traffic."""
    before = _cpu(pids)
    time.sleep(seconds)
    after = _cpu(pids)
    return {role: (sum(after[role]) - sum(before[role])) / seconds for role in pids}


def _fmt(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="length of each wrk run")
    p.add_argument(
        "--connections", type=int, default=CONNECTIONS, help="wrk connections (1: latency)"
    )
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--h2-upgrade", action="store_true", help="also plait with HTTP/2 between")
    p.add_argument("--only-h2", action="store_true", help="with --h2-upgrade: skip HTTP/1.1")
    p.add_argument("--base", type=Path, default=None, help="directory holding another plait/")
    p.add_argument("--no-envoy", action="store_true")
    p.add_argument("--haproxy", action="store_true", help="also the HAProxy pair")
    p.add_argument(
        "--relay", action="store_true", help="also the bare relay pair, with mTLS and without"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = p.parse_args(argv)

    factories: dict[str, Callable[[Path, int, Pki], Started]] = {}
    modes = [True] if args.only_h2 else ([False, True] if args.h2_upgrade else [False])
    for h2 in modes:
        suffix = "-h2" if h2 else ""
        factories["plait" + suffix] = _plait(None, h2)
        if args.base is not None:
            factories["base" + suffix] = _plait(args.base.resolve(), h2)
    if not args.no_envoy:
        factories["envoy"] = _peer(EnvoyPair)
    if args.haproxy:
        factories["haproxy"] = _peer(HaproxyPair)
    if args.relay:
        factories["relay"] = _peer(RelayPair)
        factories["relay-plain"] = _peer(PlainRelayPair)
    print(f"compiled: plait {compiled(None)}", flush=True)
    if args.base is not None:
        print(f"compiled: base  {compiled(args.base.resolve())}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="plait-cpu-"))
    load = os.getloadavg()
    print(
        f"cpu_per_request: {os.cpu_count()} CPUs, load average {load[0]:.2f}; "
        f"wrk -t1 -c{args.connections} {args.seconds:g} s x {args.rounds} rounds",
        flush=True,
    )
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in factories}
    with ExitStack() as stack:
        procs = Processes(work)
        stack.callback(procs.close)
        nginx = Nginx(work, procs)
        pki = Pki(work / "pki")
        systems: dict[str, tuple[System, Target, dict[str, int]]] = {}
        for name, factory in factories.items():
            system, target = factory(work / name, nginx.port, pki)
            stack.callback(system.close)
            systems[name] = (system, target, system.proxies())
        time.sleep(1.0)
        idle = {name: idle_rates(pids, IDLE_SECONDS) for name, (_, _, pids) in systems.items()}
        for round_ in range(args.rounds):
            order = list(systems.items())
            if round_ % 2:
                order.reverse()  # ABBA: a drift during a round favours no system
            for name, (_, target, pids) in order:
                wrk(target, args.connections, args.warmup)
                m = measure(target, pids, args.seconds, idle[name], args.connections)
                samples[name].append(m)
                print(
                    f"  [{round_ + 1}/{args.rounds}] {name:11s} client {m['client']:6.1f} us  "
                    f"server {m['server']:6.1f} us  {m['rps']:8.0f} req/s",
                    flush=True,
                )
    if args.keep:
        print(f"work directory kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)

    # The yardstick for the last column: the base tree if given, else Envoy, else plait.
    reference = next(n for n in ("base", "base-h2", "envoy", *samples) if n in samples)
    load = os.getloadavg()
    print(
        f"\nCPU us per request, median (min-max) of {args.rounds}; load average after {load[0]:.2f}"
    )
    print(
        f"{'system':11s} {'client proxy':>20s} {'server proxy':>20s} {'pair':>20s}"
        f" {'pair, user space':>20s} {'req/s':>20s} {'pair / ' + reference:>22s}"
    )
    for name, runs in samples.items():
        client = [r["client"] for r in runs]
        server = [r["server"] for r in runs]
        pair = [r["client"] + r["server"] for r in runs]
        user = [r["client-user"] + r["server-user"] for r in runs]
        rps = [r["rps"] for r in runs]
        # Per round, against the reference measured beside it: steadier than the medians
        # when the machine's speed drifts between rounds.
        ratios = [
            (r["client"] + r["server"]) / (b["client"] + b["server"])
            for r, b in zip(runs, samples[reference], strict=True)
        ]
        print(
            f"{name:11s} {_fmt(client, 1):>20s} {_fmt(server, 1):>20s} {_fmt(pair, 1):>20s} "
            f"{_fmt(user, 1):>20s} {_fmt(rps):>20s} {_fmt(ratios, 3):>22s}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
