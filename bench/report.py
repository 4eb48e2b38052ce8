"""Figures -> medians with spread -> bench/RESULTS.md, bench/latency.png and the ratios line.

RESULTS.md is generated, except its last section ("What changed and what it bought"),
which people write: a regeneration keeps whatever that section holds.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Context", "Samples", "console", "ratios", "ratios_line", "summarize", "write"]

MANUAL_HEADING = "## What changed and what it bought"
MANUAL_PLACEHOLDER = (
    "_(Filled in by hand: each optimisation, and what it moved in the figures above.)_\n"
)
PERCENTILES = ("p50_ms", "p90_ms", "p99_ms", "max_ms")


class Samples:
    """Per scenario, one dict of figures per round."""

    def __init__(self) -> None:
        self.by_scenario: dict[str, list[dict[str, float]]] = {}

    def add(self, scenario: str, sample: dict[str, float]) -> None:
        self.by_scenario.setdefault(scenario, []).append(sample)

    def last_line(self) -> str:
        def last(scenario: str, key: str) -> float:
            runs = self.by_scenario.get(scenario)
            return runs[-1].get(key, math.nan) if runs else math.nan

        text = (
            f"c1 p50 {last('c1', 'p50_ms'):.3f} ms, c32 {last('c32', 'rps'):,.0f} req/s, "
            f"16k {last('c32_16k', 'rps'):,.0f} req/s, 1000 rps p99 {last('rate', 'p99_ms'):.2f} ms"
        )
        if "rss_idle" in self.by_scenario:
            text += (
                f", client RSS idle/load/1000 conns {last('rss_idle', 'client')}/"
                f"{last('rss_load', 'client')}/{last('rss_conns', 'client')} MiB, "
                f"CPU/request client {last('cpu_us', 'client'):.0f} us server {last('cpu_us', 'server'):.0f} us"
            )
        errors = sum(r.get("errors", 0) for runs in self.by_scenario.values() for r in runs[-1:])
        if errors:
            text += f", ERRORS {errors:.0f}"
        return text


@dataclass(frozen=True)
class Stat:
    median: float
    lo: float
    hi: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values), len(values))


Summary = dict[str, dict[str, dict[str, Stat]]]  # system -> scenario -> figure -> Stat


@dataclass
class Context:
    command: str
    machine: dict[str, str]
    versions: dict[str, str]
    settings: dict[str, Any]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    seconds: float = math.nan
    when: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def summarize(results: dict[str, Samples]) -> Summary:
    summary: Summary = {}
    for system, samples in results.items():
        for scenario, runs in samples.by_scenario.items():
            keys = {k for r in runs for k in r}
            summary.setdefault(system, {})[scenario] = {
                k: Stat.of([r[k] for r in runs if k in r]) for k in sorted(keys)
            }
    return summary


def _get(summary: Summary, system: str, scenario: str, key: str) -> float:
    try:
        return summary[system][scenario][key].median
    except KeyError:
        return math.nan


def _div(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) and b > 0 else math.nan


def added(summary: Summary, system: str, key: str) -> float:
    """Fixed-rate latency added over direct: median(system) - median(direct)."""
    return _get(summary, system, "rate", key) - _get(summary, "direct", "rate", key)


# (ratio key, what it is, comparison, target)
TARGETS = [
    ("rps_vs_envoy", "req/s at 32 connections, plait pair / Envoy pair", ">=", 1.5),
    ("rps_vs_haproxy", "req/s at 32 connections, plait pair / HAProxy pair", ">=", 0.75),
    ("p50_vs_envoy", "p50 latency at 1 connection, plait pair / Envoy pair", "<=", 1.0),
    ("p99_added_vs_envoy", "p99 added latency at 1,000 rps, plait pair / Envoy pair", "<=", 1.2),
    ("rss_idle_mib", "plait sidecar (client side) RSS idle, MiB", "<=", 40.0),
    (
        "rss_conns_mib",
        "plait sidecar (client side) RSS with 1,000 idle connections, MiB",
        "<=",
        80.0,
    ),
]


def ratios(summary: Summary) -> dict[str, float]:
    return {
        "rps_vs_envoy": _div(
            _get(summary, "plait", "c32", "rps"), _get(summary, "envoy", "c32", "rps")
        ),
        "rps_vs_haproxy": _div(
            _get(summary, "plait", "c32", "rps"), _get(summary, "haproxy", "c32", "rps")
        ),
        "p50_vs_envoy": _div(
            _get(summary, "plait", "c1", "p50_ms"), _get(summary, "envoy", "c1", "p50_ms")
        ),
        "p99_added_vs_envoy": _div(
            added(summary, "plait", "p99_ms"), added(summary, "envoy", "p99_ms")
        ),
        "rss_idle_mib": _get(summary, "plait", "rss_idle", "client"),
        "rss_conns_mib": _get(summary, "plait", "rss_conns", "client"),
    }


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


def ratios_line(r: dict[str, float]) -> str:
    return (
        f"ratios: rps_vs_envoy={_fmt(r['rps_vs_envoy'])} rps_vs_haproxy={_fmt(r['rps_vs_haproxy'])} "
        f"p50_vs_envoy={_fmt(r['p50_vs_envoy'])} rss_idle_mib={_fmt(r['rss_idle_mib'], 1)}"
    )


def _met(value: float, op: str, target: float) -> str:
    if math.isnan(value):
        return "not measured"
    ok = value >= target if op == ">=" else value <= target
    return "**met**" if ok else "**not met**"


# ---------------------------------------------------------------------------------- tables


def _cell(stat: Stat | None, digits: int, scale: float = 1.0) -> str:
    if stat is None:
        return "-"
    m, lo, hi = stat.median * scale, stat.lo * scale, stat.hi * scale
    if stat.n == 1:
        return f"{m:,.{digits}f}"
    return f"{m:,.{digits}f} ({lo:,.{digits}f}–{hi:,.{digits}f})"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _wrk_table(summary: Summary, labels: dict[str, str], scenario: str) -> str:
    rows = []
    for system, label in labels.items():
        f = summary.get(system, {}).get(scenario, {})
        rows.append(
            [label, _cell(f.get("rps"), 0)]
            + [_cell(f.get(k), 3) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
            + [_cell(f.get("errors"), 0)]
        )
    return _table(["system", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"], rows)


def _rate_table(summary: Summary, labels: dict[str, str]) -> str:
    rows = []
    for system, label in labels.items():
        f = summary.get(system, {}).get("rate", {})
        row = [label] + [_cell(f.get(k), 3) for k in PERCENTILES]
        row += [
            "-" if system == "direct" else _fmt(added(summary, system, k), 3) for k in PERCENTILES
        ]
        row += [_cell(f.get("rate"), 0), _cell(f.get("errors"), 0)]
        rows.append(row)
    header = [
        "system",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "added p50",
        "added p90",
        "added p99",
        "added max",
        "achieved req/s",
        "errors",
    ]
    return _table(header, rows)


def _memory_table(summary: Summary, labels: dict[str, str]) -> str:
    rows = []
    for system, label in labels.items():
        s = summary.get(system, {})
        if "rss_idle" not in s:
            continue
        for role in ("client", "server"):
            rows.append(
                [label, role]
                + [_cell(s.get(k, {}).get(role), 1) for k in ("rss_idle", "rss_conns", "rss_load")]
            )
    return _table(
        ["system", "proxy", "idle MiB", "1,000 idle conns MiB", "under load (peak, c32) MiB"], rows
    )


def _cpu_table(summary: Summary, labels: dict[str, str]) -> str:
    rows = []
    for system, label in labels.items():
        cpu = summary.get(system, {}).get("cpu_us")
        if cpu is None:
            continue
        user = summary.get(system, {}).get("cpu_user_us", {})
        cells = [_cell(s.get(role), 1) for role in ("client", "server") for s in (cpu, user)]
        rows.append([label, *cells])
    return _table(
        [
            "system",
            "client-side proxy, us/request",
            "of which user space",
            "server-side proxy, us/request",
            "of which user space",
        ],
        rows,
    )


def _manual_section(path: Path) -> str:
    """The hand-written last section of an existing RESULTS.md, kept across regenerations."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return MANUAL_HEADING + "\n\n" + MANUAL_PLACEHOLDER
    at = text.find(MANUAL_HEADING)
    return text[at:] if at >= 0 else MANUAL_HEADING + "\n\n" + MANUAL_PLACEHOLDER


def write(
    out: Path, ctx: Context, summary: Summary, r: dict[str, float], labels: dict[str, str]
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "RESULTS.md"
    manual = _manual_section(path)
    chart(out / "latency.png", summary, labels, ctx)
    s = ctx.settings
    runs = s["runs"]
    spread = f"median (min–max) of {runs} rounds" if runs > 1 else "from one round"
    m, v = ctx.machine, ctx.versions
    parts = [
        "# Benchmark results\n",
        f"Generated by `make bench` on {ctx.when} in {ctx.seconds:.0f} s; regenerate, do not edit "
        f"(except the last section). How it works and how to read it: [README.md](README.md).\n",
        "## Machine and versions\n",
        f"- machine: {m['nproc']} CPUs, {m['CPU']}, kernel {m['kernel']}",
        f"- load average (1 min) before / after the run: {ctx.load_before[0]:.2f} / "
        f"{ctx.load_after[0]:.2f} (other work on the machine shows up as noise in every system)",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"- command: `{ctx.command}`",
        f"- settings: {runs} round(s); wrk runs of {s['seconds']:g} s (16 KiB: {s['seconds_16k']:g} s) "
        f"after a {s['warmup']:g} s warm-up; fixed rate {s['rate']:,} req/s for {s['rate_seconds']:g} s "
        f"after 1 s of warm-up\n",
        "Every proxy runs one worker (plait: one process; Envoy `--concurrency 1`; HAProxy "
        "`nbthread 1`); all systems share one nginx worker as the upstream, and the load "
        "generator, the proxies and nginx share the machine's CPUs. "
        f"Cells are {spread}.\n",
        "## Throughput: HTTP/1.1 keep-alive, 32 connections (`wrk -t1 -c32`)\n",
        _wrk_table(summary, labels, "c32"),
        "## Latency: HTTP/1.1 keep-alive, 1 connection (`wrk -t1 -c1`)\n",
        _wrk_table(summary, labels, "c1"),
        "## 16 KiB response body, 32 connections (`wrk -t1 -c32`, nginx serving a 16 KiB file)\n",
        _wrk_table(summary, labels, "c32_16k"),
        f"## Fixed rate: {s['rate']:,} req/s, open loop\n",
        "Generator: `bench/loadgen.py` (wrk2 is not packaged by Debian; h2load's `--rate` paces "
        "connections, not requests). Requests are due at fixed intervals on a pool of 16 "
        "keep-alive connections; latency counts from the time a request was due, so stalls "
        'are not hidden (coordinated-omission safe). "added" = median of the system minus '
        "median of direct, per percentile. Chart: [latency.png](latency.png).\n",
        _rate_table(summary, labels),
        "## Memory (RSS from /proc, MiB)\n",
        "idle: after start-up and a few requests; 1,000 idle conns: after opening 1,000 "
        "keep-alive connections to the client-side proxy (one request each, then held open; "
        "measured after the load runs, so it includes what they left behind); under load: "
        "the peak while `wrk -c32` ran.\n",
        _memory_table(summary, labels),
        "## CPU time per request (during the 32-connection run)\n",
        "User + system CPU seconds each proxy process used during `wrk -c32`, divided by the "
        "requests wrk completed (/proc/PID/stat). It depends much less than req/s on what "
        "else the machine runs (though a busy machine still inflates it by 10-30 %), so it is "
        "the figure to watch when optimising. At 10,000 req/s a proxy has 100 us per request. "
        '"of which user space": the process\'s own code (for plait: Python, the event loop, '
        "OpenSSL); the rest is the kernel working for it (sockets, the loopback).\n",
        _cpu_table(summary, labels),
        "## Against the targets of issue 6\n",
        _table(
            ["figure", "measured", "target", ""],
            [
                [desc, _fmt(r[key], 2), f"{op} {target:g}", _met(r[key], op, target)]
                for key, desc, op, target in TARGETS
            ],
        ),
        "`" + ratios_line(r) + "`\n",
        manual,
    ]
    path.write_text("\n".join(parts).rstrip("\n") + "\n")
    return path


def chart(path: Path, summary: Summary, labels: dict[str, str], ctx: Context) -> None:
    """Grouped bars: p50/p90/p99/max at the fixed rate per system, whiskers = min-max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = [s for s in labels if "rate" in summary.get(s, {})]
    fig, ax = plt.subplots(figsize=(9, 5), dpi=100)
    width = 0.8 / max(1, len(systems))
    for i, system in enumerate(systems):
        stats = [summary[system]["rate"][k] for k in PERCENTILES]
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(PERCENTILES))]
        meds = [st.median for st in stats]
        err = [[st.median - st.lo for st in stats], [st.hi - st.median for st in stats]]
        bars = ax.bar(xs, meds, width, label=labels[system], yerr=err, capsize=3)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in meds], fontsize=7, padding=2)
    ax.set_xticks(range(len(PERCENTILES)), [k.removesuffix("_ms") for k in PERCENTILES])
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log scale)")
    runs = ctx.settings["runs"]
    ax.set_title(
        f"HTTP/1.1 at {ctx.settings['rate']:,} req/s, open loop: latency percentiles per system\n"
        f"(median of {runs} run{'s' if runs > 1 else ''}, whiskers min–max; "
        f"{ctx.machine['nproc']} CPUs, {ctx.when})",
        fontsize=10,
    )
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def console(summary: Summary, r: dict[str, float], labels: dict[str, str]) -> str:
    lines = [
        "",
        "system              c32 req/s   c1 p50 ms   CPU us/req client+server   1000rps p99 ms (added)",
    ]
    for system, label in labels.items():
        p99 = _get(summary, system, "rate", "p99_ms")
        add = "" if system == "direct" else f" (+{added(summary, system, 'p99_ms'):.3f})"
        lines.append(
            f"{label:18s} {_get(summary, system, 'c32', 'rps'):>10,.0f} "
            f"{_get(summary, system, 'c1', 'p50_ms'):>11.3f}   "
            + (
                f"{_get(summary, system, 'cpu_us', 'client'):>12.1f} + "
                f"{_get(summary, system, 'cpu_us', 'server'):<12.1f}"
                if "cpu_us" in summary.get(system, {})
                else f"{'-':>12s}   {'':12s}"
            )
            + f"{p99:.3f}{add}"
        )
    lines.append("")
    for key, desc, op, target in TARGETS:
        lines.append(
            f"{desc}: {_fmt(r[key])} (target {op} {target:g}) {_met(r[key], op, target).strip('*')}"
        )
    return "\n".join(lines)
