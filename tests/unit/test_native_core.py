"""The compiled data path (plait.native_core): used exactly when a build of the current
sources exists, and never in place of an edited source."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plait import native_core

_WHERE = "import plait.proxy.downstream as d, plait.native_core as n; print(n.active(), d.__file__)"


def _run(env: dict[str, str]) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _WHERE],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    active, path = done.stdout.split()
    return active, path


def test_this_test_run_uses_the_build_when_there_is_one() -> None:
    # `make test` builds the core first: the suite then exercises the compiled classes.
    if not native_core.current():
        pytest.skip("no current build (no C compiler?): the data path runs as Python")
    active, path = _run({"PLAIT_PURE_PYTHON": ""})
    assert active == "True"
    assert Path(path).parent == native_core.DIRECTORY and path.endswith(".so")


def test_plait_pure_python_runs_the_source() -> None:
    active, path = _run({"PLAIT_PURE_PYTHON": "1"})
    assert active == "False" and path.endswith("downstream.py")


def test_a_build_of_other_sources_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = tmp_path / "SOURCES.sha256"
    monkeypatch.setattr(native_core, "MANIFEST", manifest)
    assert not native_core.current()  # no build at all
    manifest.write_text("0" * 64 + "\n")
    assert not native_core.current()  # built from other sources (an edit since)
    manifest.write_text(native_core.digest() + "\n")
    assert native_core.current()


def test_the_digest_covers_every_core_module_by_name() -> None:
    assert [p.name for p in native_core.sources()] == [
        name.rpartition(".")[2] + ".py" for name in native_core.CORE
    ]
    assert all(path.exists() for path in native_core.sources())
