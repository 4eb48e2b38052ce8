"""`plait capture`: iptables rules that send an app's TCP through its proxy, and back out.

Theory of operation (Istio's istio-iptables, trimmed). Everything lives in two chains of the
nat table that plait owns, reached by one jump each, so removal is exact (delete the jumps,
flush and delete the chains) and both install and remove are idempotent:

    OUTPUT     -p tcp -j PLAIT_OUTPUT
    PLAIT_OUTPUT:   RETURN  the proxy's own traffic (its uid, or the SO_MARK it sets)
                    RETURN  loopback destinations (the app's own localhost, the proxy's ports)
                    RETURN  DNS over TCP, and every --exclude-cidr
                    REDIRECT --to-ports 15001  TCP to each --include-cidr (default: the
                            service VIP range only; `*` for everything)
    PREROUTING -p tcp -j PLAIT_PREROUTING
    PLAIT_PREROUTING: REDIRECT --to-ports 15006  TCP to each --inbound-ports port

Capturing only the VIP range is what keeps a crashed proxy from breaking the host: the
host's own connections (to other hosts, package mirrors, the control plane) never match, and
only calls to mesh services fail until the proxy is back. The rules' text is built by pure
functions (`output_rules`, `restore_script`); `install`/`remove` run `iptables-restore` and
`iptables`, inside a network namespace with `ip netns exec` when one is named.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import subprocess
import sys
from dataclasses import dataclass

__all__ = [
    "CHAINS",
    "CaptureError",
    "CaptureSpec",
    "install",
    "output_rules",
    "prerouting_rules",
    "remove",
    "restore_script",
    "show",
]

OUTPUT_CHAIN, PREROUTING_CHAIN = "PLAIT_OUTPUT", "PLAIT_PREROUTING"
CHAINS = ((OUTPUT_CHAIN, "OUTPUT"), (PREROUTING_CHAIN, "PREROUTING"))
# Kubernetes' default service range, where plait's control plane allocates VIPs.
DEFAULT_INCLUDE = ("10.96.0.0/16",)
TIMEOUT = 15.0  # seconds for one iptables run: it waits for the xtables lock (-w)


class CaptureError(Exception):
    """Rules could not be installed or removed; the message says which command and why."""


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture; `validate()` refuses a spec that could capture the proxy itself."""

    proxy_uid: int | None = None
    proxy_mark: int | None = None
    outbound_port: int = 15001
    inbound_port: int = 15006
    inbound_ports: tuple[int, ...] = ()
    include_cidrs: tuple[str, ...] = DEFAULT_INCLUDE
    exclude_cidrs: tuple[str, ...] = ()

    def validate(self) -> None:
        if self.proxy_uid is None and self.proxy_mark is None:
            raise CaptureError(
                "give --proxy-uid or --proxy-mark: the proxy's own traffic must not be captured"
            )
        if self.proxy_uid is not None and self.proxy_uid < 0:
            raise CaptureError(f"--proxy-uid {self.proxy_uid}: must be >= 0")
        if self.proxy_mark is not None and not 0 < self.proxy_mark < 2**32:
            raise CaptureError(f"--proxy-mark {self.proxy_mark}: must be 1 to 2^32-1")
        for port in (self.outbound_port, self.inbound_port, *self.inbound_ports):
            if not 0 < port < 65536:
                raise CaptureError(f"port {port}: out of range")
        if not self.include_cidrs:
            raise CaptureError("--include-cidr: nothing to capture")
        for cidr in (*self.include_cidrs, *self.exclude_cidrs):
            if cidr == "*" and cidr in self.include_cidrs:
                continue
            try:
                ipaddress.IPv4Network(cidr, strict=False)
            except ValueError as exc:
                raise CaptureError(f"{cidr!r}: not an IPv4 CIDR ({exc})") from None


def output_rules(spec: CaptureSpec) -> list[str]:
    """The PLAIT_OUTPUT chain's rules, in order (iptables-restore syntax, no `-A CHAIN`)."""
    rules: list[str] = []
    if spec.proxy_uid is not None:
        rules.append(f"-m owner --uid-owner {spec.proxy_uid} -j RETURN")
    if spec.proxy_mark is not None:
        rules.append(f"-m mark --mark {spec.proxy_mark} -j RETURN")
    rules.append("-d 127.0.0.0/8 -j RETURN")
    rules.append("-p tcp --dport 53 -j RETURN")
    rules.extend(f"-d {cidr} -j RETURN" for cidr in spec.exclude_cidrs)
    redirect = f"-p tcp -j REDIRECT --to-ports {spec.outbound_port}"
    if "*" in spec.include_cidrs:
        rules.append(redirect)
    else:
        rules.extend(f"-d {cidr} {redirect}" for cidr in spec.include_cidrs)
    return rules


def prerouting_rules(spec: CaptureSpec) -> list[str]:
    """The PLAIT_PREROUTING chain's rules: inbound TCP to the app's ports -> the inbound port."""
    return [
        f"-p tcp --dport {port} -j REDIRECT --to-ports {spec.inbound_port}"
        for port in spec.inbound_ports
    ]


def restore_script(spec: CaptureSpec) -> str:
    """Input for `iptables-restore --noflush`: both chains (re)declared, which empties them,
    then filled, in one atomic commit; the other chains of the table are left alone."""
    lines = ["*nat", f":{OUTPUT_CHAIN} - [0:0]", f":{PREROUTING_CHAIN} - [0:0]"]
    lines += [f"-A {OUTPUT_CHAIN} {rule}" for rule in output_rules(spec)]
    lines += [f"-A {PREROUTING_CHAIN} {rule}" for rule in prerouting_rules(spec)]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _prefix(netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns] if netns else []


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
    except FileNotFoundError as exc:
        raise CaptureError(f"{argv[0]}: not found (apt-get install iptables iproute2)") from exc
    except subprocess.TimeoutExpired:
        raise CaptureError(f"{' '.join(argv)}: no answer in {TIMEOUT:.0f} s") from None


def _iptables(netns: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([*_prefix(netns), "iptables", "-w", "-t", "nat", *args])


def _check(result: subprocess.CompletedProcess[str], what: str) -> None:
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
        raise CaptureError(f"{what}: {detail}")


def install(spec: CaptureSpec, netns: str | None = None) -> None:
    """Install (or replace) the capture rules; safe to run again with another spec."""
    spec.validate()
    _check(
        _run([*_prefix(netns), "iptables-restore", "-w", "--noflush"], restore_script(spec)),
        "iptables-restore",
    )
    for chain, parent in CHAINS:
        jump = ("-p", "tcp", "-j", chain)
        if _iptables(netns, "-C", parent, *jump).returncode != 0:
            _check(_iptables(netns, "-I", parent, "1", *jump), f"iptables -I {parent}")


def remove(netns: str | None = None) -> bool:
    """Remove every plait rule and chain; True if there was something to remove."""
    found = False
    for chain, parent in CHAINS:
        # A jump added twice (by hand, or an old version) is deleted as often as it appears.
        for _ in range(64):
            if _iptables(netns, "-D", parent, "-p", "tcp", "-j", chain).returncode != 0:
                break
            found = True
        if _iptables(netns, "-F", chain).returncode == 0:
            found = True
            _check(_iptables(netns, "-X", chain), f"iptables -X {chain}")
    return found


def show(netns: str | None = None) -> str:
    """The nat table's plait rules as `iptables -S` prints them ('' when none)."""
    result = _iptables(netns, "-S")
    _check(result, "iptables -S")
    names = (OUTPUT_CHAIN, PREROUTING_CHAIN)
    return "".join(
        line + "\n" for line in result.stdout.splitlines() if any(n in line for n in names)
    )


# --- command line -----------------------------------------------------------------------------


def _ports(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PORT,PORT,...") from None


def _cidrs(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    inst = sub.add_parser("install", help="redirect the apps' TCP through the proxy")
    rem = sub.add_parser("remove", help="remove every plait capture rule (idempotent)")
    sh = sub.add_parser("show", help="print the installed plait rules")
    for q in (inst, rem, sh):
        q.add_argument("--netns", default=None, metavar="NS", help="network namespace (ip netns)")
    inst.add_argument("--proxy-uid", type=int, default=None, metavar="UID", help="the proxy's uid")
    inst.add_argument(
        "--proxy-mark", type=int, default=None, metavar="N", help="the SO_MARK the proxy sets"
    )
    inst.add_argument("--outbound-port", type=int, default=15001, help="default 15001")
    inst.add_argument("--inbound-port", type=int, default=15006, help="default 15006")
    inst.add_argument(
        "--inbound-ports",
        type=_ports,
        default=(),
        metavar="P,...",
        help="app ports whose inbound TCP goes to the inbound port (default: none)",
    )
    inst.add_argument(
        "--include-cidr",
        type=_cidrs,
        default=DEFAULT_INCLUDE,
        metavar="CIDR,...",
        help="destinations to capture (default 10.96.0.0/16, the VIP range; '*' for all)",
    )
    inst.add_argument(
        "--exclude-cidr",
        type=_cidrs,
        default=(),
        metavar="CIDR,...",
        help="destinations never captured",
    )


def run(args: argparse.Namespace) -> int:
    try:
        if args.action == "install":
            spec = CaptureSpec(
                proxy_uid=args.proxy_uid,
                proxy_mark=args.proxy_mark,
                outbound_port=args.outbound_port,
                inbound_port=args.inbound_port,
                inbound_ports=args.inbound_ports,
                include_cidrs=args.include_cidr,
                exclude_cidrs=args.exclude_cidr,
            )
            install(spec, args.netns)
            print(show(args.netns), end="")
        elif args.action == "remove":
            removed = remove(args.netns)
            print("capture rules removed" if removed else "no capture rules", file=sys.stderr)
        else:
            print(show(args.netns), end="")
    except CaptureError as exc:
        print(f"plait capture: {exc}", file=sys.stderr)
        return 1
    return 0


def available() -> bool:
    """Whether iptables is installed (tests skip without it)."""
    return shutil.which("iptables") is not None and shutil.which("iptables-restore") is not None
