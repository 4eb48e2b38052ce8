"""`make demo` end to end: `plait up` on the Bookinfo mesh file, the page through the gateway."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from demo import running_demo


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
    with running_demo(tmp_path) as demo:
        versions = set()
        with httpx.Client(timeout=10) as client:
            for _ in range(30):
                page = client.get(demo.url)
                assert page.status_code == 200
                assert "The Comedy of Errors" in page.text
                assert "currently unavailable" not in page.text
                versions.update(re.findall(r"reviews-(v[123])", page.text))
            api = client.get(demo.url.replace("/productpage", "/api/v1/products/0/reviews"))
            assert api.status_code == 200 and api.json()["reviews_version"] in {"v1", "v2", "v3"}
        # Reloading rotates across the reviews versions (30 tries: all three, practically).
        assert len(versions) >= 2, versions
        status = demo.plait("status")
        assert status.returncode == 0 and status.stdout.count("SYNCED") == 7, status.stdout
        modes = {
            p["name"]: p["mode"] for p in json.loads(demo.plait("status", "-o", "json").stdout)
        }
        assert modes["bookinfo-gateway"] == "gateway" and modes["reviews-v1-0"] == "sidecar"
        children = descendants(demo.process.pid)
        assert len(children) >= 14  # control plane, 6 apps, 6 sidecars, the gateway
    assert demo.process.returncode == 0, "".join(demo.lines)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(p) for p in children):
        time.sleep(0.1)
    assert not [p for p in children if alive(p)], "orphans left behind"
