"""Quick data-path benchmark: wrk through nothing (direct) and through a plait proxy pair.

    client --wrk--> nginx                                   (direct)
    client --wrk--> plait outbound --> plait inbound --> nginx   (plait pair, plaintext)

This is the foundation's harness; the benchmark issue extends it with mTLS, Envoy and
HAProxy pairs. It prints figures; it asserts nothing. Run: `make bench QUICK=1` or
`python -m bench.quick [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "hello world\\n"; }} }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, seconds: int, host: str | None = None) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if host:
        cmd[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    result = {"rps": rps}
    for pct in ("50", "90", "99"):
        m = re.search(rf"\s{pct}(?:\.000)?%\s+([\d.]+)(us|ms|s)", out)
        if m:
            result[f"p{pct}_ms"] = float(m.group(1)) * _UNITS[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 run of 3 s per scenario")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    runs, seconds = (1, 3) if args.quick else (args.runs, args.seconds)
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            print(f"bench: {tool} is missing (make bench installs it)", file=sys.stderr)
            return 2
    procs: list[subprocess.Popen[bytes]] = []
    work = Path(tempfile.mkdtemp(prefix="plait-bench-"))
    try:
        nginx_port = free_port()
        (work / "nginx.conf").write_text(NGINX_CONF.format(dir=work, port=nginx_port))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        procs.append(subprocess.Popen([nginx, "-c", str(work / "nginx.conf")]))
        wait_http(f"http://127.0.0.1:{nginx_port}/")

        ports = {name: free_port() for name in ("a_out", "a_admin", "b_in", "b_out", "b_admin")}
        snapshot = {
            "version": "bench",
            "clusters": [
                {"name": "web", "ports": [80], "endpoints": [{"address": "127.0.0.1", "port": ports["b_in"]}]}
            ],
        }
        (work / "snapshot.json").write_text(json.dumps(snapshot))
        plait = [sys.executable, "-m", "plait", "proxy", "--config", str(work / "snapshot.json")]
        common = ["--access-log-sample", "0.01", "--access-log", str(work / "access.log")]
        a = subprocess.Popen(
            plait + ["--outbound", f"127.0.0.1:{ports['a_out']}", "--admin", f"127.0.0.1:{ports['a_admin']}"] + common
        )
        b = subprocess.Popen(
            plait
            + ["--outbound", f"127.0.0.1:{ports['b_out']}", "--inbound", f"127.0.0.1:{ports['b_in']}"]
            + ["--app", f"127.0.0.1:{nginx_port}", "--admin", f"127.0.0.1:{ports['b_admin']}"]
            + common
        )
        procs += [a, b]
        wait_http(f"http://127.0.0.1:{ports['a_admin']}/ready")
        wait_http(f"http://127.0.0.1:{ports['b_admin']}/ready")
        idle = {"outbound": rss_mib(a.pid), "inbound": rss_mib(b.pid)}

        systems = {
            "direct": (f"http://127.0.0.1:{nginx_port}/", None),
            "plait pair": (f"http://127.0.0.1:{ports['a_out']}/", "web:80"),
        }
        table: dict[str, dict[str, dict[str, float]]] = {}
        for name, (url, host) in systems.items():
            wrk(url, 8, 1, host)  # warm-up: pools, caches
            for conns in (1, 32):
                samples = [wrk(url, conns, seconds, host) for _ in range(runs)]
                table.setdefault(name, {})[f"c{conns}"] = {
                    key: statistics.median(s[key] for s in samples) for key in samples[0]
                }
                spread = [round(s["rps"]) for s in samples]
                print(f"{name:12s} c={conns:<3d} rps={table[name][f'c{conns}']['rps']:>9.0f} "
                      f"p50={table[name][f'c{conns}'].get('p50_ms', 0):.3f}ms "
                      f"p99={table[name][f'c{conns}'].get('p99_ms', 0):.3f}ms runs={spread}")
        loaded = {"outbound": rss_mib(a.pid), "inbound": rss_mib(b.pid)}
        print(f"plait RSS idle: outbound {idle['outbound']:.1f} MiB, inbound {idle['inbound']:.1f} MiB; "
              f"after load: outbound {loaded['outbound']:.1f} MiB, inbound {loaded['inbound']:.1f} MiB")
        ratio = table["plait pair"]["c32"]["rps"] / table["direct"]["c32"]["rps"]
        print(f"ratios: rps_vs_direct={ratio:.3f} rss_idle_mib={idle['outbound']:.1f}")
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
