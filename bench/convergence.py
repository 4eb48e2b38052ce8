"""Convergence benchmark: how long until N proxies have ACKed a change, and what it costs.

    bench (main) --HTTP API--> plait control (a real process, its own data dir)
    bench workers (2-4 processes) == N TLS push clients ==> plait control :push

Setup: 1,000 Services (one apply) and 10,000 endpoints as static `Workload` resources (a few
applies, each under the API's 1 MiB body limit), all before the clients connect. Workload
resources are the faster honest path to 10,000 endpoints: registering them through proxies
would take 10,000 more push connections, and the compiler treats both kinds of endpoint alike.
Every Service `svc-NNNN` selects `app: svc-NNNN`, which ten Workloads carry.

Clients are real subscription clients speaking `plait.config.wire` over TLS with a client
certificate of their own (issued in the worker straight from the CA in the control plane's
data dir, so no join token is spent). Each says `hello`, applies every `snapshot`/`delta` to
a `wire.ResourceState` as the proxy's agent does (NACKs a delta whose base is not its version),
ACKs it, and heartbeats every second. They do not build `Snapshot` objects: a real proxy also
validates the whole state (`Snapshot.from_dict`) before its ACK; that cost is measured once and
reported separately. Clients receiving byte-identical frames share one parsed copy of the
message (interning: 2,000 private copies of 10,000 endpoints would need tens of GiB), but each
keeps its own state and applies every message itself.

Measured: for each change, per client, the time from the API's 200 to the moment the client
writes the ACK of the first version containing the change (`time.monotonic()` is the one
system-wide CLOCK_MONOTONIC, comparable across processes). Changes: an HTTPRoute on one
service (its timeout changes each trial) and an endpoint-only change (one Workload added;
the delta must carry exactly one cluster). Also the control plane's RSS (/proc) after setup
and at peak, and its CPU time per change.

Run: `python -m bench.convergence [--proxies N] [--services 1000] [--endpoints 10000]`.
It prints figures; it asserts nothing (except that every client converges).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from plait.config import wire
from plait.config.snapshot import Snapshot

NAMESPACE = "default"
ROUTE_SERVICE = "svc-0000"
ROUTE_KEY = f"{NAMESPACE}/{ROUTE_SERVICE}/Service/{ROUTE_SERVICE}"
ENDPOINT_SERVICE = "svc-0001"
ENDPOINT_KEY = f"{NAMESPACE}/{ENDPOINT_SERVICE}"
# Frames at least this large are parsed once per worker and shared (see the module docstring).
INTERN_BYTES = 64 * 1024
CONNECTS_IN_FLIGHT = 32  # per worker: the control plane's accept backlog is 100
HEARTBEAT = 1.0  # the agent's HEARTBEAT_INTERVAL
BODY_LIMIT = 900 * 1024  # under the API's 1 MiB


# --- the control plane -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControlPlane:
    """A `plait control` child process with its own data dir; `stop()` leaves nothing behind."""

    def __init__(self, data_dir: Path, grace: float) -> None:
        self.data_dir = data_dir
        self.api = f"http://127.0.0.1:{free_port()}"
        self.push = ("127.0.0.1", free_port())
        self.log = data_dir.parent / "control.log"
        with open(self.log, "wb") as out:
            self.popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "plait",
                    "control",
                    f"--data-dir={data_dir}",
                    f"--api={self.api.removeprefix('http://')}",
                    f"--push={self.push[0]}:{self.push[1]}",
                    f"--grace={grace}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.pid = self.popen.pid
        deadline = time.monotonic() + 30
        while True:
            try:
                self.get("/healthz")
                break
            except OSError:
                if self.popen.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"control plane did not start; see {self.log}") from None
                time.sleep(0.1)
        self.token = (data_dir / "admin-token").read_text().strip()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.api + path, timeout=30) as response:
            return json.loads(response.read())

    def apply(self, documents: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
        """POST the documents; returns the reply and the monotonic time its 200 arrived."""
        request = urllib.request.Request(
            self.api + "/api/v1/apply",
            data=json.dumps(documents).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            body = response.read()
            done = time.monotonic()
        return json.loads(body), done

    def status(self, field: str) -> int:
        """VmRSS / VmHWM in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


class RssSampler:
    """Samples the control plane's VmRSS every 20 ms in a thread; `peak` in KiB."""

    def __init__(self, cp: ControlPlane) -> None:
        self.cp = cp
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.cp.status("VmRSS"))
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# --- resources ---------------------------------------------------------------------------


def service(i: int) -> dict[str, Any]:
    name = f"svc-{i:04d}"
    return {
        "apiVersion": "plait.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]},
    }


def workload(name: str, service_index: int, n: int) -> dict[str, Any]:
    return {
        "apiVersion": "plait.dev/v1",
        "kind": "Workload",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "address": f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}",
            "port": 9080,
            "labels": {"app": f"svc-{service_index:04d}", "version": f"v{n % 3 + 1}"},
        },
    }


def route(timeout_ms: int) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE_SERVICE, "namespace": NAMESPACE},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": ROUTE_SERVICE, "port": 80}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": ROUTE_SERVICE, "port": 80, "weight": 90},
                        {"name": "svc-0002", "port": 80, "weight": 10},
                    ],
                    "timeouts": {"request": f"{timeout_ms}ms"},
                }
            ],
        },
    }


def chunks(documents: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Split into applies whose JSON bodies stay under the API's body limit."""
    out: list[list[dict[str, Any]]] = [[]]
    size = 0
    for doc in documents:
        n = len(json.dumps(doc)) + 2
        if size + n > BODY_LIMIT and out[-1]:
            out.append([])
            size = 0
        out[-1].append(doc)
        size += n
    return out


# --- a simulated proxy (in a worker process) ----------------------------------------------


def watch_matches(spec: tuple[Any, ...], state: wire.ResourceState) -> bool:
    kind, key, value = spec
    if kind == "route_timeout":
        found = state.items["routes"].get(key)
        return found is not None and found["rules"][0]["timeout_ms"] == value
    if kind == "endpoint":
        cluster = state.items["clusters"].get(key)
        return cluster is not None and any(e["workload"] == value for e in cluster["endpoints"])
    raise ValueError(kind)


def shape(message: dict[str, Any]) -> str:
    """What a message carried: `snapshot`, or `delta upsert clusters:1 ...` with counts."""
    if message["type"] != "delta":
        return str(message["type"])
    parts = [f"upsert {k}:{len(v)}" for k, v in sorted((message.get("upsert") or {}).items())]
    parts += [f"remove {k}:{len(v)}" for k, v in sorted((message.get("remove") or {}).items())]
    return "delta " + (" ".join(parts) or "empty")


class Client(asyncio.Protocol):
    """One simulated proxy: hello, apply + ACK every push, heartbeat every second."""

    def __init__(self, worker: Worker, name: str) -> None:
        self.worker = worker
        self.name = name
        self.buffer = bytearray()
        self.state = wire.ResourceState()
        self.pending_workload: dict[str, Any] | None = None
        self.transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()
        self.seen_at: float | None = None
        self.seen_shape = ""
        self.nacks = 0
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's SSL transport
        node = {
            "name": self.name,
            "service": "bench",
            "namespace": NAMESPACE,
            "labels": {"app": "bench"},
            "gateway": "",
        }
        transport.write(wire.encode(wire.hello(node, {}, None, "", "unknown")))
        loop = asyncio.get_running_loop()
        loop.call_later(random.uniform(0, HEARTBEAT), self.heartbeat)

    def heartbeat(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(wire.encode({"type": "heartbeat"}))
        asyncio.get_running_loop().call_later(HEARTBEAT, self.heartbeat)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.name}: connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 4:
            length = int.from_bytes(buf[:4], "big")
            if length > wire.MAX_FRAME:
                raise wire.FrameError("oversize frame")
            if len(buf) < 4 + length:
                break
            payload = bytes(buf[4 : 4 + length])
            del buf[: 4 + length]
            self.on_message(self.worker.decode(payload))

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        version = str(message.get("version", ""))
        if kind == "workload":
            self.pending_workload = message["data"]
            return
        if kind == "snapshot":
            new = wire.ResourceState.from_snapshot_dict(version, message)
            new.workload = self.state.workload
        elif kind == "delta":
            if str(message["base"]) != self.state.version:
                self.nacks += 1
                self.send({"type": "nack", "version": version, "reason": "base", "error": "base"})
                return
            new = self.state.apply_delta(message)
        else:
            return
        if self.pending_workload is not None:
            new.workload, self.pending_workload = self.pending_workload, None
        self.state = new
        self.send({"type": "ack", "version": version})
        spec = self.worker.watching
        if spec is not None and self.seen_at is None and watch_matches(spec, new):
            self.seen_at = time.monotonic()
            self.seen_shape = shape(message)
        if not self.ready.done():
            self.ready.set_result(None)

    def send(self, message: dict[str, Any]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(wire.encode(message))


class Worker:
    """Runs `count` clients in one process; obeys commands from the bench over a Pipe."""

    def __init__(
        self, index: int, count: int, push: tuple[str, int], ca_dir: Path, conn: Any
    ) -> None:
        self.index = index
        self.count = count
        self.push = push
        self.ca_dir = ca_dir
        self.conn = conn
        self.clients: list[Client] = []
        self.watching: tuple[Any, ...] | None = None
        self._interned: dict[bytes, dict[str, Any]] = {}

    def decode(self, payload: bytes) -> dict[str, Any]:
        if len(payload) < INTERN_BYTES:
            return json.loads(payload)  # type: ignore[no-any-return]
        message = self._interned.get(payload)
        if message is None:
            if len(self._interned) >= 4:
                self._interned.pop(next(iter(self._interned)))
            message = self._interned[payload] = json.loads(payload)
        return message

    def contexts(self) -> list[ssl.SSLContext]:
        """One key and certificate per client, signed by the control plane's CA."""
        from plait.identity.ca import CertificateAuthority
        from plait.identity.csr import generate_key, key_to_pem, make_csr
        from plait.identity.spiffe import SpiffeId
        from plait.identity.tls import client_context

        ca = CertificateAuthority.load(self.ca_dir)
        bundle = ca.trust_bundle_pem()
        spiffe = SpiffeId(ca.trust_domain, NAMESPACE, "bench")
        out = []
        for _ in range(self.count):
            key = generate_key()
            # 1 h: shorter than the control plane's own leaves, so signing here never rewrites
            # the CA's state file (it records only the latest leaf expiry).
            chain = ca.sign_csr(make_csr(key, spiffe), spiffe, timedelta(hours=1))
            out.append(client_context(chain, key_to_pem(key), bundle, alpn=("plait-push",)))
        return out

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        contexts = await asyncio.to_thread(self.contexts)
        gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT)

        async def connect(i: int, ctx: ssl.SSLContext) -> None:
            async with gate:
                client = Client(self, f"bench-{self.index}-{i:04d}")
                self.clients.append(client)
                await loop.create_connection(
                    lambda: client, *self.push, ssl=ctx, server_hostname=""
                )
                await client.ready

        started = time.monotonic()
        await asyncio.gather(*(connect(i, ctx) for i, ctx in enumerate(contexts)))
        self.conn.send(("connected", time.monotonic() - started, self.validate_cost()))
        commands: asyncio.Queue[Any] = asyncio.Queue()
        loop.add_reader(self.conn.fileno(), lambda: commands.put_nowait(self.conn.recv()))
        while True:
            command, *args = await commands.get()
            if command == "watch":
                self.watching = tuple(args[0])
                for c in self.clients:
                    c.seen_at, c.seen_shape = None, ""
                self.conn.send(("watching",))
            elif command == "collect":
                self.conn.send(await self.collect(float(args[0])))
            elif command == "stop":
                for c in self.clients:
                    if c.transport is not None:
                        c.transport.abort()
                self.conn.send(("stopped",))
                return

    async def collect(self, timeout: float) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(c.seen_at is None for c in self.clients):
            await asyncio.sleep(0.05)
        seen = [c.seen_at for c in self.clients if c.seen_at is not None]
        shapes = Counter(c.seen_shape for c in self.clients if c.seen_at is not None)
        lost = sum(c.lost for c in self.clients)
        nacks = sum(c.nacks for c in self.clients)
        return ("collected", seen, len(self.clients) - len(seen), dict(shapes), lost, nacks)

    def validate_cost(self) -> float | None:
        """What a real proxy adds per push: `Snapshot.from_dict` over the whole state (ms)."""
        if self.index != 0 or not self.clients:
            return None
        state = self.clients[0].state
        node = {
            "name": "x",
            "service": "bench",
            "namespace": NAMESPACE,
            "labels": {},
            "gateway": "",
        }
        started = time.perf_counter()
        Snapshot.from_dict(state.to_snapshot_dict(node))
        return (time.perf_counter() - started) * 1e3


def worker_main(index: int, count: int, push: tuple[str, int], ca_dir: str, conn: Any) -> None:
    try:
        import uvloop

        uvloop.run(Worker(index, count, push, Path(ca_dir), conn).run())
    except BaseException as exc:  # the bench must hear why a worker died
        conn.send(("error", f"worker {index}: {type(exc).__name__}: {exc}"))
        raise


# --- the bench ---------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": ordered[-1]}


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="plait-convergence-"))
        self.cp = ControlPlane(self.tmp / "control", args.grace)
        self.pipes: list[Any] = []
        self.procs: list[Any] = []

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):  # a worker that died closed its end
                pipe.send(("stop",))
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self.cp.stop()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def ask(self, command: tuple[Any, ...], timeout: float = 300) -> list[tuple[Any, ...]]:
        for pipe in self.pipes:
            pipe.send(command)
        return [self.reply(pipe, timeout) for pipe in self.pipes]

    def reply(self, pipe: Any, timeout: float) -> tuple[Any, ...]:
        if not pipe.poll(timeout):
            raise RuntimeError(f"a worker did not answer within {timeout} s")
        answer: tuple[Any, ...] = pipe.recv()
        if answer[0] == "error":
            raise RuntimeError(answer[1])
        return answer

    def populate(self) -> None:
        a = self.args
        started = time.monotonic()
        _, _ = self.cp.apply([service(i) for i in range(a.services)])
        docs = [workload(f"w-{n:05d}", n % a.services, n) for n in range(a.endpoints)]
        parts = chunks(docs)
        for part in parts:
            self.cp.apply(part)
        print(
            f"setup: {a.services} Services in 1 apply, {a.endpoints} Workloads in {len(parts)} "
            f"applies: {time.monotonic() - started:.1f} s",
            flush=True,
        )

    def connect(self) -> None:
        a = self.args
        ctx = mp.get_context("spawn")
        per = [a.proxies // a.workers + (i < a.proxies % a.workers) for i in range(a.workers)]
        started = time.monotonic()
        for i, count in enumerate(per):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_main,
                args=(i, count, self.cp.push, str(self.cp.data_dir / "ca"), child),
                daemon=True,
            )
            proc.start()
            self.pipes.append(parent)
            self.procs.append(proc)
        answers = [self.reply(p, 900) for p in self.pipes]
        self.validate_ms = next((x[2] for x in answers if x[2] is not None), None)
        # Everyone ACKed what the control plane compiled last: it knows them all as synced.
        deadline = time.monotonic() + 120
        while True:
            proxies = self.cp.get("/api/v1/proxies")
            if len(proxies) == a.proxies and all(p["synced"] for p in proxies):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sum(p['synced'] for p in proxies)}/{len(proxies)} synced")
            time.sleep(0.5)
        print(
            f"setup: {a.proxies} clients in {a.workers} workers connected and synced "
            f"(full snapshot each): {time.monotonic() - started:.1f} s",
            flush=True,
        )

    def change(
        self, label: str, documents: list[dict[str, Any]], spec: tuple[Any, ...]
    ) -> dict[str, Any]:
        """Apply one change; per-client latency from the API's 200 to the ACK containing it."""
        self.ask(("watch", spec), 30)
        time.sleep(0.3)  # let the watch settle; heartbeats keep flowing
        cpu = self.cp.cpu_seconds()
        sampler = RssSampler(self.cp)
        reply, acked_from = self.cp.apply(documents)
        assert all(r["action"] != "unchanged" for r in reply["results"]), reply
        answers = self.ask(("collect", acked_from - time.monotonic() + 30), 60)
        time.sleep(0.2)
        peak = sampler.stop()
        latencies = [t - acked_from for a in answers for t in a[1]]
        missing = sum(a[2] for a in answers)
        shapes: Counter[str] = Counter()
        for a in answers:
            shapes.update(a[3])
        result = {
            "label": label,
            "latencies": latencies,
            "missing": missing,
            "shapes": dict(shapes),
            "lost": sum(a[4] for a in answers),
            "nacks": sum(a[5] for a in answers),
            "rss_peak_kib": peak,
            "cpu_s": self.cp.cpu_seconds() - cpu,
        }
        p = percentiles(latencies) if latencies else {}
        print(
            f"{label}: "
            + " ".join(f"{k} {v * 1e3:.0f} ms" for k, v in p.items())
            + f"  missing {missing}  shapes {dict(shapes)}  control-plane CPU {result['cpu_s']:.2f} s"
            + f"  RSS peak {peak / 1024:.0f} MiB",
            flush=True,
        )
        return result

    def run(self) -> dict[str, Any]:
        a = self.args
        self.populate()
        time.sleep(1.0)  # the debounced compile of the last apply
        rss_populated = self.cp.status("VmRSS")
        self.connect()
        time.sleep(2.0)
        rss_setup = self.cp.status("VmRSS")
        hwm_setup = self.cp.status("VmHWM")
        print(
            f"control plane RSS: {rss_populated / 1024:.0f} MiB populated, no clients; "
            f"{rss_setup / 1024:.0f} MiB with {a.proxies} clients; high-water mark so far "
            f"{hwm_setup / 1024:.0f} MiB",
            flush=True,
        )
        self.change("warm-up (route created)", [route(1000)], ("route_timeout", ROUTE_KEY, 1000))
        routes = [
            self.change(
                f"route change {k}", [route(1000 + k)], ("route_timeout", ROUTE_KEY, 1000 + k)
            )
            for k in range(1, a.trials + 1)
        ]
        endpoints = []
        for k in range(1, a.trials + 1):
            name = f"added-{k}"
            doc = workload(name, 1, a.endpoints + k)
            endpoints.append(
                self.change(f"endpoint change {k}", [doc], ("endpoint", ENDPOINT_KEY, name))
            )
        return {
            "rss_populated_kib": rss_populated,
            "rss_setup_kib": rss_setup,
            "hwm_kib": self.cp.status("VmHWM"),
            "routes": routes,
            "endpoints": endpoints,
            "validate_ms": self.validate_ms,
        }


def summarize(args: argparse.Namespace, results: dict[str, Any]) -> str:
    lines = []
    for label, key in (
        ("route change (one HTTPRoute)", "routes"),
        ("endpoint change (one Workload)", "endpoints"),
    ):
        runs = results[key]
        all_latencies = [x for r in runs for x in r["latencies"]]
        p = percentiles(all_latencies)
        shapes: Counter[str] = Counter()
        for r in runs:
            shapes.update(r["shapes"])
        per_change = ", ".join(f"{max(r['latencies']) * 1e3:.0f}" for r in runs)
        lines.append(
            f"- {label}, {len(runs)} changes x {args.proxies} clients: "
            + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in p.items())
            + f"; per-change max {per_change} ms"
            + f"; control-plane CPU per change {statistics.mean(r['cpu_s'] for r in runs):.2f} s"
            + f"; missing {sum(r['missing'] for r in runs)}; what the clients received: "
            + ", ".join(f"`{s}` x{n}" for s, n in sorted(shapes.items()))
        )
    peak_changes = max(r["rss_peak_kib"] for r in results["routes"] + results["endpoints"])
    lines.append(
        f"- control-plane RSS: {results['rss_populated_kib'] / 1024:.0f} MiB populated without "
        f"clients, {results['rss_setup_kib'] / 1024:.0f} MiB after setup with "
        f"{args.proxies} clients, {peak_changes / 1024:.0f} MiB peak during the changes, "
        f"{results['hwm_kib'] / 1024:.0f} MiB high-water mark (VmHWM, includes the initial "
        f"full-snapshot fan-out)"
    )
    lines.append(
        f"- load average (1 min) before / after: {results['load'][0]:.2f} / {results['load'][1]:.2f}"
        " (other work on the machine slows every figure)"
    )
    if results["validate_ms"] is not None:
        lines.append(
            f"- not in the figures: a real proxy validates the whole state "
            f"(`Snapshot.from_dict`) before each ACK: {results['validate_ms']:.0f} ms here"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--proxies", type=int, default=1000)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10000)
    parser.add_argument(
        "--workers", type=int, default=0, help="client processes (default: 2-4, 500 clients each)"
    )
    parser.add_argument("--trials", type=int, default=5, help="changes of each kind (default 5)")
    parser.add_argument(
        "--grace", type=float, default=5.0, help="heartbeat grace of the control plane"
    )
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir and log")
    args = parser.parse_args()
    if args.services < 3:
        parser.error("--services: at least 3")
    if not args.workers:
        args.workers = max(2, min(4, math.ceil(args.proxies / 500)))
    load_before = os.getloadavg()[0]
    bench = Bench(args)
    print(f"control plane pid {bench.cp.pid}, data dir {bench.tmp}", flush=True)
    try:
        results = bench.run()
    finally:
        bench.close()
    results["load"] = (load_before, os.getloadavg()[0])
    print()
    print(
        f"`python -m bench.convergence --proxies {args.proxies} --services {args.services} "
        f"--endpoints {args.endpoints}`:"
    )
    print(summarize(args, results))
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, **results}, default=str)
        )


if __name__ == "__main__":
    main()
