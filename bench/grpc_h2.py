"""gRPC unary and HTTP/2 throughput: a plait pair against an Envoy pair, in one run (issue 8).

    direct   h2load --h2c--> nginx
    plait    h2load --h2c--> plait outbound --mTLS, h2--> plait inbound --h2c--> nginx
    envoy    h2load --h2c--> Envoy          --mTLS, h2--> Envoy          --h2c--> nginx

One h2load connection carrying 32 concurrent streams (`-c 1 -m 32`: how a gRPC client
multiplexes), for `--seconds` after a one-second warm-up, in two scenarios:

- gRPC unary: POST /helloworld.Greeter/SayHello, `content-type: application/grpc`,
  `te: trailers`, a 12-byte HelloRequest frame; nginx answers a HelloReply frame with the
  trailer `grpc-status: 0` (a real grpcio client gets `Hello, world!` from it, checked before
  each system is measured).
- HTTP/2: GET / answered with a 12-byte body.

The upstream is one nginx worker speaking h2c (far faster than either proxy, so it is not
what is measured). Each proxy has one worker: plait is one process each (as `bench/run.py`
sets it up: a real control plane, tokens, SVIDs and snapshots pushed, access log to a file),
Envoy 1.40 runs `--concurrency 1` with the same kind of X.509-SVIDs from plait's CA
(`bench/pki.py`), SPIFFE IDs checked both ways and ALPN h2 between the two. Envoy's configs
are the ones of `bench/envoy/` with HTTP/2 turned on for both legs; they are below, in full.

p50/p99 come from h2load's per-request log (`--log-file`). CPU per request is each proxy's
user+system time over the measured run divided by the requests completed. The figures are
only as good as the machine is quiet: the load generator, two proxies and nginx share its
cores; the report prints the load average before and after.

Run: `python -m bench.grpc_h2 [--seconds 10] [--rounds 1] [--systems direct,plait,envoy]`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.net import free_port, wait_until
from bench.pki import Pki
from bench.procs import Processes, cpu_seconds
from bench.systems.envoy import envoy_binary
from bench.systems.plait import PlaitPair
from bench.upstream import nginx_binary
from plait.local.greeter import helloworld_pb2, helloworld_pb2_grpc

STREAMS = 32
AUTHORITY = "web:80"
GRPC_PATH = "/helloworld.Greeter/SayHello"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")

NGINX_CONF = """\
# h2c upstream: GET / is 12 bytes of text; any other path answers a gRPC HelloReply frame
# with the trailer grpc-status: 0 (POST to a static file is a 405 that error_page turns into
# the file, the usual nginx idiom). etag, ranges and a no-op sub_filter (which drops
# last-modified and content-length) leave the headers a gRPC server sends: :status, server,
# date, content-type.
{{user_line}}
worker_processes 1;
daemon off;
pid {{dir}}/nginx.pid;
error_log {{dir}}/nginx-error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  http2_max_concurrent_streams 1024;
  client_body_temp_path {{dir}}/nginx-body;
  proxy_temp_path {{dir}}/nginx-proxy;
  fastcgi_temp_path {{dir}}/nginx-fastcgi;
  uwsgi_temp_path {{dir}}/nginx-uwsgi;
  scgi_temp_path {{dir}}/nginx-scgi;
  server {
    listen 127.0.0.1:{{port}} http2;
    location = / { default_type text/plain; return 200 "hello world\\n"; }
    location / {
      root {{dir}}/www;
      default_type application/grpc;
      add_trailer grpc-status 0 always;
      etag off;
      max_ranges 0;
      sub_filter_types application/grpc;
      sub_filter "plait-never-matches" "";
      rewrite ^ /reply.bin break;
      error_page 405 =200 $uri;
    }
  }
}
"""

_TLS_CONTEXT = """\
tls_params: {tls_minimum_protocol_version: TLSv1_2}
alpn_protocols: ["h2"]
tls_certificates:
- certificate_chain: {filename: {{cert}}}
  private_key: {filename: {{key}}}
validation_context:
  trusted_ca: {filename: {{bundle}}}
  match_typed_subject_alt_names:
  - san_type: URI
    matcher: {exact: "{{peer_id}}"}"""

_H2_UPSTREAM = """\
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"""

_LIMITS = """\
    circuit_breakers:
      thresholds:
      - max_connections: 4294967295
        max_pending_requests: 4294967295
        max_requests: 4294967295
        max_retries: 4294967295"""

# bench/envoy/client.yaml with HTTP/2 upstream (ALPN h2); codec AUTO takes h2c from h2load.
ENVOY_CLIENT = f"""\
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {{{{admin_port}}}}}}
static_resources:
  listeners:
  - name: outbound_0.0.0.0_80
    address:
      socket_address: {{address: 127.0.0.1, port_value: {{{{listen_port}}}}}}
    per_connection_buffer_limit_bytes: 32768
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: outbound_0.0.0.0_80
          codec_type: AUTO
          use_remote_address: false
          normalize_path: true
          merge_slashes: true
          route_config:
            name: "80"
            validate_clusters: false
            virtual_hosts:
            - name: web.default.svc.cluster.local:80
              domains: ["web", "web:80", "web.default", "web.default:80",
                        "web.default.svc.cluster.local", "web.default.svc.cluster.local:80"]
              routes:
              - name: default
                match: {{prefix: "/"}}
                route:
                  cluster: outbound|80||web.default.svc.cluster.local
                  timeout: 0s
                  retry_policy:
                    retry_on: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes
                    num_retries: 2
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: outbound|80||web.default.svc.cluster.local
    type: STATIC
    connect_timeout: 10s
    lb_policy: LEAST_REQUEST
    per_connection_buffer_limit_bytes: 32768
{_LIMITS}
{_H2_UPSTREAM}
    load_assignment:
      cluster_name: outbound|80||web.default.svc.cluster.local
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {{{{server_port}}}}}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
{textwrap.indent(_TLS_CONTEXT, " " * 10)}
"""

# bench/envoy/server.yaml with ALPN h2 downstream and HTTP/2 (h2c) to the app.
ENVOY_SERVER = f"""\
admin:
  address:
    socket_address: {{address: 127.0.0.1, port_value: {{{{admin_port}}}}}}
static_resources:
  listeners:
  - name: virtualInbound
    address:
      socket_address: {{address: 127.0.0.1, port_value: {{{{listen_port}}}}}}
    per_connection_buffer_limit_bytes: 32768
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
{textwrap.indent(_TLS_CONTEXT, " " * 12)}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: inbound_0.0.0.0_80
          codec_type: AUTO
          use_remote_address: false
          normalize_path: true
          merge_slashes: true
          forward_client_cert_details: APPEND_FORWARD
          set_current_client_cert_details: {{subject: true, dns: true, uri: true}}
          route_config:
            name: inbound|80||
            validate_clusters: false
            virtual_hosts:
            - name: inbound|http|80
              domains: ["*"]
              routes:
              - name: default
                match: {{prefix: "/"}}
                route: {{cluster: "inbound|80||", timeout: 0s}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: inbound|80||
    type: STATIC
    connect_timeout: 10s
    per_connection_buffer_limit_bytes: 32768
{_LIMITS}
{_H2_UPSTREAM}
    load_assignment:
      cluster_name: inbound|80||
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{address: 127.0.0.1, port_value: {{{{app_port}}}}}}
"""

# The plait pair's resources: the web Service's port speaks HTTP/2 (h2c to nginx).
PLAIT_RESOURCES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web, namespace: default}
spec: {selector: {app: web}, ports: [{name: grpc, port: 80, protocol: http2}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      backendRefs: [{name: web, port: 80}]
"""


def fill(template: str, out: Path, **values: object) -> Path:
    """`template` with its `{{name}}` placeholders filled, written to `out`."""
    wanted = set(_PLACEHOLDER.findall(template))
    if wanted != set(values):
        raise KeyError(f"placeholders {sorted(wanted)}, values {sorted(values)}")
    out.write_text(_PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template))
    return out


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed gRPC message, uncompressed (PROTOCOL-HTTP2.md)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


# --- systems ---------------------------------------------------------------------------------


class H2Nginx:
    """The h2c upstream, owned by `procs`."""

    def __init__(self, workdir: Path, procs: Processes) -> None:
        self.dir = workdir / "nginx"
        (self.dir / "www").mkdir(parents=True, exist_ok=True)
        reply = helloworld_pb2.HelloReply(message="Hello, world!").SerializeToString()
        (self.dir / "www" / "reply.bin").write_bytes(grpc_frame(reply))
        self.port = free_port()
        user_line = "user root root;" if os.geteuid() == 0 else ""
        conf = fill(
            NGINX_CONF, self.dir / "nginx.conf", dir=self.dir, port=self.port, user_line=user_line
        )
        procs.spawn("nginx-h2", [nginx_binary(), "-c", str(conf), "-p", str(self.dir)])
        wait_until(lambda: say_hello(self.port, None), 10, "nginx (h2c) to answer gRPC")


def say_hello(port: int, authority: str | None) -> bool:
    """A real grpcio unary call through 127.0.0.1:port answers `Hello, world!`."""
    options: list[tuple[str, object]] = [("grpc.enable_http_proxy", 0)]
    if authority:
        options.append(("grpc.default_authority", authority))
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        stub = helloworld_pb2_grpc.GreeterStub(channel)
        try:
            reply = stub.SayHello(helloworld_pb2.HelloRequest(name="bench"), timeout=2)
        except grpc.RpcError:
            return False
    return bool(reply.message == "Hello, world!")


class EnvoyH2Pair:
    def __init__(self, workdir: Path, procs: Processes, pki: Pki, app_port: int) -> None:
        client_svid, server_svid = pki.issue("client"), pki.issue("web")
        ports = {k: free_port() for k in ("listen", "client_admin", "server", "server_admin")}
        server = fill(
            ENVOY_SERVER,
            workdir / "envoy-h2-server.yaml",
            admin_port=ports["server_admin"],
            listen_port=ports["server"],
            app_port=app_port,
            cert=server_svid.cert,
            key=server_svid.key,
            bundle=pki.bundle,
            peer_id=client_svid.spiffe_id,
        )
        client = fill(
            ENVOY_CLIENT,
            workdir / "envoy-h2-client.yaml",
            admin_port=ports["client_admin"],
            listen_port=ports["listen"],
            server_port=ports["server"],
            cert=client_svid.cert,
            key=client_svid.key,
            bundle=pki.bundle,
            peer_id=server_svid.spiffe_id,
        )
        base = 2000 + (os.getpid() % 10000) * 10
        self.server = self._envoy(procs, "envoy-h2-server", server, base + 1)
        self.client = self._envoy(procs, "envoy-h2-client", client, base + 2)
        self.port = ports["listen"]

    @staticmethod
    def _envoy(procs: Processes, name: str, config: Path, base_id: int) -> int:
        argv = [envoy_binary(), "-c", str(config), "--concurrency", "1"]
        argv += ["--base-id", str(base_id), "--log-level", "warn"]
        return procs.spawn(name, argv).pid


class PlaitH2Pair(PlaitPair):
    resources = PLAIT_RESOURCES


# --- load ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Result:
    system: str
    scenario: str
    rps: float
    p50_ms: float
    p99_ms: float
    ok: int
    failed: int
    cpu_us: dict[str, float]  # proxy role -> CPU microseconds per request


def h2load(
    port: int, scenario: str, seconds: int, workdir: Path
) -> tuple[float, list[float], int, int]:
    """(req/s, latencies in ms, 2xx count, everything else) for one h2load run."""
    log = workdir / f"h2load-{port}-{scenario}.log"
    log.unlink(missing_ok=True)
    argv = ["h2load", "-c", "1", "-m", str(STREAMS), "-t", "1"]
    argv += ["-D", str(seconds), "--warm-up-time", "1", "--log-file", str(log)]
    argv += ["-H", f":authority: {AUTHORITY}"]
    if scenario == "grpc":
        body = workdir / "request.bin"
        body.write_bytes(grpc_frame(helloworld_pb2.HelloRequest(name="world").SerializeToString()))
        argv += ["-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
        url = f"http://127.0.0.1:{port}{GRPC_PATH}"
    else:
        url = f"http://127.0.0.1:{port}/"
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed:\n{out.stdout}\n{out.stderr}")
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out.stdout).group(1))  # type: ignore[union-attr]
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out.stdout)
    assert codes is not None, out.stdout
    failed = re.search(r"(\d+) failed, (\d+) errored, (\d+) timeout", out.stdout)
    assert failed is not None, out.stdout
    ok = int(codes.group(1))
    bad = sum(int(codes.group(i)) for i in (2, 3, 4)) + sum(int(x) for x in failed.groups())
    latencies = []
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1].startswith("2"):
            latencies.append(int(parts[2]) / 1000)  # microseconds -> ms
    return rps, latencies, ok, bad


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    system: str, port: int, pids: dict[str, int], seconds: int, workdir: Path, procs: Processes
) -> list[Result]:
    def answers() -> bool:
        procs.check_alive()
        return say_hello(port, AUTHORITY)

    wait_until(answers, 20, f"a grpcio call through {system}")
    results = []
    for scenario in ("grpc", "h2"):
        before = {role: cpu_seconds(pid) for role, pid in pids.items()}
        rps, latencies, ok, bad = h2load(port, scenario, seconds, workdir)
        after = {role: cpu_seconds(pid) for role, pid in pids.items()}
        cpu = {r: (after[r] - before[r]) * 1e6 / max(ok, 1) for r in pids}
        results.append(
            Result(
                system,
                scenario,
                rps,
                percentile(latencies, 0.5),
                percentile(latencies, 0.99),
                ok,
                bad,
                cpu,
            )
        )
        print(f"  {system:6} {scenario:4} {rps:9.0f} req/s", flush=True)
    return results


def run_system(name: str, seconds: int, workdir: Path, pki: Pki) -> list[Result]:
    sysdir = workdir / name
    sysdir.mkdir(parents=True, exist_ok=True)
    procs = Processes(sysdir)
    try:
        nginx = H2Nginx(sysdir, procs)
        if name == "direct":
            return measure(name, nginx.port, {}, seconds, sysdir, procs)
        if name == "envoy":
            envoy = EnvoyH2Pair(sysdir, procs, pki, nginx.port)
            pids = {"client": envoy.client, "server": envoy.server}
            return measure(name, envoy.port, pids, seconds, sysdir, procs)
        with PlaitH2Pair(workdir, nginx.port, pki) as pair:
            target = pair.start()
            return measure(name, target.port, pair.proxies(), seconds, sysdir, pair.procs)
    finally:
        procs.close()


def table(results: list[Result]) -> str:
    rows = [
        "| scenario | system | req/s | p50 ms | p99 ms | non-2xx/errors | CPU us/req client | CPU us/req server |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"grpc": "gRPC unary", "h2": "HTTP/2 GET"}
    for scenario in ("grpc", "h2"):
        for r in (x for x in results if x.scenario == scenario):
            cpu = [f"{r.cpu_us[k]:.0f}" if k in r.cpu_us else "-" for k in ("client", "server")]
            rows.append(
                f"| {names[scenario]} | {r.system} | {r.rps:,.0f} | {r.p50_ms:.2f} | "
                f"{r.p99_ms:.2f} | {r.failed} | {cpu[0]} | {cpu[1]} |"
            )
    return "\n".join(rows)


def combine(results: list[Result]) -> list[Result]:
    """Several rounds of one system and scenario -> the median of each figure."""
    out = []
    for key in dict.fromkeys((r.system, r.scenario) for r in results):
        rs = [r for r in results if (r.system, r.scenario) == key]
        roles = rs[0].cpu_us.keys()
        out.append(
            Result(
                key[0],
                key[1],
                statistics.median(r.rps for r in rs),
                statistics.median(r.p50_ms for r in rs),
                statistics.median(r.p99_ms for r in rs),
                sum(r.ok for r in rs),
                sum(r.failed for r in rs),
                {k: statistics.median(r.cpu_us[k] for r in rs) for k in roles},
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_h2", description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--systems", default="direct,plait,envoy")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    for tool in ("h2load",):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install nghttp2-client")
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="plait-grpc-bench-"))
    print(f"load average before: {os.getloadavg()[0]:.2f} (cores: {os.cpu_count()})", flush=True)
    results: list[Result] = []
    try:
        pki = Pki(workdir / "pki")
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}/{args.rounds}", flush=True)
            for name in systems:  # a fresh directory per run: no state from an earlier one
                results += run_system(name, args.seconds, workdir / f"round{round_}", pki)
    finally:
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    print(
        f"\n{STREAMS} concurrent streams on one h2c connection (h2load -c 1 -m {STREAMS}), "
        f"{args.seconds} s per run, median of {args.rounds} round(s):\n"
    )
    print(table(combine(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
