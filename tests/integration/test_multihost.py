"""Bookinfo across three hosts made of network namespaces (issue #7).

Host A runs the control plane (push listener on its bridge address). Hosts B and C each run
two Bookinfo apps. Apps call each other by plain service names (`http://reviews:9080`): mesh
DNS answers the VIP, iptables sends the connection to the local proxy, which routes it by
Host (or SO_ORIGINAL_DST) and carries it across the bridge inside mTLS.

    A 10.77.0.1  control plane
    B 10.77.0.2  productpage (calls details, reviews)   ratings
    C 10.77.0.3  reviews-v2 (calls ratings)             details

Two layouts: every app under `plait run` with its sidecar (the caller of each host with
`--capture` and mesh DNS), or host C served by one node proxy (`plait proxy --mode node`,
capture installed with `plait capture`; there an AuthorizationPolicy on ratings that allows
reviews' principal only serves reviews and refuses details, both behind C's node proxy).
Either way: productpage renders reviews and ratings from the other host; tshark on the three veth links sees TLS handshakes for every cross-host
call and no cleartext HTTP; stopping a capturing `plait run` removes its rules; a `kill -9` of
a proxy (and of `plait run` with it) leaves rules that capture only the VIP range, so the host
still reaches another host's non-mesh port and only mesh calls fail. Root only: skipped with
the reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import PYTHON
from netns import Host, Topology, netns_unavailable

pytestmark = [
    pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable())),
    pytest.mark.timeout(120),
]

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: productpage}
spec: {selector: {app: productpage}, ports: [{name: http, port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: details}
spec: {selector: {app: details}, ports: [{name: http, port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: ratings}
spec: {selector: {app: ratings}, ports: [{name: http, port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
"""
API = "http://127.0.0.1:15014"
PUSH_PORT = 15012
# (host index, app, version, app port, inbound port, admin port, outbound port, captures)
WORKLOADS = [
    (1, "productpage", "v1", 9080, 15006, 15000, 15001, True),
    (1, "ratings", "v1", 9081, 15007, 15010, 15011, False),
    (2, "reviews", "v2", 9080, 15006, 15000, 15001, True),
    (2, "details", "v1", 9081, 15007, 15010, 15011, False),
]
CLEARTEXT = (b"GET /", b"HTTP/1.1 200", b"HTTP/1.0 200", b"x-request-id", b"Bookinfo")


@dataclass
class Cluster:
    topo: Topology
    tmp: Path
    token: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def a(self) -> Host:
        return self.topo.hosts[0]

    def curl(
        self, host: Host, url: str, *extra: str, timeout: int = 5
    ) -> subprocess.CompletedProcess[str]:
        return host.run(
            "curl", "-s", "-m", str(timeout), *extra, url, check=False, timeout=timeout + 5
        )

    def api(self, path: str, body: str | None = None, media: str = "application/json") -> object:
        extra = ["-H", f"Authorization: Bearer {self.token}"]
        if body is not None:
            extra += ["-X", "POST", "-H", f"Content-Type: {media}", "--data-binary", body]
        reply = self.curl(self.a, API + path, "-f", *extra)
        assert reply.returncode == 0, f"{path}: {reply.returncode} {reply.stdout}"
        return json.loads(reply.stdout)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> int:
        p = self.procs[name]
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return p.returncode


def wait_for(predicate: object, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


@pytest.fixture(params=["sidecars", "node-mode-on-C"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    node_on = 2 if request.param == "node-mode-on-C" else None
    if node_on is not None and not node_mode_available():
        pytest.skip("plait proxy --mode node is not available yet")
    with Topology(3) as topo:
        topo.wait_connected()
        c = Cluster(topo, tmp_path)
        try:
            yield start(c, node_on)
        finally:
            for name in reversed(list(c.procs)):
                c.stop(name)
            for host in topo.hosts:
                host.run(PYTHON, "-m", "plait", "capture", "remove", check=False)


def node_mode_available() -> bool:
    """Whether `plait proxy --mode node` exists (another part of issue #7)."""
    helptext = subprocess.run(
        [PYTHON, "-m", "plait", "proxy", "--help"], capture_output=True, text=True, timeout=30
    ).stdout
    return "node" in helptext and "--workload" in helptext


def start_node(c: Cluster, index: int) -> None:
    """Host `index` in node mode: one proxy for its workloads, its apps, capture by mark."""
    host = c.topo.hosts[index]
    data = c.tmp / "control"
    argv = [
        PYTHON,
        "-m",
        "plait",
        "proxy",
        "--mode=node",
        f"--control={c.a.address}:{PUSH_PORT}",
        f"--ca-bundle={data / 'trust-bundle.pem'}",
        f"--state-dir={c.tmp / f'node{index}.state'}",
        "--inbound=0.0.0.0:15006",
        f"--advertise={host.address}:15006",
        "--outbound=127.0.0.1:15001",
        "--admin=127.0.0.1:15000",
        "--dns=127.0.0.53:53",
        "--mark=1337",
        "--access-log=off",
    ]
    workloads = [w for w in WORKLOADS if w[0] == index]
    # Node mode tells workloads apart by source address: captured calls to a VIP leave from
    # the host's address (the VIP range routes via eth0), so the calling app owns that one;
    # the callee-only app gets a loopback address of its own.
    workloads.sort(key=lambda w: not w[7])
    for i, (_, app, version, port, _, _, _, captures) in enumerate(workloads):
        token = c.api("/api/v1/tokens", json.dumps({"service": app, "namespace": "default"}))
        spec = (
            f"name={app}-{version},service={app},app=127.0.0.1:{port},"
            f"label.app={app},label.version={version},token={token['token']}"  # type: ignore[index]
        )
        spec += f",source={host.address}" if captures else f",source=127.0.0.{20 + i}"
        argv.append(f"--workload={spec}")
        env = {"PORT": str(port), "SERVICE_VERSION": version, "PYTHONUNBUFFERED": "1"}
        c.procs[app] = host.popen(
            [PYTHON, "-m", "plait.local.bookinfo", app], c.tmp / f"{app}.log", env
        )
    c.procs[f"node{index}"] = host.popen(argv, c.tmp / f"node{index}.log")
    wait_for(
        lambda: (
            c.curl(host, "http://127.0.0.1:15000/ready").returncode == 0
            and "200" in c.curl(host, "http://127.0.0.1:15000/ready", "-w", "%{http_code}").stdout
        ),
        "the node proxy",
    )
    host.run(PYTHON, "-m", "plait", "capture", "install", "--proxy-mark=1337")


def start(c: Cluster, node_on: int | None = None) -> Cluster:
    data = c.tmp / "control"
    c.procs["control"] = c.a.popen(
        [
            PYTHON,
            "-m",
            "plait",
            "control",
            f"--data-dir={data}",
            "--api=127.0.0.1:15014",
            f"--push=0.0.0.0:{PUSH_PORT}",
            "--grace=3",
        ],
        c.tmp / "control.log",
    )
    wait_for(lambda: c.curl(c.a, API + "/healthz").returncode == 0, "the control plane")
    c.token = (data / "admin-token").read_text().strip()
    c.api("/api/v1/apply", SERVICES, "application/yaml")
    if node_on is not None:
        start_node(c, node_on)
    for index, app, version, port, inbound, admin, outbound, captures in WORKLOADS:
        if index == node_on:
            continue
        host = c.topo.hosts[index]
        token = c.api("/api/v1/tokens", json.dumps({"service": app, "namespace": "default"}))
        argv = [
            PYTHON,
            "-m",
            "plait",
            "run",
            f"--service={app}",
            f"--labels=app={app},version={version}",
            f"--port={port}",
            f"--control={c.a.address}:{PUSH_PORT}",
            f"--join-token={token['token']}",  # type: ignore[index]
            f"--ca-bundle={data / 'trust-bundle.pem'}",
            f"--state-dir={c.tmp / (app + '.state')}",
            f"--inbound=0.0.0.0:{inbound}",
            f"--advertise={host.address}:{inbound}",
            f"--admin=127.0.0.1:{admin}",
            f"--outbound=127.0.0.1:{outbound}",
            f"--proxy-arg=--name={app}-{version}",
            "--proxy-arg=--access-log=off",
        ]
        if captures:
            argv += ["--capture", "--dns=127.0.0.53:53"]
        argv += ["--", PYTHON, "-m", "plait.local.bookinfo", app]
        env = {"PORT": str(port), "SERVICE_VERSION": version, "PYTHONUNBUFFERED": "1"}
        env["HTTP_PROXY"] = ""  # captured callers dial service names themselves
        c.procs[app] = host.popen(argv, c.tmp / f"{app}.log", env)
    names = {f"{app}-{version}" for _, app, version, *_ in WORKLOADS}

    def converged() -> bool:
        proxies = c.api("/api/v1/proxies")
        # Synced and healthy: a sidecar's endpoint is pushed once its app answers.
        seen = {p["name"] for p in proxies if p["synced"] and p["health"] == "healthy"}  # type: ignore[attr-defined, index]
        return names <= seen

    wait_for(converged, "every sidecar registered and synced", 60)
    return c


def test_bookinfo_across_three_hosts(cluster: Cluster) -> None:
    a, b, cc = cluster.topo.hosts
    # Mesh DNS on B answers the VIPs the control plane allocated.
    vips = {
        x["name"]: x["vip"]
        for x in json.loads(cluster.curl(b, "http://127.0.0.1:15000/config_dump").stdout)[
            "snapshot"
        ]["clusters"]
    }
    assert set(vips) == {"productpage", "details", "ratings", "reviews"}
    got = b.run("getent", "ahostsv4", "reviews.default.svc.cluster.local").stdout.split()
    assert got[0] == vips["reviews"]
    # tshark on the three veth links, while Bookinfo is used.
    pcap = cluster.tmp / "links.pcap"
    os.chmod(cluster.tmp, 0o777)  # dumpcap may drop privileges to write the file
    interfaces = [x for link in cluster.topo.links for x in ("-i", link)]
    shark = subprocess.Popen(
        ["ip", "netns", "exec", cluster.topo.bridge_ns, "tshark", *interfaces, "-w", str(pcap)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: pcap.exists() and pcap.stat().st_size > 0, "tshark to start", 20)

        def page_with_stars() -> bool:
            reply = cluster.curl(b, "http://productpage:9080/productpage?u=normal", timeout=10)
            return reply.returncode == 0 and "out of 5 stars" in reply.stdout

        wait_for(page_with_stars, "productpage rendering reviews and ratings across hosts")
        page = cluster.curl(b, "http://productpage:9080/productpage", timeout=10).stdout
        assert "The Comedy of Errors" in page or "Details" in page
        assert 'aria-label="' in page and "out of 5 stars" in page  # ratings, from B via C
        # The JSON API shows details (on C) came through too.
        api = cluster.curl(b, "http://productpage:9080/api/v1/products/0", timeout=10)
        assert api.returncode == 0
    finally:
        time.sleep(1)
        shark.send_signal(signal.SIGINT)
        try:
            shark.wait(15)
        except subprocess.TimeoutExpired:
            shark.kill()
            shark.wait()
    raw = pcap.read_bytes()
    for marker in CLEARTEXT:
        assert marker not in raw, f"cleartext {marker!r} crossed a link"
    hellos = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-d",
            "tcp.port==15006,tls",
            "-d",
            "tcp.port==15007,tls",
            "-Y",
            "tls.handshake.type == 1",
            "-T",
            "fields",
            "-e",
            "ip.dst",
            "-e",
            "tcp.dstport",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split("\n")
    crossings = {tuple(line.split("\t")) for line in hellos if line}
    # Cross-host calls: B -> C (details 15007, reviews 15006) and C -> B (ratings 15007).
    assert (cc.address, "15006") in crossings and (cc.address, "15007") in crossings
    assert (b.address, "15007") in crossings
    http = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-d",
            "tcp.port==15006,http",
            "-d",
            "tcp.port==15007,http",
            "-d",
            "tcp.port==9080,http",
            "-Y",
            "http.request",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert http.stdout.strip() == ""
    # The end of a capturing `plait run` and a crash: one host each (whichever runs
    # `plait run` with capture gets the graceful stop, the other the kill -9).
    if "node2" in cluster.procs:  # node mode on C
        node_workloads_are_told_apart_by_principal(cluster, cc)
        graceful_stop_removes_the_rules(cluster, b, "productpage")
        killed_proxy_leaves_the_host_reaching_other_hosts(cluster, cc, "node2", False)
    else:  # sidecars on C
        graceful_stop_removes_the_rules(cluster, cc, "reviews")
        killed_proxy_leaves_the_host_reaching_other_hosts(cluster, b, "productpage", True)


RATINGS_FROM_REVIEWS = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ratings-from-reviews}
spec:
  selector: {matchLabels: {app: ratings}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/reviews"]}}]
"""


def node_workloads_are_told_apart_by_principal(cluster: Cluster, node_host: Host) -> None:
    """reviews and details share C's node proxy; ratings on B allows only reviews' principal,
    so the same call to ratings is served for reviews and refused for details, across hosts."""
    # start_node: the capturing caller (reviews) owns the host's address, details 127.0.0.21.
    details_source = "127.0.0.21"

    def status_as_details() -> str:
        return cluster.curl(
            node_host,
            "http://127.0.0.1:15001/ratings/0",
            "--interface",
            details_source,
            "-H",
            "Host: ratings:9080",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ).stdout

    def status_as_reviews() -> str:  # captured: leaves from C's address, reviews' source
        return cluster.curl(
            node_host, "http://ratings:9080/ratings/0", "-o", "/dev/null", "-w", "%{http_code}"
        ).stdout

    assert status_as_details() == "200" and status_as_reviews() == "200"
    cluster.api("/api/v1/apply", RATINGS_FROM_REVIEWS, "application/yaml")
    wait_for(lambda: status_as_details() == "403", "ratings to refuse details' principal")
    assert status_as_reviews() == "200"


def nat(host: Host) -> str:
    return host.run("iptables", "-w", "-t", "nat", "-S").stdout


def graceful_stop_removes_the_rules(cluster: Cluster, host: Host, name: str) -> None:
    assert "PLAIT_OUTPUT" in nat(host)
    assert cluster.stop(name) == 0  # the app's status: it exits 0 on SIGTERM
    assert "PLAIT" not in nat(host)


def killed_proxy_leaves_the_host_reaching_other_hosts(
    cluster: Cluster, host: Host, name: str, supervised: bool
) -> None:
    a = cluster.a
    mesh_url = "http://ratings:9080/health"
    assert cluster.curl(host, mesh_url).returncode == 0
    proc = cluster.procs[name]
    victims = [proc.pid]
    if supervised:  # `plait run` and its sidecar, both at once: nobody removes the rules
        cmdlines = {p: Path(f"/proc/{p}/cmdline").read_bytes() for p in _children(proc.pid)}
        victims += [p for p, cmd in cmdlines.items() if b"plait\x00proxy" in cmd]
        assert len(victims) == 2, "the sidecar of plait run"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert "PLAIT_OUTPUT" in nat(host)
    server = a.popen([PYTHON, "-m", "http.server", "--bind", a.address, "8000"], Path(os.devnull))
    try:
        wait_for(
            lambda: cluster.curl(host, f"http://{a.address}:8000/").returncode == 0,
            f"{host} reaching host A's non-mesh port",
        )
        assert host.run("ping", "-c", "1", "-W", "2", a.address, check=False).returncode == 0
        # Only calls to the mesh's VIPs fail while the proxy is down.
        assert cluster.curl(host, mesh_url, timeout=3).returncode != 0
    finally:
        server.kill()
        server.wait()
    host.run(PYTHON, "-m", "plait", "capture", "remove")
    assert "PLAIT" not in nat(host)


def test_tshark_is_installed() -> None:
    assert shutil.which("tshark"), "apt-get install -y tshark (TESTBED.md)"
