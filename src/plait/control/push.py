"""Push server: compiles the mesh once per change and streams deltas to every proxy.

Pipeline (Istio pilot's shape): the store's watch says something changed -> debounce
(100 ms of quiet, at most 500 ms) -> one compile of the whole mesh (pure compiler) ->
fingerprints per cluster and route -> for each proxy, a delta against what it was last sent
(serialised once per base version, so 1,000 proxies in sync cost one `json.dumps`).
A proxy that connects, or that NACKs, gets a full snapshot. The protocol is in
`plait.config.wire`.

Owns: its listening socket, one reader task per proxy connection, the watch task, the
heartbeat sweeper. `aclose()` cancels and awaits all of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from plait.config import wire
from plait.config.snapshot import Node, Snapshot
from plait.control.ca_service import CaService, TokenError
from plait.control.compiler import CompileError, compile_snapshot
from plait.control.config_service import ConfigService
from plait.control.policy_compiler import PolicyCompileError, compile_mtls_mode, compile_policies
from plait.control.registry import Registry, WorkloadEntry
from plait.control.store import Store, StoreError
from plait.control.vips import DEFAULT_SERVICE_CIDR
from plait.identity.ca import CaError, CsrError
from plait.identity.spiffe import SpiffeId, peer_spiffe_id

__all__ = ["PushServer"]

POLICY_KINDS = frozenset({"AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication"})

log = logging.getLogger("plait.control.push")

DEBOUNCE_QUIET = 0.1
DEBOUNCE_MAX = 0.5
# A proxy that cannot take its pushes (over 32 MiB queued) is dropped; it reconnects for a full one.
MAX_QUEUED_BYTES = 32 * 1024 * 1024
READ_CHUNK = 256 * 1024
# Larger pushes (a full snapshot of 10,000 endpoints is ~2 MiB) are written in pieces of this
# size, each after the last has drained: TLS encrypts a write whole into a memory buffer that
# OpenSSL never shrinks, so one 2 MiB write kept 2 MiB per connection for its lifetime
# (1.7 GiB for 1,000 proxies); in pieces it stays near this size.
WRITE_CHUNK = 64 * 1024

Fingerprints = dict[str, dict[str, bytes]]


class ProxyConnection:
    """One connected proxy: who it is and what it was sent and acknowledged."""

    def __init__(self, writer: asyncio.StreamWriter, peer: str) -> None:
        self.writer = writer
        self.peer = peer
        self.node: dict[str, Any] = {}
        self.addresses: dict[str, str] = {}
        self.health = "unknown"
        self.sent_version = 0
        self.sent: Fingerprints | None = None  # None: the next push is a full snapshot
        self.acked_version = 0
        self.last_nack: str | None = None
        self.last_seen = time.monotonic()
        self.connected_at = time.time()
        self.entry: WorkloadEntry | None = None
        self.said_bye = False
        # The SPIFFE ID this connection proved (client certificate) or was issued (join token).
        self.identity: str | None = None
        self.certificate: dict[str, Any] | None = None
        self.sent_workload: bytes | None = None
        self.bundle_id = ""  # the trust bundle it confirmed holding (CA rotation waits on it)
        # Pieces of large pushes not yet written, and the task writing them (owned here).
        self._outbox: deque[memoryview] = deque()
        self._outbox_bytes = 0
        self._pump: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return str(self.node.get("name", self.peer))

    def send(self, payload: bytes) -> bool:
        """Queue one framed message; False if the connection is gone (or just dropped)."""
        transport = self.writer.transport
        if transport.is_closing():
            return False
        buffered = transport.get_write_buffer_size()
        if buffered + self._outbox_bytes > MAX_QUEUED_BYTES:
            log.warning("proxy %s is not reading its pushes; dropping it", self.name)
            transport.abort()
            return False
        if not self._outbox and len(payload) <= WRITE_CHUNK and buffered < WRITE_CHUNK:
            self.writer.write(payload)  # the common case: a small delta, written at once
            return True
        view = memoryview(payload)  # pieces share the (cached, shared) payload: no copies
        self._outbox.extend(view[i : i + WRITE_CHUNK] for i in range(0, len(view), WRITE_CHUNK))
        self._outbox_bytes += len(payload)
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(self._write_outbox())
        return True

    async def _write_outbox(self) -> None:
        try:
            while self._outbox and not self.writer.transport.is_closing():
                piece = self._outbox.popleft()
                self._outbox_bytes -= len(piece)
                self.writer.write(piece)
                await self.writer.drain()
        except ConnectionError:
            self.writer.transport.abort()
        finally:
            self._pump = None

    async def aclose(self) -> None:
        """Drop the connection and its unwritten pushes; waits for the writer task."""
        self.writer.transport.abort()
        self._outbox.clear()
        self._outbox_bytes = 0
        pump = self._pump
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)


class PushServer:
    """Serves the proxies' push channel (default 127.0.0.1:15012)."""

    def __init__(
        self,
        store: Store,
        config: ConfigService,
        registry: Registry,
        heartbeat_grace: float = 5.0,
        ca: CaService | None = None,
    ) -> None:
        self.ca = ca
        self.store = store
        self.config = config
        self.registry = registry
        self.heartbeat_grace = heartbeat_grace
        self.connections: set[ProxyConnection] = set()
        self.version = 0
        self.items: dict[str, dict[str, dict[str, Any]]] = {k: {} for k in wire.KINDS}
        self.fingerprints: Fingerprints = {k: {} for k in wire.KINDS}
        # The clusters `items` was made from, and their keys: what is equal needs no new dict.
        self._clusters: dict[tuple[str, str], tuple[Any, str]] = {}
        self.compile_errors: list[str] = []
        self.service_cidr = DEFAULT_SERVICE_CIDR  # where Service VIPs come from (--service-cidr)
        self.store_revision = 0
        # Security policy is compiled per workload class (namespace + labels), on demand.
        self._policy_resources: list[Any] = []
        self._policy_fingerprint = b""
        self._workload_cache: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
        self._full_cache: tuple[int, bytes] | None = None
        # Deltas are cached per base version together with the exact state they were computed
        # from, so two proxies that share a base version but not a state never share one.
        self._delta_cache: dict[int, tuple[Fingerprints, bytes]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._dirty = asyncio.Event()
        self._recompute_lock = asyncio.Lock()
        self.address: tuple[str, int] | None = None

    # lifecycle -----------------------------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        await self.recompute()
        revision = await self.store.revision()
        self._spawn(self._watch(revision + 1))
        self._spawn(self._debouncer())
        self._spawn(self._sweep())
        tls = self.ca.serving_context() if self.ca is not None else None
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=READ_CHUNK, ssl=tls
        )
        self.address = self._server.sockets[0].getsockname()[:2]

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # change detection ----------------------------------------------------------------
    async def _watch(self, start: int) -> None:
        while True:
            try:
                async for _events in self.store.watch("/", start):
                    start = _events[-1].revision + 1
                    self._dirty.set()
            except StoreError as exc:
                # Compacted or fell behind: re-read everything from now on.
                log.warning("store watch restarted: %s", exc)
                start = await self.store.revision() + 1
                self._dirty.set()
            else:
                return  # store closed

    async def _debouncer(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            first = loop.time()
            while True:
                self._dirty.clear()
                try:
                    await asyncio.wait_for(self._dirty.wait(), DEBOUNCE_QUIET)
                except TimeoutError:
                    break
                if loop.time() - first >= DEBOUNCE_MAX:
                    self._dirty.clear()
                    break
            try:
                await self.recompute()
            except Exception:  # noqa: BLE001 - a failed compile must not stop future pushes
                log.exception("recompute failed")

    # compile and push ----------------------------------------------------------------
    async def recompute(self) -> None:
        """Compile the mesh; if anything changed, push deltas to every proxy."""
        # One at a time: a compile that read older registry entries must not finish last.
        async with self._recompute_lock:
            await self._recompute()

    async def _recompute(self) -> None:
        started = time.perf_counter()
        resources, revision = await self.config.resources()
        instances = await self.registry.instances()
        snapshot = self._compile(resources, instances)
        items, fingerprints, clusters = self._keyed(snapshot)
        self.store_revision = revision
        policy_resources = [x for x in resources if x.kind in POLICY_KINDS]
        policy_fingerprint = json.dumps(
            [x.model_dump(mode="json", by_alias=True) for x in policy_resources], sort_keys=True
        ).encode()
        if (
            fingerprints == self.fingerprints
            and policy_fingerprint == self._policy_fingerprint
            and self.version
        ):
            return
        self.version += 1
        self.items, self.fingerprints, self._clusters = items, fingerprints, clusters
        self._policy_resources, self._policy_fingerprint = policy_resources, policy_fingerprint
        self._workload_cache = {}
        self._full_cache = None
        self._delta_cache = {}
        compiled = time.perf_counter()
        for conn in list(self.connections):
            self.push(conn)
        log.info(
            "version %d (store revision %d): compiled in %.0f ms, queued to %d proxies in %.0f ms",
            self.version,
            revision,
            (compiled - started) * 1e3,
            len(self.connections),
            (time.perf_counter() - compiled) * 1e3,
        )

    def _keyed(
        self, snapshot: Snapshot
    ) -> tuple[dict[str, dict[str, Any]], Fingerprints, dict[tuple[str, str], tuple[Any, str]]]:
        """Clusters and routes as dicts by key, with their fingerprints.

        Only what changed since the last compile is converted and serialised: a cluster equal
        to the last compile's keeps that version's dict and fingerprint (a route change in a
        mesh of 1,000 clusters and 10,000 endpoints encodes one route, not the endpoints),
        and the unchanged new copies die young instead of growing the long-lived heap the
        garbage collector walks. Fingerprints still decide what a delta carries.
        """
        previous = self._clusters
        unchanged = {
            id(c): seen[1]
            for c in snapshot.clusters
            if (seen := previous.get((c.namespace, c.name))) is not None and seen[0] == c
        }
        changed = tuple(c for c in snapshot.clusters if id(c) not in unchanged)
        data = replace(snapshot, clusters=changed).to_dict()
        fresh = iter(data["clusters"])
        clusters: list[tuple[str, dict[str, Any] | None]] = []
        compiled: dict[tuple[str, str], tuple[Any, str]] = {}
        for c in snapshot.clusters:
            key = unchanged.get(id(c))
            item = None
            if key is None:
                item = next(fresh)
                key = wire.resource_key("clusters", item)
            clusters.append((key, item))
            compiled[(c.namespace, c.name)] = (c, key)
        routes = [(wire.resource_key("routes", x), x) for x in data["routes"]]
        items: dict[str, dict[str, Any]] = {}
        fingerprints: Fingerprints = {}
        for kind, keyed in (("clusters", clusters), ("routes", routes)):
            old_items, old_fingerprints = self.items[kind], self.fingerprints[kind]
            new_items: dict[str, Any] = {}
            new_fingerprints: dict[str, bytes] = {}
            for key, converted in keyed:
                old = old_items.get(key)
                if old is not None and (converted is None or old == converted):
                    new_items[key], new_fingerprints[key] = old, old_fingerprints[key]
                else:
                    assert converted is not None  # an unchanged cluster always has its old dict
                    new_items[key] = converted
                    new_fingerprints[key] = json.dumps(
                        converted, sort_keys=True, separators=(",", ":")
                    ).encode()
            items[kind], fingerprints[kind] = new_items, new_fingerprints
        return items, fingerprints, compiled

    def _compile(self, resources: list[Any], instances: list[Any]) -> Snapshot:
        """Compile everything; a route the compiler refuses is left out, not the whole mesh."""
        node = Node(name="mesh")
        try:
            self.compile_errors = []
            return compile_snapshot(resources, instances, node, "mesh", self.service_cidr)
        except CompileError:
            pass
        kept: list[Any] = []
        errors: list[str] = []

        def keep(batch: list[Any]) -> None:
            """Keep the batch if it compiles with what is kept, else find the culprits by
            halving it: a few compiles per refused resource, where trying resources one at a
            time took one compile each (7 minutes for a mesh of 10,000 Workloads)."""
            try:
                compile_snapshot([*kept, *batch], instances, node, "mesh", self.service_cidr)
            except CompileError as exc:
                if len(batch) == 1:
                    resource = batch[0]
                    name = f"{resource.kind}/{resource.metadata.namespace}/{resource.metadata.name}"
                    errors.append(f"{name}: {exc}")
                else:
                    keep(batch[: len(batch) // 2])
                    keep(batch[len(batch) // 2 :])
            else:
                kept.extend(batch)

        # Routes last: a route is only compilable once the Services and faults it names are in.
        route_kinds = ("HTTPRoute", "GRPCRoute")
        keep([x for x in resources if x.kind not in route_kinds])
        keep([x for x in resources if x.kind in route_kinds])
        self.compile_errors = errors
        for line in errors:
            log.warning("not pushed: %s", line)
        return compile_snapshot(kept, instances, node, "mesh", self.service_cidr)

    def _workload_payload(self, conn: ProxyConnection) -> bytes:
        """This proxy's own part of the snapshot: the policies that select its workload."""
        namespace = str(conn.node.get("namespace", "default"))
        labels = {str(k): str(v) for k, v in (conn.node.get("labels") or {}).items()}
        key = (namespace, tuple(sorted(labels.items())))
        cached = self._workload_cache.get(key)
        if cached is None:
            resources = self._policy_resources
            try:
                policies = compile_policies(resources, labels, namespace)
            except PolicyCompileError:
                resources = [x for x in resources if _policy_compiles(x, labels, namespace)]
                policies = compile_policies(resources, labels, namespace)
            data = {
                "policies": policies.to_dict(),
                "mtls_mode": compile_mtls_mode(resources, labels, namespace),
            }
            cached = self._workload_cache[key] = wire.encode({"type": "workload", "data": data})
        return cached

    def push(self, conn: ProxyConnection) -> None:
        if conn.sent is not None and conn.sent_version == self.version:
            return
        workload = self._workload_payload(conn)
        if workload != conn.sent_workload:
            if not conn.send(workload):
                return
            conn.sent_workload = workload
        if conn.sent is None:
            payload = self._full_payload()
        else:
            payload = self._delta_payload(conn.sent_version, conn.sent)
        if conn.send(payload):
            conn.sent_version = self.version
            conn.sent = self.fingerprints

    def _full_payload(self) -> bytes:
        if self._full_cache is None or self._full_cache[0] != self.version:
            message = {
                "type": "snapshot",
                "version": str(self.version),
                "clusters": list(self.items["clusters"].values()),
                "routes": list(self.items["routes"].values()),
            }
            self._full_cache = (self.version, wire.encode(message))
        return self._full_cache[1]

    def _delta_payload(self, base: int, sent: Fingerprints) -> bytes:
        cached = self._delta_cache.get(base)
        if cached is not None and cached[0] is sent:
            return cached[1]
        upsert_keys, remove = wire.diff(sent, self.fingerprints)
        message = {
            "type": "delta",
            "version": str(self.version),
            "base": str(base),
            "upsert": {
                kind: [self.items[kind][k] for k in keys] for kind, keys in upsert_keys.items()
            },
            "remove": remove,
        }
        payload = wire.encode(message)
        self._delta_cache[base] = (sent, payload)
        return payload

    # connections ---------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        conn = ProxyConnection(writer, f"{peer[0]}:{peer[1]}" if peer else "?")
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            conn.identity = peer_spiffe_id(der) if der else None
        frames = wire.FrameReader()
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                conn.last_seen = time.monotonic()
                for message in frames.feed(data):
                    await self._on_message(conn, message)
        except (wire.FrameError, ValueError, KeyError, TypeError) as exc:
            log.warning("proxy %s sent a bad message: %s", conn.name, exc)
        except ConnectionError:
            pass
        finally:
            self.connections.discard(conn)
            if conn.entry is not None and not conn.said_bye:
                self.registry.disconnected(conn.entry.namespace, conn.entry.name)
            await conn.aclose()

    async def _on_message(self, conn: ProxyConnection, message: Mapping[str, Any]) -> None:
        kind = message["type"]
        if kind == "hello":
            conn.node = dict(message.get("node") or {})
            if self.ca is not None and not await self._authenticate(conn, message):
                return
            conn.addresses = dict(message.get("addresses") or {})
            conn.health = str(message.get("health", "unknown"))
            self.connections.add(conn)
            self.push(conn)  # a (re)connecting proxy always starts from a full snapshot
            endpoint = message.get("endpoint")
            if endpoint and conn.node.get("service"):
                conn.entry = WorkloadEntry(
                    name=str(conn.node["name"]),
                    service=str(conn.node["service"]),
                    namespace=str(conn.node.get("namespace", "default")),
                    labels={str(k): str(v) for k, v in (conn.node.get("labels") or {}).items()},
                    address=str(endpoint["address"]),
                    port=int(endpoint["port"]),
                    health=conn.health,
                    identity=conn.identity or "",
                    protocol_hint="h2" if endpoint.get("protocol_hint") == "h2" else "",
                )
                await self.registry.register(conn.entry)
        elif kind == "ack":
            conn.acked_version = int(message["version"])
            conn.last_nack = None
        elif kind == "nack":
            conn.last_nack = str(message.get("error", ""))[:1000]
            log.warning(
                "proxy %s rejected version %s: %s",
                conn.name,
                message.get("version"),
                conn.last_nack,
            )
            conn.sent = None  # its state is its last good one: next push is full
            conn.sent_workload = None
            if message.get("reason") == "base":
                self.push(conn)
        elif kind == "bundle_ack":
            conn.bundle_id = str(message.get("id", ""))
        elif kind == "certificate_status":
            conn.certificate = dict(message.get("certificate") or {})
        elif kind == "health":
            conn.health = str(message.get("health", "unknown"))
            if conn.entry is not None and conn.entry.health != conn.health:
                conn.entry = replace(conn.entry, health=conn.health)
                await self.registry.register(conn.entry)
        elif kind == "csr":
            await self._renew(conn, str(message.get("csr", "")))
        elif kind == "bye":
            conn.said_bye = True
            if conn.entry is not None:
                await self.registry.deregister(conn.entry.namespace, conn.entry.name)
                conn.entry = None
                # At once, not after the debounce: the leaving proxy keeps accepting only
                # until callers have heard (its --deregister-delay).
                await self.recompute()
        # heartbeat: last_seen was updated on read

    async def _authenticate(self, conn: ProxyConnection, hello: Mapping[str, Any]) -> bool:
        """A proxy proves who it is with its certificate, or bootstraps with a join token."""
        assert self.ca is not None
        namespace = str(conn.node.get("namespace", "default"))
        if conn.identity is None:
            token, csr = hello.get("join_token"), hello.get("csr")
            if not token or not csr:
                return self._refuse(conn, "no client certificate and no join token")
            try:
                claims = await self.ca.redeem(str(token))
            except TokenError as exc:
                return self._refuse(conn, str(exc))
            if claims.namespace != namespace or claims.service != conn.node.get("service"):
                return self._refuse(
                    conn,
                    f"join token is for {claims.namespace}/{claims.service}, not {namespace}/{conn.node.get('service')}",
                )
            spiffe = claims.spiffe_id(self.ca.trust_domain)
            try:
                chain = self.ca.issue(str(csr).encode(), spiffe)
            except (CsrError, CaError) as exc:
                return self._refuse(conn, f"certificate signing request refused: {exc}")
            conn.identity = str(spiffe)
            conn.send(
                wire.encode(
                    {
                        "type": "certificate",
                        "chain": chain.decode(),
                        "bundle": self.ca.bundle().decode(),
                    }
                )
            )
        conn.send(self._bundle_message())
        try:
            proved = SpiffeId.parse(conn.identity)
        except ValueError as exc:
            return self._refuse(conn, f"certificate identity unusable: {exc}")
        if proved.namespace != namespace:
            return self._refuse(
                conn, f"identity {conn.identity} may not register in namespace {namespace}"
            )
        return True

    def _bundle_message(self) -> bytes:
        assert self.ca is not None
        bundle = self.ca.bundle()
        return wire.encode({"type": "bundle", "bundle": bundle.decode(), "id": bundle_id(bundle)})

    def broadcast_bundle(self) -> None:
        """Send the current trust bundle to every proxy (after a root joins or retires)."""
        if self.ca is None:
            return
        message = self._bundle_message()
        for conn in list(self.connections):
            conn.send(message)

    async def rotate_ca(self, timeout: float = 30.0) -> dict[str, Any]:
        """Rotate the root without breaking a connection: a new root joins the bundle, every
        proxy confirms it holds the new bundle, only then does the new root sign, and every
        proxy is asked to renew. The old root stays trusted until its leaves expire."""
        if self.ca is None:
            raise RuntimeError("this control plane has no CA")
        new_root = self.ca.ca.prepare_rotation()
        self.ca.publish_bundle()
        self.ca.renew_serving(force=True)  # callers with new-root certificates must verify
        wanted = bundle_id(self.ca.bundle())
        self.broadcast_bundle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(c.bundle_id != wanted for c in self.connections if c.identity):
            if loop.time() > deadline:
                late = sorted(c.name for c in self.connections if c.bundle_id != wanted)
                raise TimeoutError(
                    f"proxies did not confirm the new trust bundle: {', '.join(late)}"
                )
            await asyncio.sleep(0.05)
        self.ca.ca.activate_rotation()
        self.ca.renew_serving(force=True)  # our own certificate from the new root too
        renew = wire.encode({"type": "renew"})
        for conn in list(self.connections):
            conn.send(renew)
        log.info(
            "CA rotated: root %s now signs; %d proxies asked to renew",
            new_root,
            len(self.connections),
        )
        return {"signing_root": new_root, "proxies": len(self.connections)}

    async def _renew(self, conn: ProxyConnection, csr: str) -> None:
        if self.ca is None or conn.identity is None:
            return
        try:
            chain = self.ca.issue(csr.encode(), SpiffeId.parse(conn.identity), renewal=True)
        except (CsrError, CaError, ValueError) as exc:
            log.warning("renewal for %s refused: %s", conn.identity, exc)
            return
        conn.send(
            wire.encode(
                {
                    "type": "certificate",
                    "chain": chain.decode(),
                    "bundle": self.ca.bundle().decode(),
                }
            )
        )

    def _refuse(self, conn: ProxyConnection, reason: str) -> bool:
        log.warning("proxy %s refused: %s", conn.name, reason)
        conn.send(wire.encode({"type": "error", "error": reason}))
        conn.writer.transport.close()
        return False

    async def _sweep(self) -> None:
        """Drop connections whose heartbeats stopped (a hung proxy keeps its socket open)."""
        while True:
            await asyncio.sleep(1.0)
            if self.ca is not None:
                self.ca.renew_serving()
            cutoff = time.monotonic() - self.heartbeat_grace
            for conn in [c for c in self.connections if c.last_seen < cutoff]:
                log.warning("proxy %s missed its heartbeats; dropping it", conn.name)
                conn.writer.transport.abort()

    # status --------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        out = []
        for conn in sorted(self.connections, key=lambda c: c.name):
            out.append(
                {
                    "name": conn.name,
                    "service": conn.node.get("service", ""),
                    "namespace": conn.node.get("namespace", "default"),
                    "mode": conn.node.get("mode", "sidecar"),
                    "labels": conn.node.get("labels", {}),
                    "addresses": conn.addresses,
                    "health": conn.health,
                    "connected": True,
                    "connected_since": conn.connected_at,
                    "acked_version": str(conn.acked_version),
                    "latest_version": str(self.version),
                    "behind": self.version - conn.acked_version,
                    "synced": conn.acked_version == self.version,
                    "last_nack": conn.last_nack,
                    # The store revision the latest version was compiled from: a client that
                    # wrote at revision R knows its change is everywhere once this is >= R
                    # and every proxy is synced.
                    "compiled_revision": self.store_revision,
                    "identity": conn.identity,
                    "certificate": conn.certificate,
                }
            )
        return out


def _policy_compiles(resource: Any, labels: dict[str, str], namespace: str) -> bool:
    """False for a policy the compiler refuses (it is left out and logged, not pushed)."""
    try:
        compile_policies([resource], labels, namespace)
    except PolicyCompileError as exc:
        log.warning(
            "policy %s/%s not pushed: %s", resource.metadata.namespace, resource.metadata.name, exc
        )
        return False
    return True


def bundle_id(bundle: bytes) -> str:
    """A short name for one trust bundle's content (what a proxy confirms holding)."""
    return hashlib.sha256(bundle).hexdigest()[:16]
