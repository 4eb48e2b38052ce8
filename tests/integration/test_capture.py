"""Transparent capture in a real network namespace: iptables REDIRECT, SO_ORIGINAL_DST, mesh
DNS, VIP routing, exact removal, and a SIGKILLed proxy that leaves the host's own networking
intact. Root only (skipped with the reason otherwise)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PYTHON
from meshkit import APP
from netns import Host, Topology, netns_unavailable

pytestmark = [
    pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable())),
    pytest.mark.timeout(60),
]

VIP = "10.96.5.5"
MARK = "1337"


def plait(host: Host, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return host.run(PYTHON, "-m", "plait", *args, check=check)


def nat_rules(host: Host) -> str:
    return host.run("iptables", "-w", "-t", "nat", "-S").stdout


def wait_for(predicate: object, what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def curl(host: Host, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return host.run("curl", "-s", "-m", "5", *extra, url, check=False)


@pytest.fixture
def topo() -> Iterator[Topology]:
    with Topology(2) as t:
        t.wait_connected()
        yield t


@pytest.fixture
def sidecar(topo: Topology, tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """On host 0: an app on 127.0.0.1:9080 and a static-config proxy whose `echo` service
    (VIP 10.96.5.5, port 8080) is that app; mesh DNS on 127.0.0.53."""
    host = topo.hosts[0]
    config = {
        "clusters": [
            {
                "name": "echo",
                "ports": [8080],
                "vip": VIP,
                "endpoints": [{"address": "127.0.0.1", "port": 9080}],
            }
        ]
    }
    (tmp_path / "snapshot.json").write_text(json.dumps(config))
    procs = {
        "app": host.popen(
            [PYTHON, "-c", APP], tmp_path / "app.log", {"APP_NAME": "echo", "PORT": "9080"}
        ),
        "proxy": host.popen(
            [
                PYTHON,
                "-m",
                "plait",
                "proxy",
                f"--config={tmp_path / 'snapshot.json'}",
                "--outbound=127.0.0.1:15001",
                "--inbound=0.0.0.0:15006",
                "--app=127.0.0.1:9080",
                "--admin=127.0.0.1:15000",
                "--dns=127.0.0.53:53",
                f"--mark={MARK}",
                "--access-log=off",
            ],
            tmp_path / "proxy.log",
        ),
    }
    try:
        wait_for(lambda: curl(host, "http://127.0.0.1:15000/ready").returncode == 0, "proxy")
        yield procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def test_captured_calls_by_name_vip_and_without_host_reach_the_service(
    topo: Topology, sidecar: dict[str, subprocess.Popen[bytes]]
) -> None:
    host = topo.hosts[0]
    before = nat_rules(host)
    plait(host, "capture", "install", f"--proxy-mark={MARK}")
    try:
        # By name: mesh DNS answers the VIP, the redirect takes the call to the proxy.
        got = host.run("getent", "ahostsv4", "echo.default.svc.cluster.local").stdout
        assert got.split()[0] == VIP
        reply = curl(host, "http://echo:8080/by-name")
        assert reply.returncode == 0, reply.stderr
        body = json.loads(reply.stdout)
        assert body["name"] == "echo" and body["path"] == "/by-name"
        assert ["host", "echo:8080"] in body["headers"]
        # Host is the VIP itself.
        body = json.loads(curl(host, f"http://{VIP}:8080/by-vip").stdout)
        assert body["path"] == "/by-vip"
        # HTTP/1.0 without Host: only SO_ORIGINAL_DST says where it was going.
        raw = host.run(
            PYTHON,
            "-c",
            "import socket,sys;s=socket.create_connection((sys.argv[1],8080),5);"
            "s.sendall(b'GET /no-host HTTP/1.0\\r\\n\\r\\n');"
            "print(b''.join(iter(lambda: s.recv(65536), b'')).decode())",
            VIP,
        ).stdout
        assert raw.startswith("HTTP/1.1 200"), raw
        assert '"path": "/no-host"' in raw
        # A Host naming nothing still reaches the VIP the app dialled.
        body = json.loads(curl(host, f"http://{VIP}:8080/odd", "-H", "Host: 192.0.2.1").stdout)
        assert body["path"] == "/odd"
        # The host's own traffic to another host is not captured.
        other = topo.hosts[1]
        server = other.popen(
            [PYTHON, "-m", "http.server", "--bind", other.address, "8000"],
            Path("/dev/null"),
        )
        try:
            wait_for(
                lambda: curl(host, f"http://{other.address}:8000/").returncode == 0,
                "a plain server on the other host",
            )
        finally:
            server.kill()
            server.wait()
    finally:
        plait(host, "capture", "remove")
    assert nat_rules(host) == before  # removal is exact


def test_install_and_remove_are_idempotent(topo: Topology) -> None:
    host = topo.hosts[0]
    before = nat_rules(host)
    plait(host, "capture", "install", "--proxy-uid=1337")
    # From the root namespace with --netns: the same rules land in the host's namespace.
    subprocess.run(
        [
            PYTHON,
            "-m",
            "plait",
            "capture",
            "install",
            f"--netns={host.netns}",
            f"--proxy-mark={MARK}",
            "--inbound-ports=9080,9443",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    rules = nat_rules(host)
    assert rules.count("-j PLAIT_OUTPUT") == 1 and rules.count("-j PLAIT_PREROUTING") == 1
    assert "--uid-owner" not in rules and "--dport 9443" in rules  # replaced, not appended
    plait(host, "capture", "remove")
    after_first = nat_rules(host)
    assert plait(host, "capture", "remove").returncode == 0
    assert nat_rules(host) == after_first == before
    refused = plait(host, "capture", "install", check=False)
    assert refused.returncode == 1 and "--proxy-uid or --proxy-mark" in refused.stderr
    bad = plait(
        host, "capture", "install", "--proxy-uid=1", "--include-cidr=10.0.0.0/33", check=False
    )
    assert bad.returncode == 1 and "not an IPv4 CIDR" in bad.stderr
    assert nat_rules(host) == before


def test_inbound_capture_sends_the_app_port_to_the_inbound_listener(
    topo: Topology, sidecar: dict[str, subprocess.Popen[bytes]]
) -> None:
    host, caller = topo.hosts
    plait(host, "capture", "install", f"--proxy-mark={MARK}", "--inbound-ports=9080")
    try:
        # The app listens on 127.0.0.1 only: from another host, port 9080 reaches it only
        # through the redirect to the proxy's inbound listener.
        reply = curl(caller, f"http://{host.address}:9080/inbound")
        assert reply.returncode == 0, reply.stderr
        assert json.loads(reply.stdout)["path"] == "/inbound"
    finally:
        plait(host, "capture", "remove")
    assert curl(caller, f"http://{host.address}:9080/inbound").returncode != 0


def test_a_killed_proxy_breaks_only_mesh_calls(
    topo: Topology, sidecar: dict[str, subprocess.Popen[bytes]]
) -> None:
    host, other = topo.hosts
    plait(host, "capture", "install", f"--proxy-mark={MARK}")
    server = other.popen(
        [PYTHON, "-m", "http.server", "--bind", other.address, "8000"], Path("/dev/null")
    )
    try:
        assert curl(host, "http://echo:8080/").returncode == 0
        sidecar["proxy"].kill()
        sidecar["proxy"].wait()
        # The rules stay (nothing removed them), yet the host reaches other hosts' ports...
        assert "PLAIT_OUTPUT" in nat_rules(host)
        wait_for(
            lambda: curl(host, f"http://{other.address}:8000/").returncode == 0,
            "the other host's plain server",
        )
        assert host.run("ping", "-c", "1", "-W", "2", other.address).returncode == 0
        # ...and only the mesh call fails (its redirect target is gone).
        assert curl(host, f"http://{VIP}:8080/").returncode != 0
    finally:
        server.kill()
        server.wait()
        plait(host, "capture", "remove")


def test_capturing_everything_spares_the_proxys_own_marked_connections(
    topo: Topology, tmp_path: Path
) -> None:
    """With `--include-cidr '*'` every TCP connection is redirected, except the proxy's own:
    its upstream sockets carry SO_MARK (`plait proxy --mark`), so they do not loop back."""
    host, other = topo.hosts
    server = other.popen(
        [PYTHON, "-m", "http.server", "--bind", other.address, "8001"], tmp_path / "remote.log"
    )
    config = {
        "clusters": [
            {
                "name": "remote",
                "ports": [8080],
                "vip": VIP,
                "endpoints": [{"address": other.address, "port": 8001}],
            }
        ]
    }
    (tmp_path / "remote.json").write_text(json.dumps(config))
    proxy = host.popen(
        [
            PYTHON,
            "-m",
            "plait",
            "proxy",
            f"--config={tmp_path / 'remote.json'}",
            "--outbound=127.0.0.1:15001",
            "--admin=127.0.0.1:15000",
            f"--mark={MARK}",
            "--access-log=off",
        ],
        tmp_path / "proxy.log",
    )
    try:
        wait_for(lambda: curl(host, "http://127.0.0.1:15000/ready").returncode == 0, "proxy")
        wait_for(
            lambda: curl(other, f"http://{other.address}:8001/").returncode == 0,
            "the other host's server",
        )
        plait(host, "capture", "install", f"--proxy-mark={MARK}", "--include-cidr=*")
        # The app's call to the other host's address is captured too (everything is) and
        # routed by its Host; the proxy's own connection to the endpoint is not captured.
        reply = curl(
            host, f"http://{other.address}:8001/", "-H", "Host: remote:8080", "-w", "%{http_code}"
        )
        assert reply.returncode == 0 and reply.stdout.endswith("200"), reply
        stats = json.loads(curl(host, "http://127.0.0.1:15000/stats?format=json").stdout)
        # Exactly one request: the proxy's upstream connection did not loop back into it.
        assert stats["listeners"]["outbound"]["downstream_rq_total"] == 1
    finally:
        plait(host, "capture", "remove")
        for p in (proxy, server):
            p.kill()
            p.wait()
