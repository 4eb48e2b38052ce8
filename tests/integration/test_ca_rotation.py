"""Root CA rotation under traffic: the new root is trusted everywhere before it signs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from meshkit import Mesh, http_json, wait_until
from test_control_plane import Traffic

SERVICE = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
"""


def certificate(admin: int) -> dict:
    return http_json(f"http://127.0.0.1:{admin}/config_dump")["certificate"]


@pytest.mark.timeout(90)
def test_ca_rotation_under_traffic_drops_no_request(tmp_path: Path) -> None:
    mesh = Mesh(tmp_path)
    try:
        mesh.apply(SERVICE)
        _, app_port = mesh.app("web-v1")
        _, server = mesh.proxy("web-0", "web", "app=web", app_port=app_port)
        _, client = mesh.proxy("client-0", "client", "app=client")
        wait_until(lambda: mesh.converged({"web-0", "client-0"}), 15, "convergence")
        before = {
            name: certificate(p["admin"]) for name, p in (("web", server), ("client", client))
        }
        assert all(c["trusted_roots"] == 1 for c in before.values())

        traffic = Traffic(client["outbound"])
        try:
            wait_until(lambda: len(traffic.results) > 20, 10, "traffic")
            reply = http_json(
                f"{mesh.api}/api/v1/ca/rotate",
                "POST",
                b"",
                {"Authorization": f"Bearer {mesh.token}"},
                timeout=40,
            )
            assert reply["proxies"] == 2
            # Every proxy renews from the new root and trusts both roots.
            for name, p in (("web", server), ("client", client)):
                wait_until(
                    lambda p=p, name=name: (
                        certificate(p["admin"])["issuer_key_id"] != before[name]["issuer_key_id"]
                    ),
                    15,
                    f"{name} renewed from the new root",
                )
                assert certificate(p["admin"])["trusted_roots"] == 2
            roots = http_json(f"{mesh.api}/api/v1/ca")
            assert [r["state"] for r in roots] == ["previous", "signing"]
            # Fresh connections (new certificates both sides) keep working.
            mark = time.monotonic()
            wait_until(
                lambda: len([r for r in traffic.results if r[0] > mark]) > 50, 10, "traffic after"
            )
        finally:
            traffic.stop()
        assert traffic.failures() == []
    finally:
        mesh.close()
