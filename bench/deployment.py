"""Sidecars or one node proxy: memory and CPU for N workloads, measured both ways.

`python -m bench.deployment` (options: `--workloads 1,5,10`, `--rps 20`, `--seconds 10`)
starts a real `plait control` (mTLS, join tokens), an `echo` service (an app behind its own
sidecar, not counted), and N workloads `w0..wN-1`, each a Service with a trivial app:

- sidecars: N `plait proxy --mode sidecar` processes, one per workload;
- node: one `plait proxy --mode node` with N `--workload`s (each app connects from its
  own address 127.0.0.(11+i) to the shared outbound port).

Once every proxy is ready and synced, it records the RSS of the proxies (idle) and their CPU
time over 5 s without traffic, then each
workload's "app" (a thread here, pacing keep-alive GETs) calls `echo` through its proxy at
`--rps` requests per second for `--seconds`, and it records the proxies' CPU time over that
window (user + system, from /proc) and their RSS at its end. Every request must succeed.
It prints one table row per (mode, N). The load generator, control plane and echo are not
counted. Loopback only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.procs import Processes, cpu_seconds, rss_kib

APP = r"""
import os
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""

PLAIT = [sys.executable, "-m", "plait"]
IDLE_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def get_json(url: str, body: bytes | None = None, token: str = "", ctype: str = "") -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if ctype:
        headers["Content-Type"] = ctype
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def ready(admin: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
        return bool(r.status == 200)


class Deployment:
    """A control plane, echo behind its sidecar, and N workloads in one of the two modes."""

    def __init__(self, tmp: Path, mode: str, n: int) -> None:
        self.tmp = tmp
        self.mode = mode
        self.n = n
        self.procs = Processes(tmp)
        self.api = f"http://127.0.0.1:{free_port()}"
        self.push = free_port()
        self.proxy_pids: list[int] = []
        self.outbound: list[tuple[int, str]] = []  # (port, source address) per workload

    def start(self) -> None:
        control = tmp_dir = self.tmp
        self.procs.spawn(
            "control",
            [*PLAIT, "control", f"--data-dir={control / 'control'}",
             f"--api={self.api[7:]}", f"--push=127.0.0.1:{self.push}"],
        )  # fmt: skip
        wait_until(lambda: get_json(f"{self.api}/healthz"), 60, "the control plane")
        self.token = (control / "control" / "admin-token").read_text().strip()
        services = [
            f"apiVersion: plait.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\n"
            f"spec: {{selector: {{app: {name}}}, ports: [{{name: http, port: 9080}}]}}\n"
            for name in ["echo", *(f"w{i}" for i in range(self.n))]
        ]
        get_json(
            f"{self.api}/api/v1/apply",
            "---\n".join(services).encode(),
            self.token,
            "application/yaml",
        )
        app_port = free_port()
        self.procs.spawn("app", [sys.executable, "-c", APP], {"PORT": str(app_port)})
        echo_admin = free_port()
        self._sidecar("echo", "echo", echo_admin, app_port, count=False)
        admins = [echo_admin]
        if self.mode == "sidecars":
            for i in range(self.n):
                admin = free_port()
                port = self._sidecar(f"w{i}", f"w{i}", admin, app_port)
                self.outbound.append((port, "127.0.0.1"))
                admins.append(admin)
        else:
            admin, outbound = free_port(), free_port()
            argv = [
                *PLAIT, "proxy", "--mode=node", f"--control=127.0.0.1:{self.push}",
                f"--ca-bundle={tmp_dir / 'control' / 'trust-bundle.pem'}",
                f"--state-dir={tmp_dir / 'node.state'}", f"--outbound=127.0.0.1:{outbound}",
                "--inbound=127.0.0.1:0", f"--admin=127.0.0.1:{admin}", "--access-log=off",
            ]  # fmt: skip
            for i in range(self.n):
                token_file = tmp_dir / f"w{i}.token"
                token_file.write_text(self._join_token(f"w{i}"))
                source = f"127.0.0.{11 + i}"
                argv.append(
                    f"--workload=name=w{i}-0,service=w{i},app=127.0.0.1:{app_port},"
                    f"source={source},token-file={token_file}"
                )
                self.outbound.append((outbound, source))
            self.proxy_pids.append(self.procs.spawn("node", argv).pid)
            admins.append(admin)
        for admin in admins:
            wait_until(lambda a=admin: ready(a), 120, "proxies ready")
        wait_until(self._synced, 60, "every proxy synced")

    def _join_token(self, service: str) -> str:
        body = json.dumps({"service": service, "namespace": "default"}).encode()
        reply = get_json(f"{self.api}/api/v1/tokens", body, self.token, "application/json")
        return str(reply["token"])

    def _sidecar(self, name: str, service: str, admin: int, app: int, count: bool = True) -> int:
        outbound = free_port()
        argv = [
            *PLAIT, "proxy", f"--control=127.0.0.1:{self.push}",
            f"--ca-bundle={self.tmp / 'control' / 'trust-bundle.pem'}",
            f"--state-dir={self.tmp / (name + '.state')}", f"--name={name}-0",
            f"--service={service}", f"--labels=app={service}", f"--app=127.0.0.1:{app}",
            f"--outbound=127.0.0.1:{outbound}", f"--inbound=127.0.0.1:{free_port()}",
            f"--admin=127.0.0.1:{admin}", "--access-log=off",
        ]  # fmt: skip
        env = {"PLAIT_JOIN_TOKEN": self._join_token(service)}
        popen = self.procs.spawn(f"{name}.proxy", argv, env)
        if count:
            self.proxy_pids.append(popen.pid)
        return outbound

    def _synced(self) -> bool:
        proxies = get_json(f"{self.api}/api/v1/proxies")
        return len(proxies) == self.n + 1 and all(p["synced"] for p in proxies)

    def rss_mib(self) -> float:
        return sum(rss_kib(pid) for pid in self.proxy_pids) / 1024

    def cpu(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.proxy_pids)

    def close(self) -> None:
        self.procs.close()


def load(targets: list[tuple[int, str]], rps: float, seconds: float) -> tuple[int, list[str]]:
    """Each workload's app: one thread, one keep-alive connection, `rps` paced GETs."""
    failures: list[str] = []
    counts = [0] * len(targets)
    stop_at = time.monotonic() + seconds

    def run(index: int, port: int, source: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
        next_at = time.monotonic()
        while next_at < stop_at:
            try:
                conn.request("GET", "/", headers={"Host": "echo.default:9080"})
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures.append(f"w{index}: {response.status}")
                counts[index] += 1
            except (OSError, http.client.HTTPException) as exc:
                failures.append(f"w{index}: {exc}")
                conn.close()
            next_at += 1 / rps
            time.sleep(max(0.0, next_at - time.monotonic()))
        conn.close()

    threads = [
        threading.Thread(target=run, args=(i, port, source))
        for i, (port, source) in enumerate(targets)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts), failures


def measure(mode: str, n: int, rps: float, seconds: float, keep: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix=f"plait-deploy-{mode}-{n}-"))
    deployment = Deployment(tmp, mode, n)
    try:
        deployment.start()
        # Warm up (first connections, TLS handshakes, lazily built metrics), then settle.
        load(deployment.outbound, rps, 1.0)
        time.sleep(1.0)
        idle = deployment.rss_mib()
        # Idle: what the proxies cost with no traffic (tickers, heartbeats, health checks).
        cpu_before, started = deployment.cpu(), time.monotonic()
        time.sleep(IDLE_SECONDS)
        idle_cpu = 100 * (deployment.cpu() - cpu_before) / (time.monotonic() - started)
        cpu_before, started = deployment.cpu(), time.monotonic()
        requests, failures = load(deployment.outbound, rps, seconds)
        elapsed = time.monotonic() - started
        cpu = deployment.cpu() - cpu_before
        loaded = deployment.rss_mib()
        if failures:
            raise RuntimeError(f"{len(failures)} failed requests, e.g. {failures[:3]}")
        return {
            "mode": mode,
            "workloads": n,
            "processes": len(deployment.proxy_pids),
            "rss_idle_mib": idle,
            "rss_load_mib": loaded,
            "cpu_idle_percent": idle_cpu,
            "cpu_percent": 100 * cpu / elapsed,
            "requests": requests,
            "cpu_ms_per_request": 1000 * cpu / requests if requests else 0.0,
        }
    finally:
        deployment.close()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--workloads", default="1,5,10", help="workload counts (default 1,5,10)")
    p.add_argument("--rps", type=float, default=20.0, help="requests/s per workload (20)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured load window (10)")
    p.add_argument("--modes", default="sidecars,node", help="sidecars,node")
    p.add_argument("--keep", action="store_true", help="keep work directories and logs")
    args = p.parse_args(argv)
    rows = []
    for n in (int(x) for x in args.workloads.split(",")):
        for mode in args.modes.split(","):
            row = measure(mode, n, args.rps, args.seconds, args.keep)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(
        f"\nload: {args.rps:g} req/s per workload for {args.seconds:g} s, each workload's app "
        "calling `echo` through its proxy (keep-alive, mTLS between proxies)\n"
    )
    print("| mode | workloads | proxy processes | RSS idle (MiB) | RSS under load (MiB) "
          "| CPU idle (% of a core) | CPU under load (% of a core) | CPU ms / request |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['mode']} | {r['workloads']} | {r['processes']} | {r['rss_idle_mib']:.1f} "
            f"| {r['rss_load_mib']:.1f} | {r['cpu_idle_percent']:.1f} | {r['cpu_percent']:.1f} "
            f"| {r['cpu_ms_per_request']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
