"""Service virtual IPs (Kubernetes' ClusterIPs), derived from the service's name. Pure.

A VIP must stay the same across pushes and control-plane restarts, since apps and resolvers
cache it. Rather than storing an allocation, each Service's VIP is derived from a hash of
`namespace/name` into the service range, so every control plane (and every restart) computes
the same one without coordination. Two names that hash to the same address are a collision:
the one that sorts first keeps the address and the other takes the next free one in the
range (linear probing), so a VIP moves only when a new Service collides with an existing one
and sorts before it (for 100 Services in a /16: about 1 chance in 1,300 per added Service).
The network and broadcast addresses and the range's first host (Kubernetes gives it to the
API server) are never handed out.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import socket
from collections.abc import Iterable

__all__ = ["DEFAULT_SERVICE_CIDR", "VipRangeError", "allocate_vips", "parse_service_cidr"]

# Kubernetes' default service range (kubeadm): familiar to operators, private (RFC 1918).
DEFAULT_SERVICE_CIDR = "10.96.0.0/16"
_RESERVED = 2  # the network address and the first host; the broadcast address is excluded too

Key = tuple[str, str]  # (namespace, name)


class VipRangeError(ValueError):
    """The service range is not an IPv4 network with room for the services."""


def parse_service_cidr(text: str) -> ipaddress.IPv4Network:
    """`10.96.0.0/16` as a network; VipRangeError when it is not IPv4 or too small."""
    try:
        network = ipaddress.IPv4Network(text, strict=True)
    except ValueError as exc:
        raise VipRangeError(f"service CIDR {text!r}: {exc}") from None
    if network.num_addresses < 8:
        raise VipRangeError(f"service CIDR {text!r}: too small (at least a /29)")
    return network


def allocate_vips(keys: Iterable[Key], cidr: str = DEFAULT_SERVICE_CIDR) -> dict[Key, str]:
    """A VIP for each (namespace, name); the same keys always give the same addresses."""
    return dict(_allocate(tuple(sorted(set(keys))), cidr))


@functools.lru_cache(maxsize=8)
def _allocate(wanted: tuple[Key, ...], cidr: str) -> tuple[tuple[Key, str], ...]:
    # Cached: the compiler runs on every push, and the set of Services rarely changes.
    network = parse_service_cidr(cidr)
    size = network.num_addresses - _RESERVED - 1
    if len(wanted) > size:
        raise VipRangeError(f"service CIDR {cidr}: {len(wanted)} services, room for {size}")
    base = int(network.network_address) + _RESERVED
    taken: set[int] = set()
    out: list[tuple[Key, str]] = []
    for slot, key in sorted((_slot(k, size), k) for k in wanted):
        while slot in taken:
            slot = (slot + 1) % size
        taken.add(slot)
        out.append((key, socket.inet_ntoa((base + slot).to_bytes(4, "big"))))
    return tuple(out)


def _slot(key: Key, size: int) -> int:
    digest = hashlib.sha256(f"{key[0]}/{key[1]}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % size
