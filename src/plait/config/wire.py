"""The push protocol between control plane and proxies: frames, messages, delta state (pure).

Theory of operation (Istio's delta xDS, simplified). A proxy opens one TCP stream to the
control plane and says `hello` (who it is, where it listens, its app's health, the version
it already runs). The control plane answers with a full `snapshot`, then sends `delta`s:
only the clusters and routes that changed, each keyed by `namespace/name`. Every message
from the control plane carries a `version`; a delta also names its `base`, the version it
applies on. The proxy applies it to its last good state, validates the result whole
(`Snapshot.from_dict`), swaps it in and answers `ack`, or answers `nack` with the error and
keeps the last good state. A delta whose base is not the proxy's version is refused with
`nack` reason `base`; the control plane then sends a full snapshot. The proxy also sends
`health` when its app's health changes, `heartbeat` every second, and `bye` before a
graceful exit (its endpoint is then withdrawn at once instead of after the grace period).

Framing: a 4-byte big-endian length, then that many bytes of UTF-8 JSON.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import Any

__all__ = [
    "KINDS",
    "MAX_FRAME",
    "WORKLOAD_FIELDS",
    "FrameError",
    "FrameReader",
    "ResourceState",
    "diff",
    "encode",
    "encode_raw",
    "hello",
    "resource_key",
]

# 64 MiB: a full snapshot of 10,000 endpoints is a few MiB; anything far larger is an attack.
MAX_FRAME = 64 * 1024 * 1024
_LENGTH = struct.Struct(">I")

KINDS = ("clusters", "routes")
# Snapshot fields compiled for one workload, not shared by every proxy.
WORKLOAD_FIELDS = ("policies", "mtls_mode")


class FrameError(ValueError):
    """The peer sent bytes that are not a valid frame; the connection must be dropped."""


def encode(message: Mapping[str, Any]) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    return _LENGTH.pack(len(payload)) + payload


def encode_raw(payload: bytes) -> bytes:
    """Frame an already-serialised message (the control plane serialises a push once)."""
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Bytes in, decoded messages out."""

    __slots__ = ("_buffer", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        buf = self._buffer
        buf += data
        out: list[dict[str, Any]] = []
        while len(buf) >= 4:
            (length,) = _LENGTH.unpack_from(buf)
            if length > self.max_frame:
                raise FrameError(f"frame of {length} bytes exceeds the {self.max_frame} limit")
            if len(buf) < 4 + length:
                break
            payload = bytes(buf[4 : 4 + length])
            del buf[: 4 + length]
            try:
                message = json.loads(payload)
            except ValueError as exc:
                raise FrameError(f"frame is not JSON: {exc}") from None
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise FrameError("frame is not a message object with a 'type'")
            out.append(message)
        return out


def resource_key(kind: str, item: Mapping[str, Any]) -> str:
    """Clusters are keyed `ns/name`; a route per parent: `ns/name/ParentKind/parent`."""
    namespace = item.get("namespace", "default")
    if kind == "clusters":
        return f"{namespace}/{item['name']}"
    return f"{namespace}/{item['name']}/{item.get('parent_kind', 'Service')}/{item['parent_name']}"


class ResourceState:
    """The keyed clusters and routes one side believes the proxy holds.

    The control plane keeps one per connection (what it sent) to compute deltas; the proxy
    keeps one (what it applied) to apply them. Values are the snapshot dicts themselves.
    """

    __slots__ = ("version", "items", "workload")

    def __init__(
        self,
        version: str = "",
        items: dict[str, dict[str, dict[str, Any]]] | None = None,
        workload: Mapping[str, Any] | None = None,
    ) -> None:
        self.version = version
        self.items: dict[str, dict[str, dict[str, Any]]] = items or {k: {} for k in KINDS}
        # This proxy's own part (its policies and mTLS mode), sent in a `workload` message.
        self.workload: dict[str, Any] = dict(workload or {})

    @classmethod
    def from_snapshot_dict(cls, version: str, snapshot: Mapping[str, Any]) -> ResourceState:
        items = {kind: {resource_key(kind, x): x for x in snapshot.get(kind, [])} for kind in KINDS}
        workload = {k: snapshot[k] for k in WORKLOAD_FIELDS if k in snapshot}
        return cls(version, items, workload)

    def to_snapshot_dict(self, node: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "version": self.version,
            "node": dict(node),
            "clusters": [self.items["clusters"][k] for k in sorted(self.items["clusters"])],
            "routes": [self.items["routes"][k] for k in sorted(self.items["routes"])],
            **self.workload,
        }

    def copy(self) -> ResourceState:
        return ResourceState(
            self.version, {k: dict(v) for k, v in self.items.items()}, self.workload
        )

    def apply_delta(self, message: Mapping[str, Any]) -> ResourceState:
        """A new state with the delta applied (this one is untouched)."""
        new = self.copy()
        new.version = str(message["version"])
        for kind, values in (message.get("upsert") or {}).items():
            if kind not in KINDS:
                raise ValueError(f"delta upsert: unknown resource kind {kind!r}")
            for value in values:
                new.items[kind][resource_key(kind, value)] = value
        for kind, keys in (message.get("remove") or {}).items():
            if kind not in KINDS:
                raise ValueError(f"delta remove: unknown resource kind {kind!r}")
            for key in keys:
                new.items[kind].pop(key, None)
        return new


def diff(
    old: Mapping[str, Mapping[str, bytes]], new: Mapping[str, Mapping[str, bytes]]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Keys to upsert and to remove, per kind, between two {kind: {key: fingerprint}} maps."""
    upsert: dict[str, list[str]] = {}
    remove: dict[str, list[str]] = {}
    for kind in KINDS:
        before, after = old.get(kind, {}), new.get(kind, {})
        changed = [k for k, fp in after.items() if before.get(k) != fp]
        gone = [k for k in before if k not in after]
        if changed:
            upsert[kind] = changed
        if gone:
            remove[kind] = gone
    return upsert, remove


def hello(
    node: Mapping[str, Any],
    addresses: Mapping[str, str],
    endpoint: Mapping[str, Any] | None,
    version: str,
    health: str,
) -> dict[str, Any]:
    return {
        "type": "hello",
        "node": dict(node),
        "addresses": dict(addresses),
        "endpoint": dict(endpoint) if endpoint else None,
        "version": version,
        "health": health,
    }
