"""Load and measurement: wrk runs (closed loop), the open-loop generator, idle connections,
and RSS sampling of proxy processes.

wrk is closed loop: each connection sends its next request when the previous answer
arrives, which is what "throughput at N connections" and "latency at 1 connection" mean.
The fixed-rate scenario needs an open loop instead (bench/loadgen.py), run as a separate
process so that it never competes with this one for the GIL.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from bench.procs import rss_kib
from bench.systems import Target

__all__ = ["IdleConnections", "RssSampler", "open_loop", "wrk"]

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_DURATION = r"([\d.]+)(us|ms|s)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS[unit]


def wrk(target: Target, connections: int, seconds: float, path: str = "/") -> dict[str, float]:
    """One `wrk -t1 -cN` run: rps, p50/p75/p90/p99/max and avg in ms, errors."""
    # wrk takes whole seconds only
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    if target.host:
        argv += ["-H", f"Host: {target.host}"]
    argv.append(f"http://127.0.0.1:{target.port}{path}")
    out = subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=seconds + 30
    ).stdout
    return parse_wrk(out)


def parse_wrk(out: str) -> dict[str, float]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    latency = re.search(rf"Latency\s+{_DURATION}\s+{_DURATION}\s+{_DURATION}", out)
    if rps is None or latency is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    count = re.search(r"(\d+) requests in", out)
    result = {
        "rps": float(rps.group(1)),
        "requests": float(count.group(1)) if count else math.nan,
        "avg_ms": _ms(latency.group(1), latency.group(2)),
        "max_ms": _ms(latency.group(5), latency.group(6)),
    }
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+{_DURATION}", out, re.MULTILINE)
        if m:
            result[f"p{pct}_ms"] = _ms(m.group(1), m.group(2))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["errors"] = float(
        (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
    )
    return result


def open_loop(
    target: Target, rate: int, seconds: float, warmup: float = 1.0, connections: int = 16
) -> dict[str, float]:
    """A fixed-rate run of bench/loadgen.py: p50/p90/p99/max in ms from intended send times."""
    argv = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--port",
        str(target.port),
        "--rate",
        str(rate),
        "--duration",
        str(seconds),
        "--warmup",
        str(warmup),
        "--connections",
        str(connections),
    ]
    if target.host:
        argv += ["--host", target.host]
    out = subprocess.run(
        argv, capture_output=True, text=True, check=True, timeout=seconds + warmup + 60
    ).stdout
    result: dict[str, float] = json.loads(out)
    return result


class IdleConnections:
    """`count` HTTP/1.1 keep-alive connections, each having made one request, held open.

    Requests go one after another, so the proxy's upstream pool does not grow for them: the
    memory measured is what the downstream connections cost. `close()` closes them all.
    """

    def __init__(self, target: Target, count: int) -> None:
        self.target = target
        self.count = count
        self.connections: list[http.client.HTTPConnection] = []
        self.failed = 0

    def open(self) -> None:
        headers = {"Host": self.target.host} if self.target.host else {}
        for _ in range(self.count):
            conn = http.client.HTTPConnection("127.0.0.1", self.target.port, timeout=10)
            self.connections.append(conn)
            try:
                conn.request("GET", "/", headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200 or response.will_close:
                    self.failed += 1
            except OSError:
                self.failed += 1

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        self.connections.clear()

    def __enter__(self) -> IdleConnections:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RssSampler:
    """Samples the RSS of some processes every `interval` s in a thread; keeps the peak."""

    pids: Mapping[str, int]
    interval: float = 0.25
    peak_kib: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for role, pid in self.pids.items():
                with contextlib.suppress(OSError, RuntimeError):  # it exited: keep the peak
                    self.peak_kib[role] = max(self.peak_kib.get(role, 0), rss_kib(pid))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
