"""The mesh's configuration in the store: apply, get, list, delete, watch and analyze resources.

Each resource is one key, `/config/<Kind>/<namespace>/<name>`, holding its canonical JSON (see
`plait.control.kinds`), so re-applying an identical resource is recognised as `unchanged` and
uses no revision. An apply is one store txn guarded by the mod_revisions it read: all of it
lands under one revision or none of it does; a concurrent writer makes it re-read and retry.
Owns nothing: the caller owns the store and closes it.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from plait.config import resources as r
from plait.config.errors import ConfigError
from plait.control.analysis import Finding, Labelled, analyze
from plait.control.kinds import (
    API_VERSIONS,
    UnknownKind,
    decode,
    encode,
    group_of,
    resolve_kind,
)
from plait.control.store import Conflict, Event, KeyValue, Store, StoreError

__all__ = [
    "CONFIG_PREFIX",
    "REGISTRY_PREFIX",
    "ApplyResult",
    "ConfigService",
    "Finding",
    "StoredResource",
    "UnknownKind",
    "key_of",
    "resolve_kind",
]

log = logging.getLogger("plait.control.config")

CONFIG_PREFIX = "/config/"
REGISTRY_PREFIX = "/registry/"
# Each retry re-reads what a concurrent writer changed; more than a few means a hot loop.
APPLY_ATTEMPTS = 5

Action = Literal["created", "configured", "unchanged"]


def key_of(kind: str, namespace: str, name: str) -> str:
    """The store key of a resource."""
    return f"{CONFIG_PREFIX}{kind}/{namespace}/{name}"


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an apply did to one resource, as `kubectl apply` reports it."""

    kind: str
    namespace: str
    name: str
    action: Action
    revision: int  # the resource's mod_revision after the apply
    api_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version or API_VERSIONS[self.kind],
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "action": self.action,
            "revision": self.revision,
        }

    def __str__(self) -> str:
        """kubectl's line: `httproute.gateway.networking.k8s.io/reviews created`."""
        return f"{self.kind.lower()}.{group_of(self.kind)}/{self.name} {self.action}"


@dataclass(frozen=True, slots=True)
class StoredResource:
    """A resource as stored: the model, its canonical data and the store's bookkeeping.

    Shared with other readers (ConfigService caches it): treat `data` as read-only.
    """

    resource: r.Resource
    data: dict[str, Any]
    revision: int  # mod_revision: the revision of its last change
    create_revision: int
    version: int  # number of changes since it was created

    @property
    def kind(self) -> str:
        return self.resource.kind

    @property
    def namespace(self) -> str:
        return self.resource.metadata.namespace

    @property
    def name(self) -> str:
        return self.resource.metadata.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "revision": self.revision,
            "createRevision": self.create_revision,
            "version": self.version,
            "object": self.data,
        }


class ConfigService:
    """Resources in a Store: the one place that knows their keys and stored form."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # Parsed resources by key, reused while their mod_revision holds: the push server reads
        # everything on each change, and validating thousands of unchanged models is the cost.
        self._parsed: dict[str, StoredResource] = {}

    async def apply(
        self, resources: Sequence[r.Resource], *, dry_run: bool = False
    ) -> builtins.list[ApplyResult]:
        """Create or update all of them in one txn; unchanged ones are not rewritten.

        A resource repeated in `resources` is applied in order (the last one wins), as kubectl
        would. `dry_run` reports what would happen (changed ones with revision 0) and writes
        nothing. Raises StoreError if concurrent writers keep changing the same keys.
        """
        # Encoding validates each resource again: CPU work kept off the shared event loop.
        items = await asyncio.to_thread(lambda: [(_key(x), _encoded(x), x) for x in resources])
        for _ in range(APPLY_ATTEMPTS):
            try:
                return await self._apply_once(items, dry_run)
            except Conflict:
                continue
        raise StoreError("apply: the same resources kept changing concurrently; try again")

    async def _apply_once(
        self, items: builtins.list[tuple[str, bytes, r.Resource]], dry_run: bool
    ) -> builtins.list[ApplyResult]:
        stored: dict[str, KeyValue | None] = {}
        for key, _, _ in items:
            if key not in stored:
                stored[key] = await self.store.get(key)
        pending: dict[str, bytes] = {}
        planned: builtins.list[tuple[r.Resource, Action, int | None]] = []
        for key, value, resource in items:
            kv = stored[key]
            before = pending.get(key, kv.value if kv else None)
            if before == value:
                revision = None if key in pending else kv.mod_revision if kv else None
                planned.append((resource, "unchanged", revision))
                continue
            action: Action = "created" if before is None else "configured"
            planned.append((resource, action, None))
            pending[key] = value
        revision = 0  # dry run: the changes have no revision
        if pending and not dry_run:
            expect = {k: (kv.mod_revision if (kv := stored[k]) else 0) for k in pending}
            revision = await self.store.txn(list(pending.items()), expect=expect)
        return [
            ApplyResult(
                x.kind,
                x.metadata.namespace,
                x.metadata.name,
                action,
                revision if rev is None else rev,
                x.api_version,
            )
            for x, action, rev in planned
        ]

    async def get(self, kind: str, namespace: str, name: str) -> StoredResource | None:
        """One resource, or None; `kind` may be any name `resolve_kind` knows."""
        kv = await self.store.get(key_of(resolve_kind(kind), namespace, name))
        return None if kv is None else self._parse(kv)

    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> builtins.list[StoredResource]:
        """Resources sorted by kind, namespace and name, optionally of one kind or namespace."""
        items, _ = await self.list_at(kind, namespace)
        return items

    async def list_at(
        self, kind: str | None = None, namespace: str | None = None
    ) -> tuple[builtins.list[StoredResource], int]:
        """`list`, plus the revision it was read at (to watch from the next one)."""
        prefix = CONFIG_PREFIX
        if kind is not None:
            prefix = f"{CONFIG_PREFIX}{resolve_kind(kind)}/"
            if namespace is not None:
                prefix += f"{namespace}/"
        kvs, revision = await self.store.range(prefix)
        found = [x for x in map(self._parse, kvs) if x is not None]
        if prefix == CONFIG_PREFIX:  # a full read: forget what was deleted
            self._parsed = {key_of(x.kind, x.namespace, x.name): x for x in found}
        if namespace is not None:
            found = [x for x in found if x.namespace == namespace]
        return found, revision

    async def delete(self, kind: str, namespace: str, name: str) -> int | None:
        """Delete one resource: the revision of the deletion, or None if it did not exist."""
        return await self.store.delete(key_of(resolve_kind(kind), namespace, name))

    async def resources(self) -> tuple[builtins.list[r.Resource], int]:
        """Every resource, parsed, and the revision they were read at (for the push server)."""
        items, revision = await self.list_at()
        return [x.resource for x in items], revision

    async def analyze(self) -> builtins.list[Finding]:
        """Findings over everything stored, including workloads proxies registered."""
        resources, _ = await self.resources()
        entries, _ = await self.store.range(REGISTRY_PREFIX)
        registered = [w for w in map(_registered, entries) if w is not None]
        return await asyncio.to_thread(analyze, resources, registered)  # off the event loop

    async def revision(self) -> int:
        return await self.store.revision()

    def _parse(self, kv: KeyValue) -> StoredResource | None:
        cached = self._parsed.get(kv.key)
        if cached is not None and cached.revision == kv.mod_revision:
            return cached
        found = _stored_or_none(kv)
        if found is not None:
            self._parsed[kv.key] = found
        return found

    def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[builtins.list[Event], None]:
        """The store's watch: batches of events under `prefix` from `start_revision` on."""
        return self.store.watch(prefix, start_revision)


def _key(resource: r.Resource) -> str:
    return key_of(resource.kind, resource.metadata.namespace, resource.metadata.name)


def _encoded(resource: r.Resource) -> bytes:
    """The stored form, checked to read back as the same model (or nothing is stored)."""
    value = encode(resource)
    try:
        same = decode(resource.kind, value) == resource
    except ValueError as e:
        same, why = False, str(e)
    else:
        why = "it reads back differently"
    if not same:  # a model field the stored form does not handle yet: loud, never lossy
        where = f"{resource.kind} {resource.metadata.namespace}/{resource.metadata.name}"
        raise ConfigError(
            f"{where} cannot be stored faithfully (a plait bug, please report it): {why}"
        )
    return value


def _stored(kv: KeyValue) -> StoredResource:
    kind = kv.key[len(CONFIG_PREFIX) :].partition("/")[0]
    resource = decode(kind, kv.value)
    data = json.loads(kv.value)
    return StoredResource(resource, data, kv.mod_revision, kv.create_revision, kv.version)


def _stored_or_none(kv: KeyValue) -> StoredResource | None:
    """A stored resource; one that no longer validates is logged and skipped, not fatal."""
    try:
        return _stored(kv)
    except (KeyError, ValueError) as e:  # an unknown kind, or invalid under today's models
        log.warning("skipping %s: it no longer validates: %s", kv.key, e)
        return None


def _registered(kv: KeyValue) -> Labelled | None:
    """A registry entry's namespace and labels (entries without labels select nothing)."""
    try:
        data = json.loads(kv.value)
    except ValueError:
        return None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        return None
    namespace = data.get("namespace")
    return Labelled(namespace if isinstance(namespace, str) else None, labels)
