"""The CLI config: flags over environment over file over the default; the file is private."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from plait.cli.settings import (
    DEFAULT_SERVER,
    CliSettings,
    SettingsError,
    config_path,
    load_cli_settings,
    save_cli_settings,
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("PLAIT_CONFIG", "PLAIT_SERVER", "PLAIT_TOKEN", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_defaults_without_a_file() -> None:
    assert config_path() == Path.home() / ".config" / "plait" / "config.json"
    assert load_cli_settings() == CliSettings(DEFAULT_SERVER, None)


def test_saved_settings_are_private_and_used(tmp_path: Path) -> None:
    path = save_cli_settings("http://127.0.0.1:4000", "tok")
    assert path == config_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"server": "http://127.0.0.1:4000", "token": "tok"}
    assert load_cli_settings() == CliSettings("http://127.0.0.1:4000", "tok")
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temporary left


def test_environment_overrides_the_file_and_flags_override_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PLAIT_CONFIG", str(tmp_path / "c.json"))
    save_cli_settings("http://file:1", "file-token")
    monkeypatch.setenv("PLAIT_SERVER", "http://env:2/")
    monkeypatch.setenv("PLAIT_TOKEN", "env-token")
    assert load_cli_settings() == CliSettings("http://env:2", "env-token")
    assert load_cli_settings("http://flag:3", "flag-token") == CliSettings(
        "http://flag:3", "flag-token"
    )


def test_xdg_config_home_is_respected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path() == tmp_path / "xdg" / "plait" / "config.json"


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_a_broken_file_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str
) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    monkeypatch.setenv("PLAIT_CONFIG", str(path))
    with pytest.raises(SettingsError, match=str(path)):
        load_cli_settings()
