"""`plait run -- CMD`: the app starts only once its sidecar is ready, signals reach the app,
the run exits with the app's status, and the sidecar and the capture rules go with it (also
when the app crashes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, free_port
from meshkit import APP, wait_until
from netns import Topology, netns_unavailable

pytestmark = pytest.mark.timeout(60)

# The app under `plait run`: records whether the sidecar was ready when it started, calls the
# `echo` service (through HTTP_PROXY, or by name under capture), then waits or exits.
PROBE = r"""
import json, os, signal, sys, time, urllib.request
out = sys.argv[1]
def get(url, proxy=True):
    handlers = [] if proxy else [urllib.request.ProxyHandler({})]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=5) as r:
            return r.status, r.read().decode()
    except Exception as exc:
        return None, repr(exc)
report = {
    "ready": get(f"http://127.0.0.1:{os.environ['ADMIN']}/ready", proxy=False)[0],
    "echo": get(os.environ["TARGET"]),
    "http_proxy": os.environ.get("HTTP_PROXY"),
}
def stop(signum, frame):
    report["signal"] = signum
    json.dump(report, open(out, "w"))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
json.dump(report, open(out, "w"))
if os.environ.get("WAIT"):
    while True:
        time.sleep(0.1)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def _snapshot(tmp: Path, app_port: int, vip: str = "") -> Path:
    cluster = {
        "name": "echo",
        "ports": [8080],
        "endpoints": [{"address": "127.0.0.1", "port": app_port}],
    }
    if vip:
        cluster["vip"] = vip
    path = tmp / "snapshot.json"
    path.write_text(json.dumps({"clusters": [cluster]}))
    return path


def _run_argv(tmp: Path, ports: dict[str, int], snapshot: Path, extra: list[str]) -> list[str]:
    return [
        PYTHON,
        "-m",
        "plait",
        "run",
        f"--outbound=127.0.0.1:{ports['outbound']}",
        f"--inbound=127.0.0.1:{ports['inbound']}",
        f"--admin=127.0.0.1:{ports['admin']}",
        f"--proxy-arg=--config={snapshot}",
        "--proxy-arg=--access-log=off",
        *extra,
        "--",
        PYTHON,
        "-c",
        PROBE,
        str(tmp / "report.json"),
    ]


@pytest.fixture
def echo_app(tmp_path: Path) -> object:
    port = free_port()
    proc = subprocess.Popen(
        [PYTHON, "-c", APP],
        env={"APP_NAME": "echo", "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield port
    proc.kill()
    proc.wait()


def _refused(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def test_app_starts_after_the_sidecar_is_ready_and_its_status_is_the_runs(
    tmp_path: Path, echo_app: int
) -> None:
    ports = {k: free_port() for k in ("outbound", "inbound", "admin")}
    argv = _run_argv(tmp_path, ports, _snapshot(tmp_path, echo_app), [])
    env = {"ADMIN": str(ports["admin"]), "TARGET": "http://echo:8080/through", "EXIT": "7"}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=40)
    assert done.returncode == 7, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ready"] == 200  # holdApplicationUntilProxyStarts
    assert report["http_proxy"] == f"http://127.0.0.1:{ports['outbound']}"
    status, body = report["echo"]
    assert status == 200 and json.loads(body)["path"] == "/through"
    assert _refused(ports["admin"]) and _refused(ports["outbound"])  # the sidecar is gone


def test_sigterm_reaches_the_app_then_the_sidecar_drains(tmp_path: Path, echo_app: int) -> None:
    ports = {k: free_port() for k in ("outbound", "inbound", "admin")}
    argv = _run_argv(tmp_path, ports, _snapshot(tmp_path, echo_app), [])
    env = {"ADMIN": str(ports["admin"]), "TARGET": "http://echo:8080/", "WAIT": "1"}
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: (tmp_path / "report.json").exists(), 30, "the app to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["signal"] == signal.SIGTERM
    assert _refused(ports["admin"])


def test_a_sidecar_that_cannot_start_keeps_the_app_from_starting(tmp_path: Path) -> None:
    ports = {k: free_port() for k in ("outbound", "inbound", "admin")}
    bad = tmp_path / "bad.json"
    bad.write_text('{"clusters": [{"name": 3}]}')
    done = subprocess.run(
        _run_argv(tmp_path, ports, bad, []),
        env={"ADMIN": "1", "TARGET": "http://x/"},
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert done.returncode == 1 and "before ready" in done.stderr
    assert not (tmp_path / "report.json").exists()


def test_usage_errors_are_clear() -> None:
    done = subprocess.run(
        [PYTHON, "-m", "plait", "run", "--service=x"], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 2 and "command after --" in done.stderr


@pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable()))
def test_capture_is_installed_for_the_app_and_removed_when_it_crashes(tmp_path: Path) -> None:
    with Topology(1) as topo:
        host = topo.hosts[0]
        before = host.run("iptables", "-w", "-t", "nat", "-S").stdout
        app = host.popen(
            [PYTHON, "-c", APP], tmp_path / "echo.log", {"APP_NAME": "echo", "PORT": "9080"}
        )
        ports = {"outbound": 15001, "inbound": 15006, "admin": 15000}
        snapshot = _snapshot(tmp_path, 9080, vip="10.96.7.7")
        argv = _run_argv(tmp_path, ports, snapshot, ["--capture", "--dns=127.0.0.53:53"])
        env = {"ADMIN": "15000", "TARGET": "http://echo:8080/captured", "EXIT": "3"}
        try:
            wait_until(
                lambda: (
                    host.run("curl", "-s", "http://127.0.0.1:9080/", check=False).returncode == 0
                ),
                10,
                "the echo app",
            )
            done = subprocess.run(
                host.argv(*argv),
                env={**env, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                capture_output=True,
                text=True,
                timeout=40,
            )
        finally:
            app.kill()
            app.wait()
        assert done.returncode == 3, done.stderr
        report = json.loads((tmp_path / "report.json").read_text())
        assert report["http_proxy"] is None  # captured, not explicitly proxied
        status, body = report["echo"]
        assert status == 200, body
        assert json.loads(body)["path"] == "/captured"
        assert host.run("iptables", "-w", "-t", "nat", "-S").stdout == before


def test_a_sidecar_that_dies_takes_the_app_down_with_it(tmp_path: Path, echo_app: int) -> None:
    ports = {k: free_port() for k in ("outbound", "inbound", "admin")}
    argv = _run_argv(tmp_path, ports, _snapshot(tmp_path, echo_app), [])
    env = {"ADMIN": str(ports["admin"]), "TARGET": "http://echo:8080/", "WAIT": "1"}
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (tmp_path / "report.json").exists(), 30, "the app to start")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        sidecars = [
            int(p) for p in children if b"plait\x00proxy" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        assert len(sidecars) == 1
        os.kill(sidecars[0], signal.SIGKILL)
        assert proc.wait(30) == 1
        assert proc.stderr is not None and "stopping the app" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads((tmp_path / "report.json").read_text())["signal"] == signal.SIGTERM
