"""The registry's grace periods: an entry survives a disconnect (or a control-plane restart)
while its proxy may still come back, and goes when it does not."""

from __future__ import annotations

import asyncio

import pytest

from plait.control import registry as registry_module
from plait.control.registry import Registry, WorkloadEntry
from plait.control.store import MemoryStore

ENTRY = WorkloadEntry("web-0", "web", "default", {"app": "web"}, "127.0.0.1", 15006)


async def _keys(store: MemoryStore) -> list[str]:
    items, _ = await store.range(registry_module.PREFIX)
    return [kv.key for kv in items]


def test_after_a_restart_entries_wait_for_a_proxy_in_reconnect_back_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_module, "RECONNECT_BACKOFF_MAX", 0.3)

    async def scenario() -> None:
        async with MemoryStore() as store:
            await Registry(store, grace=0.1).register(ENTRY)
            restarted = Registry(store, grace=0.1)
            await restarted.load()
            await asyncio.sleep(0.2)  # past the grace, inside grace + back-off: still there
            assert await _keys(store) == [ENTRY.key]
            await asyncio.sleep(0.4)  # nobody came back: gone
            assert await _keys(store) == []
            await restarted.aclose()

    asyncio.run(scenario())


def test_a_reconnect_within_the_grace_keeps_the_entry() -> None:
    async def scenario() -> None:
        async with MemoryStore() as store:
            reg = Registry(store, grace=0.1)
            await reg.register(ENTRY)
            reg.disconnected("default", "web-0")
            await asyncio.sleep(0.05)
            await reg.register(ENTRY)
            await asyncio.sleep(0.15)
            assert await _keys(store) == [ENTRY.key]
            reg.disconnected("default", "web-0")
            await asyncio.sleep(0.2)
            assert await _keys(store) == []
            await reg.aclose()

    asyncio.run(scenario())
