"""SqliteStore: the Store in one SQLite file, the control plane's embedded default.

SQLite gives one transactional file from the standard library. WAL lets a reader (a backup, the
sqlite3 shell) work while we write; synchronous=NORMAL in WAL mode never corrupts the file, and
only a power loss (not a process crash) can lose the last commits.

The sqlite3 calls run synchronously on the event loop: each is sub-millisecond on a local file,
there is one writer (this process), and it keeps a write, its revision and its fan-out to the
watchers one uninterrupted step, which watch() relies on (see store.py) -- simpler and safer
than a thread, a lock and a hand-off. Each write is one BEGIN IMMEDIATE ... COMMIT transaction.
One process owns the file; replicas of the control plane use the etcd store instead.

Schema (docs/store.md)::

    kv(key PRIMARY KEY, value, create_revision, mod_revision, version): the current state
    log(revision, key, type, value, prev_value), PRIMARY KEY (revision, key): the history
    meta(name PRIMARY KEY, value): the schema version, revision and oldest (compaction point)
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import groupby
from operator import attrgetter
from pathlib import Path

from plait.control.store import (
    HISTORY_REVISIONS,
    WATCH_QUEUE_EVENTS,
    EmbeddedStore,
    Event,
    KeyValue,
    StoreError,
    prefix_end,
)

__all__ = ["SqliteStore"]

SCHEMA_VERSION = 1
SCHEMA = f"""
BEGIN;
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS log (
    revision INTEGER NOT NULL,
    key TEXT NOT NULL,
    type TEXT NOT NULL,
    value BLOB NOT NULL,
    prev_value BLOB,
    PRIMARY KEY (revision, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta VALUES ('schema', {SCHEMA_VERSION}), ('revision', 0), ('oldest', 1);
COMMIT;
"""
KV_COLUMNS = "key, value, create_revision, mod_revision, version"  # KeyValue's field order
EVENT_COLUMNS = "type, key, value, revision, prev_value"  # Event's field order


@contextmanager
def _sqlite_errors(what: str) -> Iterator[None]:
    """Translate sqlite3's errors into the store's one error tree."""
    try:
        yield
    except sqlite3.Error as e:
        raise StoreError(f"{what}: {e}") from e


class SqliteStore(EmbeddedStore):
    """A Store persisted in one SQLite file; open with `await SqliteStore.open(path)`."""

    def __init__(self, db: sqlite3.Connection, path: Path, **kwargs: int) -> None:
        """Wrap an opened, migrated connection; use open() instead."""
        super().__init__(**kwargs)
        self._db = db
        self._path = path

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        history: int = HISTORY_REVISIONS,
        watch_queue: int = WATCH_QUEUE_EVENTS,
    ) -> SqliteStore:
        """Open (or create) the store at path; the caller owns it and must aclose() it."""
        path = Path(path)
        with _sqlite_errors(str(path)):
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None)  # we BEGIN and COMMIT ourselves
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")
                db.executescript(SCHEMA)
                meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
                if meta["schema"] != SCHEMA_VERSION:
                    raise StoreError(f"{path}: unknown schema version {meta['schema']}")
            except BaseException:
                db.close()
                raise
        return cls(
            db,
            path,
            revision=meta["revision"],
            oldest=meta["oldest"],
            history=history,
            watch_queue=watch_queue,
        )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        with _sqlite_errors(str(self._path)):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT may leave it open
                    self._db.execute("ROLLBACK")
                raise

    def _lookup(self, key: str) -> KeyValue | None:
        with _sqlite_errors(str(self._path)):
            row = self._db.execute(f"SELECT {KV_COLUMNS} FROM kv WHERE key = ?", (key,)).fetchone()
        return KeyValue(*row) if row else None

    def _scan(self, prefix: str) -> list[KeyValue]:
        end = prefix_end(prefix)
        sql = f"SELECT {KV_COLUMNS} FROM kv WHERE key >= ?"
        sql, args = (sql, (prefix,)) if end is None else (f"{sql} AND key < ?", (prefix, end))
        with _sqlite_errors(str(self._path)):
            rows = self._db.execute(f"{sql} ORDER BY key", args).fetchall()
        return [KeyValue(*row) for row in rows]

    def _history(self, prefix: str, start: int, end: int) -> list[list[Event]]:
        key_end = prefix_end(prefix)
        sql = f"SELECT {EVENT_COLUMNS} FROM log WHERE revision >= ? AND revision < ? AND key >= ?"
        args: tuple[object, ...] = (start, end, prefix)
        if key_end is not None:
            sql, args = f"{sql} AND key < ?", (*args, key_end)
        with _sqlite_errors(str(self._path)):
            rows = self._db.execute(f"{sql} ORDER BY revision, key", args).fetchall()
        events = [Event(*row) for row in rows]
        return [list(batch) for _, batch in groupby(events, key=attrgetter("revision"))]

    def _commit(
        self, revision: int, events: list[Event], puts: list[KeyValue], deletes: list[str]
    ) -> None:
        db = self._db
        db.executemany(
            "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?)",
            [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in puts],
        )
        db.executemany("DELETE FROM kv WHERE key = ?", [(key,) for key in deletes])
        db.executemany(
            "INSERT INTO log (revision, key, type, value, prev_value) VALUES (?, ?, ?, ?, ?)",
            [(e.revision, e.key, e.type, e.value, e.prev_value) for e in events],
        )
        db.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))

    def _forget(self, revision: int) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM log WHERE revision < ?", (revision,))
            self._db.execute("UPDATE meta SET value = ? WHERE name = 'oldest'", (revision,))

    def _release(self) -> None:
        with _sqlite_errors(str(self._path)):
            self._db.close()
