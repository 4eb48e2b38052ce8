"""Mesh DNS: answers A queries for service names with their VIPs, so apps call
`http://reviews:9080/` unchanged and transparent capture routes the connection.

Theory of operation. The message codec (RFC 1035 section 4) is sans-I/O: `parse_query` turns
a datagram into a `Query` (or raises `DnsFormatError`), `answer` decides from a name table and
returns the reply bytes, or None when the name is not the mesh's and a forwarder should ask
upstream. Mesh names are each Service's `name`, `name.namespace`, `name.namespace.svc` and
`name.namespace.svc.cluster.local` (Kubernetes' spellings), taken from the proxy's live
snapshot by `MeshNames`. A mesh name answers its VIP for A (and ANY), and an empty NOERROR
for other types (AAAA: the mesh has no IPv6 VIPs, and NXDOMAIN would make resolvers give up
on the A answer too). Unknown names inside the cluster domain are NXDOMAIN; the rest are
forwarded when a forwarder is configured, NXDOMAIN otherwise.

`DnsServer` is the UDP shell: one datagram endpoint, plus one short-lived socket per
forwarded query. It owns its transport and forward tasks; `aclose()` releases them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from plait.config.snapshot import Snapshot

__all__ = [
    "A",
    "AAAA",
    "ANY",
    "DnsFormatError",
    "DnsServer",
    "MeshNames",
    "Query",
    "answer",
    "build_query",
    "build_reply",
    "parse_query",
    "parse_reply",
]

log = logging.getLogger("plait.proxy.dns")

A, AAAA, ANY = 1, 28, 255
CLASS_IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 1, 2, 3, 4
QR, AA, RD, RA = 0x8000, 0x0400, 0x0100, 0x0080
# 30 s: VIPs are stable (derived from the name), so caching is safe; short enough that a
# deleted Service stops resolving soon after.
TTL = 30
CLUSTER_DOMAIN = "cluster.local"
MAX_NAME = 255  # RFC 1035 section 2.3.4
_HEADER = struct.Struct("!HHHHHH")


class DnsFormatError(ValueError):
    """A datagram that is not a well-formed query; `qid` is set when the header was readable."""

    def __init__(self, message: str, qid: int | None = None, flags: int = 0) -> None:
        super().__init__(message)
        self.qid = qid
        self.flags = flags


@dataclass(frozen=True, slots=True)
class Query:
    qid: int
    flags: int
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    question: bytes  # the question section as received, echoed in the reply


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed) domain name at `offset`: (name, offset after it)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    length = 0
    while True:
        if offset >= len(data):
            raise DnsFormatError("name runs past the end of the message")
        size = data[offset]
        if size & 0xC0 == 0xC0:  # a pointer (RFC 1035 section 4.1.4)
            if offset + 1 >= len(data):
                raise DnsFormatError("truncated name pointer")
            jumps += 1
            if jumps > 16:
                raise DnsFormatError("name pointer loop")
            if end < 0:
                end = offset + 2
            offset = ((size & 0x3F) << 8) | data[offset + 1]
            continue
        if size & 0xC0:
            raise DnsFormatError("unsupported label type")
        offset += 1
        if size == 0:
            break
        label = data[offset : offset + size]
        if len(label) < size:
            raise DnsFormatError("label runs past the end of the message")
        length += size + 1
        if length > MAX_NAME:
            raise DnsFormatError("name longer than 255 octets")
        labels.append(label.decode("ascii", "replace").lower())
        offset += size
    return ".".join(labels), (end if end >= 0 else offset)


def parse_query(data: bytes) -> Query:
    """One query from a datagram; DnsFormatError when it is not a single-question query."""
    if len(data) < _HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    qid, flags, qdcount, _, _, _ = _HEADER.unpack_from(data)
    if flags & QR:
        raise DnsFormatError("a response, not a query", qid, flags)
    if qdcount != 1:
        raise DnsFormatError(f"{qdcount} questions (expected 1)", qid, flags)
    try:
        name, offset = _read_name(data, _HEADER.size)
    except DnsFormatError as exc:
        raise DnsFormatError(str(exc), qid, flags) from None
    if offset + 4 > len(data):
        raise DnsFormatError("truncated question", qid, flags)
    qtype, qclass = struct.unpack_from("!HH", data, offset)
    return Query(qid, flags, name, qtype, qclass, data[_HEADER.size : offset + 4])


def build_reply(
    qid: int, flags: int, question: bytes, rcode: int, addresses: tuple[str, ...] = ()
) -> bytes:
    """A reply echoing `question`, with an A record per address (the name by pointer)."""
    out_flags = QR | AA | (flags & (0x7800 | RD)) | (rcode & 0xF)
    parts = [_HEADER.pack(qid, out_flags, 1 if question else 0, len(addresses), 0, 0), question]
    for address in addresses:
        # 0xC00C: a pointer to the question's name, right after the 12-byte header.
        parts.append(struct.pack("!HHHIH", 0xC00C, A, CLASS_IN, TTL, 4))
        parts.append(socket.inet_aton(address))
    return b"".join(parts)


def error_reply(data: bytes, exc: DnsFormatError) -> bytes | None:
    """FORMERR for a query whose header was readable; None (drop) for anything else."""
    if exc.qid is None or exc.flags & QR:
        return None
    return build_reply(exc.qid, exc.flags, b"", FORMERR)


def answer(query: Query, names: Mapping[str, str]) -> bytes | None:
    """The reply to `query` from the mesh's `names` (name -> VIP); None: not a mesh name,
    ask the forwarder (or answer NXDOMAIN without one)."""
    if (query.flags >> 11) & 0xF:  # only standard queries (opcode 0)
        return build_reply(query.qid, query.flags, query.question, NOTIMP)
    vip = names.get(query.name)
    if vip is not None:
        found = (vip,) if query.qtype in (A, ANY) and query.qclass == CLASS_IN else ()
        return build_reply(query.qid, query.flags, query.question, NOERROR, found)
    if query.name == CLUSTER_DOMAIN or query.name.endswith("." + CLUSTER_DOMAIN):
        return build_reply(query.qid, query.flags, query.question, NXDOMAIN)
    return None


def build_query(qid: int, name: str, qtype: int = A) -> bytes:
    """A recursive query for `name` (used by tests and the health probe)."""
    labels = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.rstrip(".").split(".") if p)
    return _HEADER.pack(qid, RD, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, CLASS_IN)


def parse_reply(data: bytes) -> tuple[int, int, list[str]]:
    """(id, rcode, A addresses) of a reply; DnsFormatError when it is malformed."""
    if len(data) < _HEADER.size:
        raise DnsFormatError("shorter than a DNS header")
    qid, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data)
    offset = _HEADER.size
    for _ in range(qdcount):
        offset = _read_name(data, offset)[1] + 4
    addresses = []
    for _ in range(ancount):
        offset = _read_name(data, offset)[1]
        if offset + 10 > len(data):
            raise DnsFormatError("truncated record")
        rtype, _, _, rdlength = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        rdata = data[offset : offset + rdlength]
        if len(rdata) < rdlength:
            raise DnsFormatError("truncated record data")
        if rtype == A and rdlength == 4:
            addresses.append(socket.inet_ntoa(rdata))
        offset += rdlength
    return qid, flags & 0xF, addresses


class MeshNames:
    """The name -> VIP table of the current snapshot, rebuilt only when the snapshot changes."""

    def __init__(self, current: Callable[[], Snapshot]) -> None:
        self._current = current
        self._snapshot: Snapshot | None = None
        self._names: dict[str, str] = {}

    def table(self) -> dict[str, str]:
        snapshot = self._current()
        if snapshot is not self._snapshot:
            names: dict[str, str] = {}
            for cluster in snapshot.clusters:
                if cluster.vip:
                    for name in cluster.dns_names:
                        names.setdefault(name.lower(), cluster.vip)
            self._snapshot, self._names = snapshot, names
        return self._names


class DnsServer(asyncio.DatagramProtocol):
    """UDP resolver for mesh names; `forward` (host, port) asks upstream for the rest."""

    def __init__(
        self,
        names: Callable[[], Mapping[str, str]],
        forward: tuple[str, int] | None = None,
        forward_timeout: float = 2.0,
    ) -> None:
        self.names = names
        self.forward = forward
        self.forward_timeout = forward_timeout
        self.transport: asyncio.DatagramTransport | None = None
        self.counters = {"queries": 0, "answered": 0, "nxdomain": 0, "forwarded": 0, "formerr": 0}
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls,
        address: tuple[str, int],
        names: Callable[[], Mapping[str, str]],
        forward: tuple[str, int] | None = None,
    ) -> DnsServer:
        """Bind `address` (UDP) and serve; OSError when the address cannot be bound."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(names, forward), local_addr=address
        )
        return protocol

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.counters["queries"] += 1
        try:
            query = parse_query(data)
        except DnsFormatError as exc:
            self.counters["formerr"] += 1
            reply = error_reply(data, exc)
            if reply is not None and self.transport is not None:
                self.transport.sendto(reply, addr)
            return
        reply = answer(query, self.names())
        if reply is None:
            if self.forward is not None:
                self.counters["forwarded"] += 1
                task = asyncio.get_running_loop().create_task(self._forward(query, data, addr))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            reply = build_reply(query.qid, query.flags, query.question, NXDOMAIN)
        self.counters["nxdomain" if reply[3] & 0xF == NXDOMAIN else "answered"] += 1
        if self.transport is not None:
            self.transport.sendto(reply, addr)

    async def _forward(self, query: Query, data: bytes, addr: tuple[str, int]) -> None:
        """Relay one query upstream; SERVFAIL when it does not answer in time."""
        assert self.forward is not None
        loop = asyncio.get_running_loop()
        reply = build_reply(query.qid, query.flags, query.question, SERVFAIL)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            try:
                async with asyncio.timeout(self.forward_timeout):
                    await loop.sock_connect(sock, self.forward)
                    await loop.sock_sendall(sock, data)
                    while True:
                        got = await loop.sock_recv(sock, 4096)
                        if len(got) >= 2 and got[:2] == data[:2]:
                            reply = got
                            break
            except (OSError, TimeoutError) as exc:
                log.warning("DNS forward of %s to %s failed: %s", query.name, self.forward, exc)
        if self.transport is not None:
            self.transport.sendto(reply, addr)

    async def aclose(self) -> None:
        if self.transport is not None:
            self.transport.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
