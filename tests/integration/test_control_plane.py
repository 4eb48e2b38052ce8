"""The control plane with real proxies: live route changes, outages, endpoint removal."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from meshkit import Mesh, http_json, wait_until

SERVICES = """
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web-v1}
spec: {selector: {app: web, version: v1}, ports: [{name: http, port: 80}]}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web-v2}
spec: {selector: {app: web, version: v2}, ports: [{name: http, port: 80}]}
"""


def route_to(backend: str) -> str:
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{group: "", kind: Service, name: web, port: 80}}]
  rules:
    - backendRefs: [{{name: {backend}, port: 80}}]
"""


class Traffic:
    """Sequential GETs through a proxy in a thread; records (time, status, app name)."""

    def __init__(self, outbound: int, host: str = "web") -> None:
        self.url = f"http://127.0.0.1:{outbound}/"
        self.host = host
        self.results: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=5, headers={"host": self.host}) as client:
            while not self._stop.is_set():
                started = time.monotonic()  # results carry when each request was sent
                try:
                    r = client.get(self.url)
                    name = (
                        r.json().get("name", "")
                        if r.status_code == 200
                        else r.headers.get("x-plait-response-flags", "")
                    )
                    self.results.append((started, r.status_code, name))
                except httpx.HTTPError as exc:
                    self.results.append((started, 0, type(exc).__name__))
                time.sleep(0.005)

    def failures(self) -> list[tuple[float, int, str]]:
        return [r for r in self.results if r[1] != 200]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def switched(traffic: Traffic, since: float, target: str, settle: float = 0.3) -> float | None:
    """When traffic moved to `target` for good: the first response after the last one that
    went elsewhere, provided `settle` seconds of responses all went to `target` since."""
    after = [r for r in traffic.results if r[0] > since]
    last_other = max((t for t, _, n in after if n != target), default=since)
    moved = [t for t, _, _ in after if t > last_other]
    if moved and time.monotonic() - last_other >= settle and len(moved) >= 5:
        return moved[0]
    return None


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    m = Mesh(tmp_path)
    try:
        yield m
    finally:
        m.close()


def web_mesh(mesh: Mesh) -> dict[str, Any]:
    """Services web, web-v1, web-v2; one app per version behind a sidecar; two clients."""
    mesh.apply(SERVICES)
    parts: dict[str, Any] = {}
    for version in ("v1", "v2"):
        app, port = mesh.app(f"web-{version}")
        proxy, ports = mesh.proxy(
            f"web-{version}-0", "web", f"app=web,version={version}", app_port=port
        )
        parts[version] = (app, proxy, ports)
    parts["client"] = mesh.proxy("client-0", "client", "app=client")
    parts["client2"] = mesh.proxy("client2-0", "client2", "app=client2")
    wait_until(
        lambda: mesh.converged({"web-v1-0", "web-v2-0", "client-0", "client2-0"}), 15, "convergence"
    )
    return parts


@pytest.mark.timeout(120)
def test_route_changes_apply_within_a_second_and_no_request_fails(mesh: Mesh) -> None:
    parts = web_mesh(mesh)
    traffic = Traffic(parts["client"][1]["outbound"])
    delays = []
    try:
        wait_until(lambda: len(traffic.results) > 20, 10, "traffic")
        for i in range(20):
            target = "web-v1" if i % 2 == 0 else "web-v2"
            applied = time.monotonic()
            mesh.apply(route_to(target))
            seen = wait_until(
                lambda applied=applied, target=target: switched(traffic, applied, target),
                5,
                f"move to {target}",
            )
            delays.append(seen - applied)
    finally:
        traffic.stop()
    assert traffic.failures() == []
    assert max(delays) < 1.0, delays
    assert len(traffic.results) > 200


@pytest.mark.timeout(180)
def test_control_plane_outage_traffic_continues_cache_serves_and_proxies_reconverge(
    mesh: Mesh,
) -> None:
    parts = web_mesh(mesh)
    traffic = Traffic(parts["client"][1]["outbound"])
    try:
        wait_until(lambda: len(traffic.results) > 20, 10, "traffic")
        mesh.control.kill()
        outage_started = time.monotonic()

        # A proxy restarted during the outage starts from its on-disk cache.
        client2, ports2 = parts["client2"]
        client2.stop()
        client2.start()
        wait_until(lambda: _ready(ports2["admin"]), 15, "restarted proxy ready from cache")
        with httpx.Client(timeout=5, headers={"host": "web"}) as c:
            for _ in range(20):
                r = c.get(f"http://127.0.0.1:{ports2['outbound']}/")
                assert r.status_code == 200 and r.json()["name"].startswith("web-")
        dump = http_json(f"http://127.0.0.1:{ports2['admin']}/config_dump")
        assert dump["control_plane"]["connected"] is False

        time.sleep(max(0.0, 60 - (time.monotonic() - outage_started)))
        assert traffic.failures() == []

        mesh.restart_control()
        wait_until(
            lambda: mesh.converged({"web-v1-0", "web-v2-0", "client-0", "client2-0"}),
            20,
            "reconvergence",
        )
        assert all(p["synced"] for p in mesh.proxies())
    finally:
        traffic.stop()
    assert traffic.failures() == []


@pytest.mark.timeout(90)
def test_killed_app_leaves_the_config_and_gets_no_more_requests(mesh: Mesh) -> None:
    parts = web_mesh(mesh)
    client_admin = parts["client"][1]["admin"]
    v2_inbound = parts["v2"][2]["inbound"]
    traffic = Traffic(parts["client"][1]["outbound"])
    try:
        wait_until(lambda: len(traffic.results) > 20, 10, "traffic")
        parts["v2"][0].kill()  # the app, not its proxy: the proxy's health check notices
        wait_until(lambda: not _has_endpoint(client_admin, v2_inbound), 10, "endpoint removal")
        removed = time.monotonic()
        time.sleep(1.0)
        after = [r for r in traffic.results if r[0] > removed]
    finally:
        traffic.stop()
    assert after and all(s == 200 and n == "web-v1" for _, s, n in after), after[:5]

    # A proxy that dies (no bye) is removed after the grace period.
    parts["v1"][1].kill()
    v1_inbound = parts["v1"][2]["inbound"]
    wait_until(
        lambda: not _has_endpoint(client_admin, v1_inbound), mesh.grace + 5, "dead proxy removal"
    )


def _has_endpoint(admin: int, port: int) -> bool:
    dump = http_json(f"http://127.0.0.1:{admin}/config_dump")
    return any(e["port"] == port for c in dump["snapshot"]["clusters"] for e in c["endpoints"])


def _ready(admin: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{admin}/ready", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
