"""Supervisor behaviour against real child processes (Python one-liners), no mocks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from plait.cli.main import main
from plait.local.ports import PortAllocator
from plait.local.supervisor import (
    Backoff,
    HttpReady,
    ProcessSpec,
    Supervisor,
    SupervisorError,
    TcpReady,
)

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="inspects /proc")


def py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", textwrap.dedent(code))


def tcp_server(port: int) -> tuple[str, ...]:
    return py(f"""
        import socket, time
        s = socket.create_server(("127.0.0.1", {port}))
        time.sleep(60)
    """)


def alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (PID 1 here may be slow to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            if int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def test_http_and_tcp_ready_checks_reach_ready_and_aclose_stops_all(tmp_path: Path) -> None:
    web, tcp = PortAllocator().allocate(2)
    specs = [
        ProcessSpec(
            "web",
            (sys.executable, "-m", "http.server", str(web), "--bind", "127.0.0.1"),
            ready=HttpReady(f"http://127.0.0.1:{web}/"),
            log_path=str(tmp_path / "web.log"),
        ),
        ProcessSpec("tcp", tcp_server(tcp), ready=TcpReady("127.0.0.1", tcp)),
    ]

    async def main() -> list[int]:
        async with Supervisor() as sup:
            await sup.start([specs], ready_timeout=10)
            states = sup.states()
            assert [(s.name, s.state, s.restarts) for s in states] == [
                ("web", "ready", 0),
                ("tcp", "ready", 0),
            ]
            pids = [s.pid for s in states]
        assert {s.state for s in sup.states()} == {"stopped"}
        assert all(s.pid is None for s in sup.states())
        return [p for p in pids if p is not None]

    for pid in asyncio.run(main()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_flat_list_starts_each_process_after_the_previous_is_ready() -> None:
    (port,) = PortAllocator().allocate()
    # "second" fails at once unless "first" already listens.
    second = py(f"""
        import socket, time
        socket.create_connection(("127.0.0.1", {port})).close()
        time.sleep(60)
    """)

    async def main() -> None:
        async with Supervisor(grace=1) as sup:
            await sup.start(
                [
                    ProcessSpec("first", tcp_server(port), ready=TcpReady("127.0.0.1", port)),
                    ProcessSpec("second", second),
                ]
            )
            await asyncio.sleep(0.3)
            assert [s.state for s in sup.states()] == ["ready", "ready"]

    asyncio.run(main())


def test_exited_process_is_restarted_with_backoff_and_reported() -> None:
    events: list[str] = []
    crash = py("import time; time.sleep(0.2); raise SystemExit(3)")

    async def main() -> None:
        async with Supervisor(on_event=events.append, backoff=lambda: Backoff(initial=0.1)) as sup:
            await sup.start([ProcessSpec("crashy", crash)])
            await wait_for(lambda: sup.states()[0].restarts >= 2)
            (state,) = sup.states()
            assert state.last_exit_code == 3
            assert state.state in ("starting", "ready", "backoff")

    asyncio.run(main())
    assert events[0] == "crashy exited with code 3; restarting in 0.1 s"
    assert events[1] == "crashy is ready again (restart 1)"
    assert events[2] == "crashy exited with code 3; restarting in 0.2 s"


def test_restart_delays_follow_the_backoff_on_an_injected_clock() -> None:
    now = [1000.0]
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)
        now[0] += delay
        await asyncio.sleep(0)

    async def main() -> None:
        async with Supervisor(clock=lambda: now[0], sleep=fake_sleep) as sup:
            await sup.start([ProcessSpec("crashy", py("import time; time.sleep(0.05)"))])
            await wait_for(lambda: len(delays) >= 4)
            assert sup.states()[0].since >= 1000.0 + 0.5 + 1 + 2

    asyncio.run(main())
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]


def test_backoff_doubles_to_the_cap_and_resets_after_a_healthy_run() -> None:
    b = Backoff()
    assert [b.next_delay(ran_for=1) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert b.next_delay(ran_for=60) == 0.5
    assert b.next_delay(ran_for=59) == 1


def test_process_never_ready_raises_naming_it_with_its_log_tail(tmp_path: Path) -> None:
    (port,) = PortAllocator().allocate()
    slow = py("""
        import time
        print("booting", flush=True)
        print("still booting", flush=True)
        time.sleep(60)
    """)
    spec = ProcessSpec(
        "slow/app",
        slow,
        ready=HttpReady(f"http://127.0.0.1:{port}/ready"),
        log_path=str(tmp_path / "slow.log"),
    )

    async def main() -> None:
        async with Supervisor(grace=1) as sup:
            with pytest.raises(SupervisorError) as err:
                await sup.start([spec], ready_timeout=0.5)
            assert sup.states()[0].state == "failed"
        message = str(err.value)
        assert message.startswith("slow/app was not ready after 0.5 s")
        assert "  booting\n  still booting" in message

    asyncio.run(main())


def test_process_exiting_before_ready_fails_start_with_its_exit_code_and_log(
    tmp_path: Path,
) -> None:
    (port,) = PortAllocator().allocate()
    spec = ProcessSpec(
        "broken",
        py("import sys; sys.exit('boom: bad config')"),
        ready=TcpReady("127.0.0.1", port),
        log_path=str(tmp_path / "broken.log"),
    )

    async def main() -> None:
        async with Supervisor() as sup:
            with pytest.raises(
                SupervisorError, match="broken exited with code 1 before it was ready"
            ):
                await sup.start([spec])
            (state,) = sup.states()
            assert (state.state, state.last_exit_code) == ("failed", 1)

    asyncio.run(main())
    assert "boom: bad config" in (tmp_path / "broken.log").read_text()


def test_missing_executable_fails_start() -> None:
    async def main() -> None:
        async with Supervisor() as sup:
            with pytest.raises(SupervisorError, match="nothing: cannot start"):
                await sup.start([ProcessSpec("nothing", ("/nonexistent/binary",))])

    asyncio.run(main())


@linux_only
def test_aclose_kills_a_sigterm_ignoring_child_and_its_grandchildren(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    # SIG_IGN survives exec, so the `sleep` grandchild ignores SIGTERM as well.
    stubborn = py("""
        import signal, subprocess, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        grandchild = subprocess.Popen(["sleep", "60"])
        print("grandchild", grandchild.pid, flush=True)
        time.sleep(60)
    """)

    async def main() -> tuple[int, int, float]:
        async with Supervisor(grace=0.3) as sup:
            await sup.start([ProcessSpec("stubborn", stubborn, log_path=str(log))])
            await wait_for(lambda: "grandchild" in log.read_text())
            pid = sup.states()[0].pid
            assert pid is not None
            assert len(group_members(pid)) == 2
            t0 = time.monotonic()
        return pid, int(log.read_text().split()[1]), time.monotonic() - t0

    pid, grandchild, took = asyncio.run(main())
    assert 0.3 <= took < 3
    assert not alive(pid) and not alive(grandchild)
    assert group_members(pid) == []


@linux_only
def test_children_die_when_the_supervising_process_is_killed(tmp_path: Path) -> None:
    script = """
        import asyncio, sys
        from plait.local.supervisor import ProcessSpec, Supervisor

        async def main():
            async with Supervisor() as sup:
                await sup.start([ProcessSpec("sleeper", ("sleep", "60"))])
                print(sup.states()[0].pid, flush=True)
                await asyncio.sleep(60)

        asyncio.run(main())
    """
    runner = subprocess.Popen(py(script), stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout is not None
        child = int(runner.stdout.readline())
        assert alive(child)
    finally:
        runner.kill()
        runner.wait()
    deadline = time.monotonic() + 3
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(child)


def test_duplicate_names_are_refused() -> None:
    async def main() -> None:
        async with Supervisor() as sup:
            await sup.start([ProcessSpec("one", ("sleep", "60"))])
            with pytest.raises(ValueError, match="duplicate process name 'one'"):
                await sup.start([ProcessSpec("one", ("sleep", "60"))])

    asyncio.run(main())


# `plait up` end to end: the supervisor's main user, with real proxies and a tiny app.

MESH = """\
apiVersion: plait.dev/v1
kind: Mesh
metadata: {name: tiny}
spec:
  gateway: {name: edge, port: 8080}
  apps:
    - name: web
      service: web
      labels: {app: web, version: v1}
      command: [python, -c, "import os, http.server as h; h.HTTPServer((os.environ['HOST'], int(os.environ['PORT'])), h.SimpleHTTPRequestHandler).serve_forever()"]
      port: 8000
      replicas: 2
      health: {httpGet: {path: /}}
---
apiVersion: plait.dev/v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 8000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: plait
  listeners: [{name: http, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  parentRefs: [{kind: Gateway, name: edge}]
  rules:
    - matches: [{path: {type: Exact, value: /hello.txt}}]
      backendRefs: [{name: web, port: 8000}]
"""


def descendants(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found |= {int(child), *descendants(int(child))}
    return found


@linux_only
def test_plait_up_serves_the_mesh_and_sigint_leaves_no_process(tmp_path: Path) -> None:
    (tmp_path / "mesh.yaml").write_text(MESH)
    (tmp_path / "hello.txt").write_text("hello through the mesh\n")  # the apps serve their cwd
    up = subprocess.Popen(
        (
            sys.executable,
            "-m",
            "plait",
            "up",
            "mesh.yaml",
            "--run-dir=run",
            "--gateway-port=0",
            "--control-port=0",
            "--no-cli-settings",
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(30, up.kill)  # a hang fails the test instead of blocking it
    watchdog.start()
    try:
        assert up.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("All ready"):
            line = up.stdout.readline()
            assert line, f"plait up ended early:\n{''.join(lines)}{up.communicate()[1]}"
            lines.append(line)
        rows = [line.split() for line in lines]
        assert ["web", "web-1", "v1", "ready", "0", "0"] in rows
        assert ["edge", "gateway", "-", "ready", "0", "0"] in rows
        children = descendants(up.pid)
        assert len(children) == 6  # the control plane, two apps, two sidecars, the gateway
        (url,) = [line.split()[1] for line in lines if line.startswith("Open ")]
        assert url.endswith("/hello.txt")
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.read() == b"hello through the mesh\n"
        up.send_signal(signal.SIGINT)
        out, err = up.communicate(timeout=15)
    finally:
        watchdog.cancel()
        up.kill()
    assert up.returncode == 0, err
    assert out.splitlines()[-2:] == ["Stopping.", "Stopped."]
    assert [pid for pid in children if alive(pid)] == []
    assert (tmp_path / "run/web-1/app.log").exists()
    assert (tmp_path / "run/edge/snapshot.json").exists()


def test_plait_up_reports_a_bad_mesh_file_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "mesh.yaml"
    bad.write_text(MESH.replace("      port: 8000\n", "      port: 9000\n"))
    assert main(["up", str(bad), f"--run-dir={tmp_path / 'run'}"]) == 2
    assert capsys.readouterr().err.startswith(f"{bad}:11: spec.apps[0].port: 9000 is not a port")
    assert not (tmp_path / "run").exists()  # nothing written or started
