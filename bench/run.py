"""`make bench`: the same workload through direct, plait, Envoy and HAProxy, one run.

    python -m bench.run [--quick] [--runs N] [--seconds S] [--systems plait,envoy]

Sets up what it needs (bench/tools.py), starts one nginx as the upstream of every system,
then for each round and each system in turn: start the system, measure, stop it. A round
visits every system, so a slow drift of the machine (other work on it) spreads over all of
them instead of landing on one. Per system and round:

    idle RSS of each proxy (after start-up and a few requests)
    wrk -t1 -c1   (latency)        -> req/s, p50/p90/p99/max
    wrk -t1 -c32  (throughput)     -> req/s, latency; peak RSS during it ("under load");
                                      CPU time of each proxy per request
    wrk -t1 -c32 on /16k           -> req/s with a 16 KiB body
    1,000 req/s open loop          -> p50/p90/p99/max (bench/loadgen.py)
    1,000 idle keep-alive connections to the client-side proxy -> RSS

Medians over rounds are reported with their spread (min-max) in bench/RESULTS.md, with a
chart of the fixed-rate latencies in bench/latency.png. The last line printed is

    ratios: rps_vs_envoy=X rps_vs_haproxy=Y p50_vs_envoy=Z rss_idle_mib=W

for scripts. Nothing here asserts a timing: the figures are for people to judge.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import report, tools
from bench.load import IdleConnections, RssSampler, open_loop, wrk
from bench.pki import Pki
from bench.procs import Processes, cpu_split, rss_kib
from bench.systems import System, Target, all_systems
from bench.upstream import BODY_16K_PATH, Nginx

__all__ = ["Settings", "main"]

IDLE_CONNECTIONS = 1000
QUICK_OUT = Path(tempfile.gettempdir()) / "plait-bench-quick"


@dataclass(frozen=True)
class Settings:
    runs: int
    seconds: float  # each wrk run
    seconds_16k: float
    rate: int
    rate_seconds: float
    warmup: float

    @classmethod
    def pick(cls, quick: bool, runs: int | None, seconds: float | None) -> Settings:
        if quick:  # under 2 minutes for all four systems
            return cls(runs or 1, seconds or 3, 2, 1000, seconds or 3, 1)
        return cls(runs or 3, seconds or 10, 5, 1000, seconds or 10, 2)


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


def measure(system: System, target: Target, s: Settings, out: report.Samples) -> None:
    """One round of every scenario against a started system; appends to `out`."""
    pids = system.proxies()
    time.sleep(1.0)  # let start-up work (first pushes, lazy imports) settle before "idle"
    if pids:
        out.add("rss_idle", {role: _mib(rss_kib(pid)) for role, pid in pids.items()})
    wrk(target, 8, s.warmup)  # warm-up: pools, caches, JITs there are none of
    out.add("c1", wrk(target, 1, s.seconds))
    cpu_before = {role: cpu_split(pid) for role, pid in pids.items()}
    with RssSampler(pids) as sampler:
        c32 = wrk(target, 32, s.seconds)
    out.add("c32", c32)
    if pids:
        out.add("rss_load", {role: _mib(kib) for role, kib in sampler.peak_kib.items()})
        # CPU time per request: what a request costs a proxy, whatever else the machine runs;
        # and of it, the part in user space (the rest is the kernel's, sockets and loopback).
        cpu_after = {role: cpu_split(pid) for role, pid in pids.items()}
        per_request = 1e6 / c32["requests"]
        out.add(
            "cpu_us",
            {role: (sum(cpu_after[role]) - sum(cpu_before[role])) * per_request for role in pids},
        )
        out.add(
            "cpu_user_us",
            {role: (cpu_after[role][0] - cpu_before[role][0]) * per_request for role in pids},
        )
    out.add("c32_16k", wrk(target, 32, s.seconds_16k, BODY_16K_PATH))
    out.add("rate", open_loop(target, s.rate, s.rate_seconds, warmup=1.0))
    if pids:
        with IdleConnections(target, IDLE_CONNECTIONS) as idle:
            time.sleep(0.5)
            out.add("rss_conns", {role: _mib(rss_kib(pid)) for role, pid in pids.items()})
            if idle.failed:
                out.add("conns_failed", {"failed": float(idle.failed)})


def freeze_plait(work: Path) -> Path:
    """Copy the plait package into the work directory and point child processes at it.

    Every plait process of the run then executes the same code, even if the source tree is
    edited while the benchmark runs (several people work in one tree); start-up is the
    moment measured. Returns the copy's directory (it goes first on PYTHONPATH).
    """
    import plait

    source = Path(plait.__file__).resolve().parent
    frozen = work / "src"
    shutil.copytree(source, frozen / "plait", ignore=shutil.ignore_patterns("__pycache__"))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(frozen), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    return frozen


def source_digest(package: Path) -> str:
    """sha256 over the package's .py files: tells whether two runs measured the same code."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="plait vs direct, Envoy and HAProxy (bench/README.md)")
    p.add_argument("--quick", action="store_true", help="1 round of short runs (< 2 minutes)")
    p.add_argument("--runs", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    p.add_argument("--seconds", type=float, default=None, help="length of each wrk/rate run")
    p.add_argument("--systems", default=",".join(all_systems()), help="comma-separated subset")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where RESULTS.md and latency.png go (default bench/; with --quick a temporary "
        "directory, so that a quick look never replaces the full results)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    args = p.parse_args(argv)
    settings = Settings.pick(args.quick, args.runs, args.seconds)
    if args.out is None:
        args.out = QUICK_OUT if args.quick else Path(__file__).resolve().parent
    classes = all_systems()
    names = [n for n in args.systems.split(",") if n]
    unknown = [n for n in names if n not in classes]
    if unknown or "direct" not in names:
        p.error(f"--systems: unknown {unknown}" if unknown else "--systems must include direct")

    started = time.monotonic()
    tools.ensure()
    command = "python -m bench.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    context = report.Context(
        command=command.strip(),
        machine=tools.machine(),
        versions=tools.versions(),
        settings=settings.__dict__,
        load_before=os.getloadavg(),
    )
    print(
        f"bench: {context.machine['nproc']} CPUs ({context.machine['CPU']}), "
        f"load average {context.load_before[0]:.2f}; {settings}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="plait-bench-"))
    results = {name: report.Samples() for name in names}
    frozen = freeze_plait(work)
    context.versions["plait source sha256"] = source_digest(frozen / "plait")
    procs = Processes(work)
    try:
        nginx = Nginx(work, procs)
        pki = Pki(work / "pki")
        for round_ in range(settings.runs):
            for name in names:
                cls = classes[name]
                print(f"[{round_ + 1}/{settings.runs}] {cls.label}", flush=True)
                with cls(work / f"round{round_}", nginx.port, pki) as system:
                    target = system.start()
                    measure(system, target, settings, results[name])
                print("    " + results[name].last_line(), flush=True)
    finally:
        procs.close()
        if args.keep:
            print(f"bench: work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    context.load_after = os.getloadavg()
    context.seconds = time.monotonic() - started
    summary = report.summarize(results)
    ratios = report.ratios(summary)
    path = report.write(args.out, context, summary, ratios, {n: classes[n].label for n in names})
    print(report.console(summary, ratios, {n: classes[n].label for n in names}))
    print(f"bench: wrote {path} and {args.out / 'latency.png'} in {context.seconds:.0f} s")
    print(report.ratios_line(ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
