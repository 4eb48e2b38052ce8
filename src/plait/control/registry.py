"""Service registry: the workloads proxies registered, kept in the store under /registry/.

A proxy registers its workload when it connects (service, namespace, labels, the address
where its inbound listener is reachable, its app's health). The entry is a store key, so it
survives a control-plane restart and every change is a revision the push server sees. An
entry goes away when its proxy says `bye`, or after `grace` seconds without its connection
(or heartbeats); a reconnect within the grace keeps it. After a restart of the control
plane, every stored entry gets the same grace to reconnect.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from plait.control.compiler import Instance
from plait.control.store import Store

__all__ = ["PREFIX", "Registry", "WorkloadEntry"]

PREFIX = "/registry/"
# A proxy's longest sleep between reconnect attempts (plait.proxy.agent.BACKOFF_MAX; not
# imported: the control plane does not load the proxy package).
RECONNECT_BACKOFF_MAX = 5.0


@dataclass(frozen=True, slots=True)
class WorkloadEntry:
    name: str
    service: str
    namespace: str
    labels: Mapping[str, str]
    address: str
    port: int
    health: str = "unknown"  # healthy | unhealthy | unknown (no check configured yet)
    identity: str = ""  # the SPIFFE ID its proxy proved; callers verify it (mTLS)
    # "h2": its proxy turns HTTP/1.1 requests carried over HTTP/2 back into HTTP/1.1, so
    # callers may multiplex them (Linkerd's protocol hint); "": send HTTP/1.1 as is.
    protocol_hint: str = ""

    @property
    def key(self) -> str:
        return f"{PREFIX}{self.namespace}/{self.name}"

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "name": self.name,
                "service": self.service,
                "namespace": self.namespace,
                "labels": dict(self.labels),
                "address": self.address,
                "port": self.port,
                "health": self.health,
                "identity": self.identity,
                "protocol_hint": self.protocol_hint,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> WorkloadEntry:
        d: dict[str, Any] = json.loads(raw)
        return cls(
            d["name"],
            d["service"],
            d["namespace"],
            d.get("labels", {}),
            d["address"],
            int(d["port"]),
            d.get("health", "unknown"),
            d.get("identity", ""),
            d.get("protocol_hint", ""),
        )


class Registry:
    """Owns the expiry timers of registered workloads; `aclose()` cancels them."""

    def __init__(self, store: Store, grace: float = 5.0) -> None:
        self.store = store
        self.grace = grace
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._pending: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        """After a (re)start: every stored entry must reconnect within the grace, plus the
        longest reconnect back-off a proxy may be sleeping in when the control plane comes
        back (so a healthy endpoint is never dropped, and its callers never see UH, only
        because its proxy's next attempt was due a few seconds later)."""
        items, _ = await self.store.range(PREFIX)
        for kv in items:
            self._schedule_expiry(kv.key, self.grace + RECONNECT_BACKOFF_MAX)

    async def register(self, entry: WorkloadEntry) -> None:
        self._cancel_expiry(entry.key)
        current = await self.store.get(entry.key)
        raw = entry.to_json()
        if current is None or current.value != raw:
            await self.store.put(entry.key, raw)

    async def deregister(self, namespace: str, name: str) -> None:
        key = f"{PREFIX}{namespace}/{name}"
        self._cancel_expiry(key)
        await self.store.delete(key)

    def disconnected(self, namespace: str, name: str) -> None:
        self._schedule_expiry(f"{PREFIX}{namespace}/{name}")

    async def entries(self) -> list[WorkloadEntry]:
        items, _ = await self.store.range(PREFIX)
        out = []
        for kv in items:
            try:
                out.append(WorkloadEntry.from_json(kv.value))
            except (ValueError, KeyError, TypeError):
                continue  # a damaged entry must not stop the mesh; it expires like others
        return out

    async def instances(self) -> list[Instance]:
        """Endpoints for the compiler: registered workloads whose app is not unhealthy."""
        return [
            Instance(
                e.name,
                e.service,
                e.namespace,
                e.labels,
                e.address,
                e.port,
                e.identity,
                e.protocol_hint,
            )
            for e in await self.entries()
            if e.health != "unhealthy"
        ]

    def _schedule_expiry(self, key: str, after: float | None = None) -> None:
        self._cancel_expiry(key)
        loop = asyncio.get_running_loop()
        self._expiry[key] = loop.call_later(
            self.grace if after is None else after, self._expire, key
        )

    def _cancel_expiry(self, key: str) -> None:
        handle = self._expiry.pop(key, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, key: str) -> None:
        self._expiry.pop(key, None)
        task = asyncio.get_running_loop().create_task(self._delete(key))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _delete(self, key: str) -> None:
        await self.store.delete(key)

    async def aclose(self) -> None:
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
