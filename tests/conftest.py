"""Tests marked `python_core` drive the data path with fakes or monkeypatching (a recorder in
place of a Stream, a patched method), which the compiled data path refuses: its classes are
native and check their attributes' types (plait.native_core). Where that build is in use they
are skipped here, and `make test` runs them in a second pass on the Python source
(PLAIT_PURE_PYTHON=1); every other test runs against the build."""

from __future__ import annotations

import pytest

from plait import native_core


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "python_core: uses fakes the compiled data path refuses (see tests/conftest.py)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not native_core.active():
        return
    skip = pytest.mark.skip(reason="fakes in the data path: runs with PLAIT_PURE_PYTHON=1")
    for item in items:
        if item.get_closest_marker("python_core"):
            item.add_marker(skip)
