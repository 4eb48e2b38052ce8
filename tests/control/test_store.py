"""The store contract (etcd's semantics), run against MemoryStore and SqliteStore alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

import pytest

from plait.control import store as store_module
from plait.control.store import (
    Compacted,
    Conflict,
    EmbeddedStore,
    Event,
    KeyValue,
    MemoryStore,
    StoreError,
    prefix_end,
)
from plait.control.store_sqlite import SqliteStore

OpenStore = Callable[..., Awaitable[EmbeddedStore]]
Scenario = Callable[[EmbeddedStore], Awaitable[None]]


@pytest.fixture(params=["memory", "sqlite"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> OpenStore:
    """Opens a fresh store of each kind; options are the stores' keyword arguments."""

    async def open_(**options: int) -> EmbeddedStore:
        if request.param == "memory":
            return MemoryStore(**options)
        return await SqliteStore.open(tmp_path / "state" / "store.db", **options)

    return open_


def run(open_store: OpenStore, scenario: Scenario, **options: int) -> None:
    """Run scenario on a fresh store in its own event loop, with a deadline against hangs."""

    async def main() -> None:
        async with await open_store(**options) as store, asyncio.timeout(10):
            await scenario(store)

    asyncio.run(main())


async def take(watch: AsyncGenerator[list[Event], None], last: int) -> list[list[Event]]:
    """The batches of watch up to and including revision last; closes the watch."""
    batches = []
    async with asyncio.timeout(5):
        async for batch in watch:
            batches.append(batch)
            if batch[0].revision >= last:
                break
    await watch.aclose()
    return batches


def revisions(batches: list[list[Event]]) -> list[int]:
    return [batch[0].revision for batch in batches]


def test_public_api() -> None:
    assert sorted(store_module.__all__) == [
        "Compacted",
        "Conflict",
        "EmbeddedStore",
        "Event",
        "HISTORY_REVISIONS",
        "KeyValue",
        "MemoryStore",
        "Store",
        "StoreError",
        "WATCH_QUEUE_EVENTS",
        "prefix_end",
    ]


def test_prefix_end_bounds_every_key_with_the_prefix() -> None:
    assert prefix_end("/a/") == "/a0"
    assert prefix_end("/\U0010ffff") == "0"  # the last code point carries over
    assert prefix_end("") is None  # the whole key space


def test_revisions_increase_by_one_per_write(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        assert await store.revision() == 0
        assert await store.put("/a", b"1") == 1
        assert await store.put("/a", b"1") == 2  # an identical value still makes a revision
        assert await store.txn([("/b", b"2"), ("/c", b"3")]) == 3
        assert await store.delete("/a") == 4
        assert await store.revision() == 4

    run(open_store, scenario)


def test_keys_carry_create_and_mod_revision_and_version(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        await store.put("/k", b"one")
        await store.put("/other", b"x")
        await store.put("/k", b"two")
        assert await store.get("/k") == KeyValue("/k", b"two", 1, 3, 2)
        await store.delete("/k")
        assert await store.get("/k") is None
        await store.put("/k", b"again")  # a new life: version restarts
        assert await store.get("/k") == KeyValue("/k", b"again", 5, 5, 1)

    run(open_store, scenario)


def test_range_is_sorted_by_key_and_isolates_prefixes(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        for key in ["/b", "/a/2", "/ab", "/a/1", "/a"]:
            await store.put(key, key.encode())
        kvs, revision = await store.range("/a/")
        assert [kv.key for kv in kvs] == ["/a/1", "/a/2"]  # not /ab, not /a
        assert revision == 5
        kvs, _ = await store.range("/a")
        assert [kv.key for kv in kvs] == ["/a", "/a/1", "/a/2", "/ab"]
        kvs, _ = await store.range("")
        assert [kv.key for kv in kvs] == ["/a", "/a/1", "/a/2", "/ab", "/b"]
        assert await store.range("/c/") == ([], 5)
        await store.put("/é/\U0010ffff", b"")  # beyond ASCII; an empty value is a value
        assert await store.range("/é/") == ([KeyValue("/é/\U0010ffff", b"", 6, 6, 1)], 6)

    run(open_store, scenario)


def test_put_with_expect_mod_revision(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        assert await store.put("/k", b"1", expect_mod_revision=0) == 1  # create only
        with pytest.raises(Conflict):
            await store.put("/k", b"2", expect_mod_revision=0)
        assert await store.put("/k", b"2", expect_mod_revision=1) == 2
        with pytest.raises(Conflict):
            await store.put("/k", b"3", expect_mod_revision=1)
        assert await store.revision() == 2
        assert await store.get("/k") == KeyValue("/k", b"2", 1, 2, 2)

    run(open_store, scenario)


def test_delete_of_an_absent_key_uses_no_revision(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        await store.put("/k", b"1")
        assert await store.delete("/nope") is None
        assert await store.delete("/nope", expect_mod_revision=0) is None
        with pytest.raises(Conflict):
            await store.delete("/k", expect_mod_revision=7)
        assert await store.revision() == 1
        assert await store.delete("/k", expect_mod_revision=1) == 2

    run(open_store, scenario)


def test_txn_is_atomic_under_one_revision(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        await store.put("/a", b"1")
        await store.put("/b", b"1")
        with pytest.raises(Conflict):
            await store.txn([("/a", b"2"), ("/c", b"2")], expect={"/a": 1, "/b": 1})
        assert await store.revision() == 2
        assert await store.get("/c") is None
        ops = [("/c", b"3"), ("/a", None), ("/absent", None), ("/b", b"3")]
        assert await store.txn(ops, expect={"/a": 1, "/c": 0}) == 3
        kvs, revision = await store.range("/")
        assert [(kv.key, kv.value, kv.mod_revision) for kv in kvs] == [
            ("/b", b"3", 3),
            ("/c", b"3", 3),
        ]
        assert revision == 3
        # Like etcd, a txn that changes nothing uses no revision and returns the current one.
        assert await store.txn([("/absent", None)]) == 3
        assert await store.revision() == 3

    run(open_store, scenario)


def test_txn_refuses_repeated_keys_and_values_that_are_not_bytes(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        with pytest.raises(ValueError, match="once"):
            await store.txn([("/a", b"1"), ("/a", None)])
        with pytest.raises(TypeError, match="bytes"):
            await store.put("/a", "text")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="empty key"):
            await store.put("", b"1")
        assert await store.revision() == 0

    run(open_store, scenario)


def test_watch_from_the_start_replays_history_then_streams_live(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        await store.put("/a", b"1")
        await store.txn([("/b", b"1"), ("/a", b"2")])
        await store.delete("/b")
        watches = [store.watch("/", 0), store.watch("/", 1)]
        for watch in watches:
            assert await anext(watch) == [Event("PUT", "/a", b"1", 1, None)]
            assert await anext(watch) == [
                Event("PUT", "/a", b"2", 2, b"1"),
                Event("PUT", "/b", b"1", 2, None),
            ]
            assert await anext(watch) == [Event("DELETE", "/b", b"", 3, b"1")]
        live = [asyncio.create_task(take(watch, 4)) for watch in watches]
        await asyncio.sleep(0)  # both are waiting for live writes now
        await store.put("/c", b"live")
        for task in live:
            assert await task == [[Event("PUT", "/c", b"live", 4, None)]]

    run(open_store, scenario)


def test_watch_from_a_middle_or_future_revision(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        for i in range(10):
            await store.put(f"/k{i}", b"v")
        assert revisions(await take(store.watch("/", 6), 10)) == [6, 7, 8, 9, 10]
        future = asyncio.create_task(take(store.watch("/", 13), 14))
        for i in range(4):
            await store.put(f"/late{i}", b"v")
            await asyncio.sleep(0)
        assert revisions(await future) == [13, 14]

    run(open_store, scenario)


def test_watch_sees_only_its_prefix(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        await store.put("/ab", b"x")
        await store.txn([("/a/1", b"1"), ("/b/1", b"1")])
        live = asyncio.create_task(take(store.watch("/a/", 0), 4))
        await asyncio.sleep(0)
        await store.put("/b/2", b"2")
        await store.put("/a/2", b"2")
        batches = await live
        assert [[(e.key, e.revision) for e in batch] for batch in batches] == [
            [("/a/1", 2)],
            [("/a/2", 4)],
        ]

    run(open_store, scenario)


def test_watch_with_a_concurrent_writer_gets_each_revision_once_in_order(
    open_store: OpenStore,
) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        store.replay_chunk = 7  # many replay steps, each a chance for the writer to interleave

        async def writer() -> None:
            for i in range(500):
                await store.put(f"/svc/{i % 37}", str(i).encode())
                await asyncio.sleep(0)

        async def watcher(start: int) -> list[int]:
            seen = []
            async with asyncio.timeout(5):
                async for batch in store.watch("/svc/", start):
                    seen.append(batch[0].revision)
                    if len(seen) % 3 == 0:  # let the writer run mid-replay, yet catch up
                        await asyncio.sleep(0)
                    if seen[-1] == 500:
                        return seen
            raise AssertionError("watch ended early")

        writing = asyncio.create_task(writer())
        while await store.revision() < 250:
            await asyncio.sleep(0)
        middle = await store.revision() + 1
        from_start, from_middle = await asyncio.gather(watcher(1), watcher(middle))
        await writing
        assert from_start == list(range(1, 501))
        assert from_middle == list(range(middle, 501))

    run(open_store, scenario)


def test_compacted_history_raises_compacted(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        for i in range(10):
            await store.put("/k", str(i).encode())
        await store.compact(6)
        with pytest.raises(Compacted) as info:
            await anext(store.watch("/", 5))
        assert info.value.revision == 6
        assert revisions(await take(store.watch("/", 6), 10)) == [6, 7, 8, 9, 10]
        await store.compact(3)  # already forgotten: nothing to do
        with pytest.raises(StoreError, match="at 10"):
            await store.compact(11)
        assert (await store.get("/k")) == KeyValue("/k", b"9", 1, 10, 10)  # keys are kept

    run(open_store, scenario)


def test_history_is_compacted_automatically(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        for i in range(100):
            await store.put(f"/k{i}", b"v")
        with pytest.raises(Compacted) as info:
            await anext(store.watch("/", 1))
        assert info.value.revision == 100 - 20 + 1  # the last 20 revisions are kept
        assert len(await take(store.watch("/", 81), 100)) == 20

    run(open_store, scenario, history=20)


def test_a_slow_watcher_is_ended_and_never_blocks_the_writer(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        slow = asyncio.create_task(take(store.watch("/", 1), 1_000))
        await asyncio.sleep(0)  # subscribed, then never scheduled while the writer runs
        for i in range(100):
            await store.put(f"/k{i}", b"v")
        assert await store.revision() == 100
        with pytest.raises(StoreError, match="fell behind"):
            await slow
        assert revisions(await take(store.watch("/", 95), 100)) == [95, 96, 97, 98, 99, 100]

    run(open_store, scenario, watch_queue=10)


def test_closing_the_store_ends_its_watchers(open_store: OpenStore) -> None:
    async def scenario(store: EmbeddedStore) -> None:
        await store.put("/k", b"1")
        live = asyncio.create_task(take(store.watch("/", 1), 1_000))
        await asyncio.sleep(0)
        await store.put("/k", b"2")
        await store.aclose()
        assert revisions(await live) == [1, 2]
        with pytest.raises(StoreError, match="closed"):
            await store.get("/k")
        with pytest.raises(StoreError, match="closed"):
            await anext(store.watch("/", 1))
        await store.aclose()  # idempotent

    run(open_store, scenario)


def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "store.db"

    async def main() -> None:
        async with await SqliteStore.open(path, history=20) as store:
            for i in range(30):
                await store.put(f"/k/{i % 3}", str(i).encode())
            await store.delete("/k/0")
            await store.compact(25)
        async with await SqliteStore.open(path, history=20) as store:
            assert await store.revision() == 31
            kvs, revision = await store.range("/k/")
            assert [(kv.key, kv.value, kv.version) for kv in kvs] == [
                ("/k/1", b"28", 10),
                ("/k/2", b"29", 10),
            ]
            assert revision == 31
            with pytest.raises(Compacted):
                await anext(store.watch("/", 24))
            history = await take(store.watch("/", 25), 31)
            assert revisions(history) == [25, 26, 27, 28, 29, 30, 31]
            assert history[-1] == [Event("DELETE", "/k/0", b"", 31, b"27")]
            assert await store.put("/k/0", b"back") == 32

    asyncio.run(main())


def test_sqlite_store_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    path.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(StoreError, match="store.db"):
        asyncio.run(SqliteStore.open(path))
