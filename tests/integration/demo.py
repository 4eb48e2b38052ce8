"""Run the Bookinfo demo (`plait up`) for a test: free ports, its own HOME, no orphans."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MESH = ROOT / "examples" / "bookinfo" / "mesh.yaml"


@dataclass
class Demo:
    process: subprocess.Popen[str]
    url: str  # the productpage URL through the gateway
    control: str  # the control plane's API URL
    env: dict[str, str]  # HOME points the CLI at this demo's control plane
    lines: list[str]

    def plait(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "plait", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )


@contextlib.contextmanager
def running_demo(tmp_path: Path, mesh: Path = MESH) -> Iterator[Demo]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path)}
    env.pop("PLAIT_SERVER", None)
    env.pop("PLAIT_TOKEN", None)
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plait",
            "up",
            str(mesh),
            "--gateway-port",
            "0",
            "--no-table",
            "--run-dir",
            str(tmp_path / "run"),
            "--control-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        url = control = None
        deadline = time.monotonic() + 90
        assert up.stdout is not None
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"Open (http://127\.0\.0\.1:\d+/productpage)", line):
                url = m.group(1)
            if m := re.search(r"Control plane (http://127\.0\.0\.1:\d+)", line):
                control = m.group(1)
            if "All ready" in line:
                break
        assert url and control, "plait up did not start:\n" + "".join(lines)
        yield Demo(up, url, control, env, lines)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
