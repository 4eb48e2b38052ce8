"""`make demo` end to end: `plait up` on the Bookinfo mesh file, the page through the gateway."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
MESH = ROOT / "examples" / "bookinfo" / "mesh.yaml"


def descendants(pid: int) -> set[int]:
    """All processes below `pid`, from /proc (children of children too)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(120)
def test_bookinfo_demo_serves_productpage_through_the_gateway(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(tmp_path)}
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plait",
            "up",
            str(MESH),
            "--gateway-port",
            "0",
            "--no-table",
            "--run-dir",
            str(tmp_path / "run"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        url = None
        assert up.stdout is not None
        while time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"Open (http://127\.0\.0\.1:\d+/productpage)", line)
            if m:
                url = m.group(1)
            if "All ready" in line:
                break
        assert url, "plait up did not print the productpage URL:\n" + "".join(lines)

        versions = set()
        with httpx.Client(timeout=10) as client:
            for _ in range(30):
                page = client.get(url)
                assert page.status_code == 200
                assert "The Comedy of Errors" in page.text
                assert "currently unavailable" not in page.text
                versions.update(re.findall(r"reviews-(v[123])", page.text))
            api = client.get(url.replace("/productpage", "/api/v1/products/0/reviews"))
            assert api.status_code == 200 and api.json()["reviews_version"] in {"v1", "v2", "v3"}
        # Reloading rotates across the reviews versions (30 tries: all three, practically).
        assert len(versions) >= 2, versions

        children = descendants(up.pid)
        assert len(children) >= 13  # 6 apps + 6 sidecars + the gateway
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
    assert up.returncode == 0, "".join(lines)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in children):
        time.sleep(0.1)
    assert not [p for p in children if alive(p)], "orphans left behind"
