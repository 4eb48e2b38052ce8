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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from plait.config import wire
from plait.config.snapshot import Node, Snapshot, SnapshotError
from plait.proxy.health import AppHealthCheck
from plait.proxy.runtime import ConfigHolder

__all__ = ["ControlAgent", "load_cached_snapshot"]

log = logging.getLogger("plait.proxy.agent")

HEARTBEAT_INTERVAL = 1.0
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
    ) -> None:
        self.address = address
        self.node = node
        self.config = config
        self.addresses = dict(addresses)
        self.endpoint = endpoint
        self.cache_path = cache_path
        self.health = health
        self.on_applied = on_applied
        self.state = state or wire.ResourceState()
        self.connected = False
        self.last_error: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._rng = random.Random()

    async def run(self) -> None:
        """Stay connected until cancelled."""
        backoff = BACKOFF_INITIAL
        while True:
            try:
                await self._session()
                backoff = BACKOFF_INITIAL  # a session that got going resets the back-off
            except (OSError, TimeoutError, wire.FrameError, asyncio.IncompleteReadError) as exc:
                self.last_error = str(exc) or type(exc).__name__
            finally:
                self.connected = False
                self._writer = None
            # Full jitter (AWS architecture blog): spreads 1,000 reconnecting proxies.
            await asyncio.sleep(self._rng.uniform(0, backoff))
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _session(self) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(*self.address, limit=256 * 1024)
        self._writer = writer
        endpoint = {"address": self.endpoint[0], "port": self.endpoint[1]} if self.endpoint else None
        health = self.health.status if self.health else "unknown"
        self._send(wire.hello(node_dict(self.node), self.addresses, endpoint, self.state.version, health))
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
        last_health = self.health.status if self.health else "unknown"
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            status = self.health.status if self.health else "unknown"
            if status != last_health:
                self._send({"type": "health", "health": status})
                last_health = status
            self._send({"type": "heartbeat"})

    def _send(self, message: Mapping[str, Any]) -> None:
        if self._writer is not None and not self._writer.transport.is_closing():
            self._writer.write(wire.encode(message))

    def _on_message(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        version = str(message.get("version", ""))
        if kind == "snapshot":
            new_state = wire.ResourceState.from_snapshot_dict(version, message)
        elif kind == "delta":
            if str(message.get("base")) != self.state.version:
                self._send({"type": "nack", "version": version, "reason": "base",
                            "error": f"delta base {message.get('base')} != applied {self.state.version}"})
                return
            try:
                new_state = self.state.apply_delta(message)
            except (ValueError, KeyError, TypeError) as exc:
                self._nack(version, str(exc))
                return
        else:
            return
        try:
            snapshot = Snapshot.from_dict(new_state.to_snapshot_dict(node_dict(self.node)))
        except (SnapshotError, ValueError, TypeError) as exc:
            self._nack(version, str(exc))
            return
        self.config.apply(snapshot)
        self.state = new_state
        self._write_cache(new_state)
        self._send({"type": "ack", "version": version})
        if self.on_applied is not None:
            self.on_applied(snapshot)

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
