"""Child processes of the harness: started with their output in a log file, always stopped.

`Processes` owns every child it spawns; `close()` stops them in reverse order (SIGTERM, then
SIGKILL after a grace period), so a run that fails half-way leaves nothing behind. Children
also get PR_SET_PDEATHSIG: if the harness itself is killed, the kernel kills them too.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Processes", "cpu_seconds", "cpu_split", "rss_kib"]

# Resolved here, not in the child: after fork only async-signal-safe work is wise.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB, from /proc (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time `pid` has used so far (/proc/PID/stat fields 14 and 15)."""
    user, system = cpu_split(pid)
    return user + system


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds `pid` has used so far: what runs in the process (Python,
    OpenSSL, the event loop) apart from what the kernel does for it (sockets, loopback)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


class Processes:
    """Spawns children with logs under `logdir`; `close()` stops every one still running."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._all: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self, name: str, argv: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = self.logdir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                preexec_fn=_die_with_parent,
            )
        self._all.append((name, popen))
        return popen

    def log_tail(self, name: str, lines: int = 20) -> str:
        try:
            text = (self.logdir / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise with the log tail of the first child that exited."""
        for name, popen in self._all:
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {popen.returncode}:\n{self.log_tail(name)}")

    def close(self, grace: float = 5.0) -> None:
        for _, popen in reversed(self._all):
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        for _, popen in reversed(self._all):
            try:
                popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=5)
        self._all.clear()
