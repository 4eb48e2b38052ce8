"""The control plane's store: revisioned keys and watches with etcd's semantics.

Theory of operation. Every write (a put, a delete, or a txn of several) commits one new
revision, numbered 1, 2, 3, ... without gaps; the changes of a txn share its revision. Each key
carries etcd's create_revision, mod_revision and version. The history is a log of Events per
revision: a watcher replays it from any revision not yet compacted, then follows live writes.

The embedded stores (MemoryStore here, SqliteStore in store_sqlite) run in one asyncio loop and
never await inside a write, so a write, its revision and its fan-out to live watchers are one
uninterrupted step. A watcher reads the log up to the current revision and subscribes without
awaiting in between, so it can neither miss nor repeat an event. Each live watcher has a bounded
queue: one that falls behind is ended with StoreError and re-lists, rather than block writers
or grow memory. An etcd store for several control-plane replicas implements the same Protocol.

Errors::

    StoreError        the store cannot serve the call: closed, I/O failure, watcher fell behind
     +-- Compacted    the history asked for is gone; .revision is the oldest revision still kept
     +-- Conflict     an expected mod_revision did not match; nothing was written
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from bisect import bisect_left, insort
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

__all__ = [
    "HISTORY_REVISIONS",
    "WATCH_QUEUE_EVENTS",
    "Compacted",
    "Conflict",
    "EmbeddedStore",
    "Event",
    "KeyValue",
    "MemoryStore",
    "Store",
    "StoreError",
    "prefix_end",
]

# A watcher that reconnects within this many writes resumes from the log; further behind, a
# re-list is cheaper than keeping the log. Auto-compaction runs every tenth of it.
HISTORY_REVISIONS = 10_000
# A live watcher this many events behind is ended (it re-lists): a few MB at most per watcher.
WATCH_QUEUE_EVENTS = 10_000
# Revisions read from the log per replay step, so a replay never loads the whole history.
REPLAY_CHUNK = 1_000


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key's current value and etcd's bookkeeping for it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int  # number of puts since creation (etcd's version)


@dataclass(frozen=True, slots=True)
class Event:
    """One change to one key, as a watcher sees it."""

    type: str  # "PUT" | "DELETE"
    key: str
    value: bytes  # b"" for DELETE
    revision: int  # the revision of this change
    prev_value: bytes | None  # None when a PUT created the key


class StoreError(Exception):
    """The store cannot serve the call (closed, I/O failure, watcher fell behind)."""


class Compacted(StoreError):
    """The requested history is compacted away; the caller re-lists and watches anew."""

    def __init__(self, revision: int) -> None:
        super().__init__(f"history compacted; the oldest revision kept is {revision}")
        self.revision = revision  # the oldest revision still available


class Conflict(StoreError):
    """An expected mod_revision did not match (etcd's failed compare); nothing was written."""


class Store(Protocol):
    """A revisioned key-value store with etcd's semantics; see the module docstring."""

    async def get(self, key: str) -> KeyValue | None:
        """The key's current value, or None."""
        ...

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Keys under prefix sorted by key, and the revision they were read at."""
        ...

    async def put(self, key: str, value: bytes, *, expect_mod_revision: int | None = None) -> int:
        """Set key (even to the same value) and return the new revision; expect 0: create only."""
        ...

    async def delete(self, key: str, *, expect_mod_revision: int | None = None) -> int | None:
        """Delete key and return the new revision, or None (no revision used) if it was absent."""
        ...

    async def txn(
        self, ops: Sequence[tuple[str, bytes | None]], *, expect: Mapping[str, int] | None = None
    ) -> int:
        """Apply puts (bytes) and deletes (None) atomically under one revision and return it."""
        ...

    async def revision(self) -> int:
        """The current revision: 0 for a new, empty store."""
        ...

    def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[list[Event], None]:
        """Changes under prefix from start_revision on, one batch per revision, until closed."""
        ...

    async def compact(self, revision: int) -> None:
        """Forget the history before revision."""
        ...

    async def aclose(self) -> None:
        """Release the store and end its watchers."""
        ...


def prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with prefix (None: no bound), as etcd's."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


class _Watcher:
    """One live watcher's bounded queue: filled by the writer, drained by its watch()."""

    __slots__ = ("batches", "closed", "events", "fell_behind", "prefix", "wake")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.batches: deque[list[Event]] = deque()
        self.events = 0  # events queued in batches
        self.fell_behind = False
        self.closed = False
        self.wake = asyncio.Event()

    async def next(self) -> list[Event] | None:
        """The next batch; None once the store is closed; StoreError if it fell behind."""
        while not self.batches:
            if self.fell_behind:
                raise StoreError("watcher fell behind")
            if self.closed:
                return None
            self.wake.clear()
            await self.wake.wait()
        batch = self.batches.popleft()
        self.events -= len(batch)
        return batch


class EmbeddedStore(Store, ABC):
    """The write path, watches and compaction shared by the stores that live in this process.

    A subclass keeps the data (_lookup, _scan, _history) and commits one revision atomically
    (_commit, _forget, inside _transaction). Whoever opens a store closes it with aclose(),
    which ends its watchers; a cancelled watcher unsubscribes itself.
    """

    replay_chunk = REPLAY_CHUNK

    def __init__(
        self,
        *,
        revision: int = 0,
        oldest: int = 1,
        history: int = HISTORY_REVISIONS,
        watch_queue: int = WATCH_QUEUE_EVENTS,
    ) -> None:
        self._revision = revision
        self._oldest = oldest  # the oldest revision still in the log
        self._keep = history  # revisions of history auto-compaction keeps
        self._compact_every = max(1, history // 10)
        self._watch_queue = watch_queue
        self._watchers: set[_Watcher] = set()
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def get(self, key: str) -> KeyValue | None:
        self._check_open()
        return self._lookup(key)

    async def range(self, prefix: str) -> tuple[list[KeyValue], int]:
        self._check_open()
        return self._scan(prefix), self._revision

    async def put(self, key: str, value: bytes, *, expect_mod_revision: int | None = None) -> int:
        expect = None if expect_mod_revision is None else {key: expect_mod_revision}
        return await self.txn([(key, value)], expect=expect)

    async def delete(self, key: str, *, expect_mod_revision: int | None = None) -> int | None:
        expect = None if expect_mod_revision is None else {key: expect_mod_revision}
        return self._write([(key, None)], expect)

    async def txn(
        self, ops: Sequence[tuple[str, bytes | None]], *, expect: Mapping[str, int] | None = None
    ) -> int:
        revision = self._write(ops, expect)
        # Like etcd, a txn that changes nothing (only absent deletes) uses no revision.
        return self._revision if revision is None else revision

    async def revision(self) -> int:
        self._check_open()
        return self._revision

    async def watch(self, prefix: str, start_revision: int) -> AsyncGenerator[list[Event], None]:
        self._check_open()
        start = max(start_revision, 1)  # 0 replays everything, as 1 does
        while start <= self._revision:
            if start < self._oldest:
                raise Compacted(self._oldest)
            end = min(start + self.replay_chunk, self._revision + 1)
            batches = self._history(prefix, start, end)
            start = end
            for batch in batches:
                yield batch
            if self._closed:
                return
        # Caught up: no await since the loop's last check, so no write fell in between.
        watcher = _Watcher(prefix)
        self._watchers.add(watcher)
        try:
            while (live := await watcher.next()) is not None:
                if live[0].revision >= start:  # skip writes before a future start_revision
                    yield live
        finally:
            self._watchers.discard(watcher)

    async def compact(self, revision: int) -> None:
        self._check_open()
        if revision > self._revision:
            raise StoreError(f"cannot compact to {revision}: the store is at {self._revision}")
        self._compact_to(revision)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watcher in self._watchers:
            watcher.closed = True
            watcher.wake.set()
        self._watchers.clear()
        self._release()

    def _write(
        self, ops: Sequence[tuple[str, bytes | None]], expect: Mapping[str, int] | None
    ) -> int | None:
        """Commit ops as one revision and tell the watchers; None if nothing changed."""
        self._check_open()
        _check_ops(ops)
        revision = self._revision + 1
        events: list[Event] = []
        puts: list[KeyValue] = []
        deletes: list[str] = []
        with self._transaction():
            for key, want in (expect or {}).items():
                current = self._lookup(key)
                have = current.mod_revision if current else 0
                if have != want:
                    raise Conflict(f"{key}: mod_revision is {have}, expected {want}")
            for key, value in sorted(ops, key=lambda op: op[0]):  # events in key order
                old = self._lookup(key)
                if value is not None:
                    events.append(Event("PUT", key, value, revision, old.value if old else None))
                    created, version = (old.create_revision, old.version) if old else (revision, 0)
                    puts.append(KeyValue(key, value, created, revision, version + 1))
                elif old is not None:
                    events.append(Event("DELETE", key, b"", revision, old.value))
                    deletes.append(key)
            if not events:
                return None
            self._commit(revision, events, puts, deletes)
        self._revision = revision
        self._publish(events)
        if revision % self._compact_every == 0:
            self._compact_to(revision - self._keep + 1)
        return revision

    def _publish(self, events: list[Event]) -> None:
        """Queue a committed revision for each live watcher it concerns, never blocking."""
        for watcher in list(self._watchers):
            batch = [e for e in events if e.key.startswith(watcher.prefix)]
            if not batch:
                continue
            if watcher.events + len(batch) > self._watch_queue:
                # Drop its queue now so memory stays bounded; it raises when next read.
                watcher.batches.clear()
                watcher.fell_behind = True
                self._watchers.discard(watcher)
            else:
                watcher.batches.append(batch)
                watcher.events += len(batch)
            watcher.wake.set()

    def _compact_to(self, revision: int) -> None:
        if revision > self._oldest:
            self._forget(revision)
            self._oldest = revision

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("store is closed")

    def _transaction(self) -> AbstractContextManager[object]:
        """Make the reads and _commit of one write a single atomic transaction."""
        return nullcontext()

    def _release(self) -> None:
        """Free the storage; called once by aclose()."""

    @abstractmethod
    def _lookup(self, key: str) -> KeyValue | None: ...

    @abstractmethod
    def _scan(self, prefix: str) -> list[KeyValue]: ...

    @abstractmethod
    def _history(self, prefix: str, start: int, end: int) -> list[list[Event]]:
        """The log's batches for revisions start <= r < end, filtered to prefix, none empty."""

    @abstractmethod
    def _commit(
        self, revision: int, events: list[Event], puts: list[KeyValue], deletes: list[str]
    ) -> None: ...

    @abstractmethod
    def _forget(self, revision: int) -> None:
        """Drop the log before revision (self._oldest is updated by the caller)."""


def _check_ops(ops: Sequence[tuple[str, bytes | None]]) -> None:
    """Refuse what would corrupt the store: empty or repeated keys, values that are not bytes."""
    if len({key for key, _ in ops}) != len(ops):
        raise ValueError("a txn may change each key only once")  # as etcd
    for key, value in ops:
        if not key:
            raise ValueError("empty key")
        if value is not None and type(value) is not bytes:
            raise TypeError(f"{key}: value must be bytes, not {type(value).__name__}")


class MemoryStore(EmbeddedStore):
    """A store in this process's memory, for tests and `plait up`; gone when the process exits."""

    def __init__(
        self, *, history: int = HISTORY_REVISIONS, watch_queue: int = WATCH_QUEUE_EVENTS
    ) -> None:
        super().__init__(history=history, watch_queue=watch_queue)
        self._kvs: dict[str, KeyValue] = {}
        self._keys: list[str] = []  # sorted, so a prefix is two bisects and a slice
        self._log: list[list[Event]] = []  # _log[i] holds revision self._oldest + i

    def _lookup(self, key: str) -> KeyValue | None:
        return self._kvs.get(key)

    def _scan(self, prefix: str) -> list[KeyValue]:
        end = prefix_end(prefix)
        lo = bisect_left(self._keys, prefix)
        hi = len(self._keys) if end is None else bisect_left(self._keys, end)
        return [self._kvs[key] for key in self._keys[lo:hi]]

    def _history(self, prefix: str, start: int, end: int) -> list[list[Event]]:
        batches = self._log[start - self._oldest : end - self._oldest]
        filtered = ([e for e in batch if e.key.startswith(prefix)] for batch in batches)
        return [batch for batch in filtered if batch]  # fresh lists: callers may mutate them

    def _commit(
        self, revision: int, events: list[Event], puts: list[KeyValue], deletes: list[str]
    ) -> None:
        for kv in puts:
            if kv.key not in self._kvs:
                insort(self._keys, kv.key)
            self._kvs[kv.key] = kv
        for key in deletes:
            del self._kvs[key]
            del self._keys[bisect_left(self._keys, key)]
        self._log.append(events)

    def _forget(self, revision: int) -> None:
        del self._log[: revision - self._oldest]
