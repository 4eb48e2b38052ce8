"""Agent: keeps a proxy subscribed to the control plane and its snapshot current.

It connects, says `hello`, applies each `snapshot`/`delta` (validate whole, swap atomically,
ACK; or NACK and keep the last good one), writes every applied snapshot to a cache file,
sends heartbeats and its app's health, and says `bye` on a graceful exit. When the control
plane goes away the proxy keeps serving its last snapshot and reconnects with jittered
exponential back-off; a proxy that starts while the control plane is down starts from
its cache. Protocol: `plait.config.wire`.

Owns one task (`run`), cancelled by its owner; `aclose()` says bye when still connected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from plait.config import wire
from plait.config.snapshot import Node, Snapshot, SnapshotError
from plait.identity.tls import PeerVerificationError, client_context, verify_peer
from plait.proxy.certificates import CertificateManager
from plait.proxy.health import AppHealthCheck
from plait.proxy.runtime import ConfigHolder

__all__ = ["ControlAgent", "load_cached_snapshot"]

log = logging.getLogger("plait.proxy.agent")

HEARTBEAT_INTERVAL = 1.0
PUSH_ALPN = ("plait-push",)


class BootstrapError(Exception):
    """The control plane refused this proxy (bad join token, identity mismatch)."""


BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 5.0
CONNECT_TIMEOUT = 3.0


def node_dict(node: Node) -> dict[str, Any]:
    return {
        "name": node.name,
        "service": node.service,
        "namespace": node.namespace,
        "labels": dict(node.labels),
        "gateway": node.gateway,
    }


def load_cached_snapshot(path: Path, node: Node) -> tuple[Snapshot, wire.ResourceState] | None:
    """The last snapshot this proxy applied, if the cache file holds a valid one."""
    try:
        data = json.loads(path.read_text())
        state = wire.ResourceState.from_snapshot_dict(str(data["version"]), data)
        return Snapshot.from_dict(state.to_snapshot_dict(node_dict(node))), state
    except (OSError, ValueError, KeyError, TypeError, SnapshotError):
        return None


class ControlAgent:
    """The proxy's side of the push channel."""

    def __init__(
        self,
        address: tuple[str, int],
        node: Node,
        config: ConfigHolder,
        addresses: Mapping[str, str],
        endpoint: tuple[str, int] | None,
        cache_path: Path | None = None,
        health: AppHealthCheck | None = None,
        on_applied: Callable[[Snapshot], None] | None = None,
        state: wire.ResourceState | None = None,
        certs: CertificateManager | None = None,
        ca_bundle: bytes | None = None,
        join_token: str | None = None,
        control_id: str | None = None,
        mode: str = "sidecar",
    ) -> None:
        self.mode = mode  # sidecar | gateway: shown by `plait status` and the dashboard
        self.address = address
        self.node = node
        self.config = config
        self.addresses = dict(addresses)
        self.endpoint = endpoint
        self.cache_path = cache_path
        self.health = health
        self.on_applied = on_applied
        self.state = state or wire.ResourceState()
        # Identity: with a CA bundle the push channel is TLS, the control plane must prove
        # `control_id`, and the proxy bootstraps (join token) or renews its certificate on it.
        self.certs = certs
        self.ca_bundle = ca_bundle
        self.join_token = join_token
        self.control_id = control_id
        self._renewal_requested = 0.0
        self._pending_workload: dict[str, Any] | None = None
        self.connected = False
        self.last_error: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._rng = random.Random()
        if health is not None:
            health.on_change = self._health_changed

    def _health_changed(self, status: str) -> None:
        if self.connected:
            self._send({"type": "health", "health": status})

    async def run(self) -> None:
        """Stay connected until cancelled."""
        backoff = BACKOFF_INITIAL
        while True:
            try:
                await self._session()
                backoff = BACKOFF_INITIAL  # a session that got going resets the back-off
            except (
                OSError,
                TimeoutError,
                wire.FrameError,
                asyncio.IncompleteReadError,
                BootstrapError,
            ) as exc:
                self.last_error = str(exc) or type(exc).__name__
                log.warning("control plane %s:%s: %s", *self.address, self.last_error)
            finally:
                self.connected = False
                self._writer = None
            # Full jitter (AWS architecture blog): spreads 1,000 reconnecting proxies.
            await asyncio.sleep(self._rng.uniform(0, backoff))
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _tls(self) -> ssl.SSLContext | None:
        if self.ca_bundle is None:
            return None
        identity = self.certs.identity if self.certs else None
        if identity is not None:
            # The bundle the control plane last sent (it follows CA rotations), not the
            # bootstrap file, which may predate a rotation.
            return client_context(
                identity.cert_pem, identity.key_pem, identity.bundle_pem, alpn=PUSH_ALPN
            )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False  # the SPIFFE ID is checked instead, right after the handshake
        ctx.load_verify_locations(cadata=self.ca_bundle.decode())
        ctx.set_alpn_protocols(list(PUSH_ALPN))
        return ctx

    async def _session(self) -> None:
        tls = self._tls()
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(
                *self.address, limit=256 * 1024, ssl=tls, server_hostname="" if tls else None
            )
        if tls is not None:
            try:
                verify_peer(
                    writer.get_extra_info("ssl_object"),
                    {self.control_id} if self.control_id else None,
                )
            except PeerVerificationError as exc:
                writer.transport.abort()
                raise ConnectionRefusedError(f"control plane identity refused: {exc}") from None
        self._writer = writer
        endpoint = (
            # protocol_hint: this proxy downgrades HTTP/1.1 that callers carry over HTTP/2.
            {"address": self.endpoint[0], "port": self.endpoint[1], "protocol_hint": "h2"}
            if self.endpoint
            else None
        )
        health = self.health.status if self.health else "unknown"
        hello = wire.hello(
            {**node_dict(self.node), "mode": self.mode},
            self.addresses,
            endpoint,
            self.state.version,
            health,
        )
        if self.certs is not None and self.certs.identity is None:
            if not self.join_token:
                raise BootstrapError(
                    "no certificate and no join token (--join-token / PLAIT_JOIN_TOKEN)"
                )
            hello["join_token"] = self.join_token
            hello["csr"] = self.certs.csr().decode()
        self._send(hello)
        if self.certs is not None and self.certs.identity is not None:
            self._send({"type": "certificate_status", "certificate": self.certs.status()})
        self.connected = True
        self.last_error = None
        heartbeat = asyncio.get_running_loop().create_task(self._heartbeats())
        frames = wire.FrameReader()
        try:
            while True:
                data = await reader.read(256 * 1024)
                if not data:
                    raise ConnectionResetError("control plane closed the connection")
                for message in frames.feed(data):
                    self._on_message(message)
        finally:
            heartbeat.cancel()
            writer.transport.abort()

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            self._send({"type": "heartbeat"})
            certs = self.certs
            now = time.time()
            # Renew on the authenticated channel; ask again if no answer within 30 s.
            due = certs is not None and certs.identity is not None and certs.needs_renewal(now)
            if due and certs is not None and now - self._renewal_requested > 30:
                self._renewal_requested = now
                self._send({"type": "csr", "csr": certs.csr().decode()})

    def _send(self, message: Mapping[str, Any]) -> None:
        if self._writer is not None and not self._writer.transport.is_closing():
            self._writer.write(wire.encode(message))

    def _on_message(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        version = str(message.get("version", ""))
        if kind == "certificate":
            self._install_certificate(message)
            return
        if kind == "error":
            raise BootstrapError(str(message.get("error", "refused by the control plane")))
        if kind == "bundle":
            if self.certs is not None:
                self.certs.update_bundle(str(message.get("bundle", "")).encode())
            self._send({"type": "bundle_ack", "id": message.get("id", "")})
            return
        if kind == "renew":
            if self.certs is not None:
                self.certs.renew_now()
                self._renewal_requested = 0.0
                self._send({"type": "csr", "csr": self.certs.csr().decode()})
                self._renewal_requested = time.time()
            return
        if kind == "workload":
            # Applied together with the snapshot or delta that follows it.
            self._pending_workload = dict(message.get("data") or {})
            return
        if kind == "snapshot":
            new_state = wire.ResourceState.from_snapshot_dict(version, message)
        elif kind == "delta":
            if str(message.get("base")) != self.state.version:
                self._send(
                    {
                        "type": "nack",
                        "version": version,
                        "reason": "base",
                        "error": f"delta base {message.get('base')} != applied {self.state.version}",
                    }
                )
                return
            try:
                new_state = self.state.apply_delta(message)
            except (ValueError, KeyError, TypeError) as exc:
                self._nack(version, str(exc))
                return
        else:
            return
        if self._pending_workload is not None:
            new_state.workload = self._pending_workload
            self._pending_workload = None
        elif kind == "snapshot":
            new_state.workload = self.state.workload
        try:
            snapshot = Snapshot.from_dict(new_state.to_snapshot_dict(node_dict(self.node)))
        except (SnapshotError, ValueError, TypeError) as exc:
            self._nack(version, str(exc))
            return
        try:
            self.config.apply(snapshot)  # builds matchers and policy: may refuse the snapshot
        except ValueError as exc:
            self._nack(version, str(exc))
            return
        self.state = new_state
        self._write_cache(new_state)
        self._send({"type": "ack", "version": version})
        if self.on_applied is not None:
            self.on_applied(snapshot)

    def _install_certificate(self, message: Mapping[str, Any]) -> None:
        if self.certs is None:
            return
        try:
            identity = self.certs.install(
                str(message["chain"]).encode(), str(message["bundle"]).encode()
            )
        except (KeyError, ValueError) as exc:
            log.error("control plane sent an unusable certificate: %s", exc)
            return
        self._renewal_requested = 0.0
        self.join_token = None  # spent: later connections authenticate with the certificate
        self._send({"type": "certificate_status", "certificate": self.certs.status()})
        log.info(
            "certificate installed: %s serial %x expires %s",
            identity.spiffe_id,
            identity.serial,
            identity.not_after,
        )

    def _nack(self, version: str, error: str) -> None:
        log.warning("rejected config version %s: %s", version, error)
        self._send({"type": "nack", "version": version, "reason": "invalid", "error": error})

    def _write_cache(self, state: wire.ResourceState) -> None:
        if self.cache_path is None:
            return
        tmp = self.cache_path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(state.to_snapshot_dict(node_dict(self.node))))
            os.replace(tmp, self.cache_path)  # atomic: a crash leaves the old or the new file
        except OSError as exc:
            log.warning("cannot write snapshot cache %s: %s", self.cache_path, exc)

    async def say_bye(self) -> None:
        """Graceful exit: withdraw our endpoint now rather than after the grace period."""
        writer = self._writer
        if writer is not None and self.connected:
            self._send({"type": "bye"})
            try:
                async with asyncio.timeout(1.0):
                    await writer.drain()
            except (OSError, TimeoutError):
                pass
