"""Store benchmark: puts/s, and range and get times over 10,000 keys, for each embedded store.

It prints figures; it asserts nothing. Run: `python -m bench.store_bench [--keys N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from plait.control.store import EmbeddedStore, MemoryStore
from plait.control.store_sqlite import SqliteStore

VALUE = b'{"kind": "Workload", "spec": {"address": "10.0.0.1", "port": 9080}}' * 4  # ~280 B


async def measure(name: str, store: EmbeddedStore, keys: int) -> None:
    """Print one line of figures for store, then close it."""
    async with store:
        start = time.perf_counter()
        for i in range(keys):
            await store.put(f"/registry/workloads/default/w{i:06d}", VALUE)
        puts = keys / (time.perf_counter() - start)

        start = time.perf_counter()
        kvs, _ = await store.range("/registry/workloads/")
        range_ms = (time.perf_counter() - start) * 1e3
        assert len(kvs) == keys

        start = time.perf_counter()
        for i in range(1_000):
            await store.get(f"/registry/workloads/default/w{i:06d}")
        get_us = (time.perf_counter() - start) * 1e3  # 1,000 gets: ms total = us each

        start = time.perf_counter()
        await store.txn([(f"/registry/batch/{i}", VALUE) for i in range(1_000)])
        txn_ms = (time.perf_counter() - start) * 1e3

    print(
        f"{name:<8} {puts:>9,.0f} puts/s   range of {keys:,} keys {range_ms:6.1f} ms   "
        f"get {get_us:5.1f} us   txn of 1,000 puts {txn_ms:5.1f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()
    await measure("memory", MemoryStore(), args.keys)
    with tempfile.TemporaryDirectory() as tmp:
        await measure("sqlite", await SqliteStore.open(Path(tmp) / "store.db"), args.keys)


if __name__ == "__main__":
    asyncio.run(main())
