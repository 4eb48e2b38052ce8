"""Hosts made of network namespaces, for tests: build a topology, always tear it down.

`Topology` makes one namespace holding a Linux bridge and one namespace per host, each joined
to the bridge by a veth pair (`eth0` inside the host, `v<tag><i>` on the bridge side), with its
address inside the namespace only (10.77.0.<i+1>/24 by default) and its loopback up. Nothing is
configured in the root namespace except `/etc/netns/<ns>/resolv.conf` (which `ip netns exec`
mounts over /etc/resolv.conf, pointing the host at the mesh DNS). Names carry a random tag, so
concurrent runs never collide. `close()` (or leaving `with`) kills every process still in the
namespaces (only ours can be there), deletes the namespaces (which deletes the links) and the
/etc/netns directories; it is safe to call twice and after a partial build.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Host", "Topology", "netns_unavailable"]

ETC_NETNS = Path("/etc/netns")


def netns_unavailable() -> str | None:
    """Why namespaced tests cannot run here (a skip reason), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "iptables", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install iproute2 iptables)"
    probe = f"pltprobe{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns unavailable: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*argv: str, check: bool = True, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")
    return result


class Host:
    """One namespace: its name, its address, and a way to run things inside it."""

    def __init__(self, netns: str, address: str, index: int) -> None:
        self.netns = netns
        self.address = address
        self.index = index

    def argv(self, *command: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *command]

    def run(
        self, *command: str, check: bool = True, timeout: float = 15
    ) -> subprocess.CompletedProcess[str]:
        return sh(*self.argv(*command), check=check, timeout=timeout)

    def popen(
        self, command: Sequence[str], log: Path, env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                self.argv(*command),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                **kw,
            )

    def __repr__(self) -> str:
        return f"Host({self.netns}, {self.address})"


class Topology:
    """`count` hosts on one bridge; see the module docstring."""

    def __init__(
        self,
        count: int,
        subnet: str = "10.77.0",
        dns: str | None = "127.0.0.53",
        service_cidr: str | None = "10.96.0.0/16",
    ) -> None:
        self.tag = secrets.token_hex(3)
        self.bridge_ns = f"plt{self.tag}-br"
        self.hosts: list[Host] = []
        self.links: list[str] = []
        self._namespaces: list[str] = []
        try:
            self._build(count, subnet, dns, service_cidr)
        except BaseException:
            self.close()
            raise

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self, count: int, subnet: str, dns: str | None, service_cidr: str | None) -> None:
        self._add_ns(self.bridge_ns)
        sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for i in range(count):
            name = f"plt{self.tag}-h{i}"
            if dns is not None:
                # Before the namespace exists, so no `ip netns exec` ever runs without it.
                (ETC_NETNS / name).mkdir(parents=True, exist_ok=True)
                (ETC_NETNS / name / "resolv.conf").write_text(
                    f"nameserver {dns}\noptions timeout:1 attempts:2\n"
                )
            self._add_ns(name)
            peer = f"v{self.tag}{i}"
            sh(
                "ip",
                "link",
                "add",
                "eth0",
                "netns",
                name,
                "type",
                "veth",
                "peer",
                "name",
                peer,
                "netns",
                self.bridge_ns,
            )
            sh("ip", "-n", self.bridge_ns, "link", "set", peer, "master", "br0", "up")
            address = f"{subnet}.{i + 1}"
            sh("ip", "-n", name, "addr", "add", f"{address}/24", "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
            if service_cidr:
                # VIPs must be routable for a connect() to reach the nat OUTPUT hook at all
                # (on a real host the default route does this).
                sh("ip", "-n", name, "route", "add", service_cidr, "dev", "eth0")
            self.links.append(peer)
            self.hosts.append(Host(name, address, i))

    def wait_connected(self, timeout: float = 10) -> None:
        """Until every host reaches every other over the bridge (ARP, link up)."""
        deadline = time.monotonic() + timeout
        for a in self.hosts:
            for b in self.hosts:
                if a is b:
                    continue
                while a.run("ping", "-c", "1", "-W", "1", b.address, check=False).returncode != 0:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{a} cannot reach {b}")
                    time.sleep(0.1)

    def close(self) -> None:
        for name in reversed(self._namespaces):
            pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)
        self._namespaces = []
        for host in self.hosts:
            shutil.rmtree(ETC_NETNS / host.netns, ignore_errors=True)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
