"""Service VIPs end to end: the control plane allocates them in --service-cidr, proxies get
them in their snapshot, and `plait get services -o wide` shows them."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
from meshkit import Mesh, wait_until

pytestmark = pytest.mark.timeout(60)

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: reviews}
spec: {selector: {app: reviews}, ports: [{port: 9080}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: ratings}
spec: {selector: {app: ratings}, ports: [{port: 9080}]}
"""


def test_vips_come_from_the_service_cidr_and_are_shown_and_pushed(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path, control_args=["--service-cidr=10.123.0.0/24"])
    try:
        mesh.apply(SERVICES)
        _, app_port = mesh.app("reviews")
        _, ports = mesh.proxy("reviews-1", "reviews", labels="app=reviews", app_port=app_port)
        wide = subprocess.run(
            [
                sys.executable,
                "-m",
                "plait",
                "get",
                "services",
                "-o",
                "wide",
                f"--server={mesh.api}",
                f"--token={mesh.token}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert wide.returncode == 0, wide.stderr
        lines = wide.stdout.splitlines()
        assert lines[0].split()[-1] == "VIP"
        shown = {line.split()[1]: line.split()[-1] for line in lines[1:]}
        assert set(shown) == {"reviews", "ratings"}
        network = ipaddress.IPv4Network("10.123.0.0/24")
        assert all(ipaddress.IPv4Address(v) in network for v in shown.values())
        assert len(set(shown.values())) == 2

        def pushed() -> dict[str, str]:
            dump = mesh.admin(ports, "/config_dump")["snapshot"]["clusters"]
            return {c["name"]: c.get("vip", "") for c in dump}

        wait_until(lambda: pushed() == shown, 15, "the proxy's snapshot to carry the VIPs")
        # Stable across a control-plane restart.
        mesh.control.stop()
        mesh.restart_control()
        reply = subprocess.run(
            [
                sys.executable,
                "-m",
                "plait",
                "get",
                "svc",
                "-o",
                "wide",
                f"--server={mesh.api}",
                f"--token={mesh.token}",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert {x.split()[1]: x.split()[-1] for x in reply.stdout.splitlines()[1:]} == shown
        bad = subprocess.run(
            [sys.executable, "-m", "plait", "control", "--service-cidr=10.0.0.0/33"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert bad.returncode == 2 and "service CIDR" in bad.stderr
    finally:
        mesh.close()
