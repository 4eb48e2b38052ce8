"""Where the CLI finds the control plane and its admin token, so commands need no flags.

Precedence, highest first: `--server` / `--token` flags, `PLAIT_SERVER` / `PLAIT_TOKEN`, the
config file (`$PLAIT_CONFIG`, else `$XDG_CONFIG_HOME/plait/config.json`, else
`~/.config/plait/config.json`), then the default server. `plait up` and `plait control` call
`save_cli_settings` so that the CLI points at them. Stdlib only.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_SERVER",
    "CliSettings",
    "SettingsError",
    "config_path",
    "load_cli_settings",
    "save_cli_settings",
]

DEFAULT_SERVER = "http://127.0.0.1:15014"  # Istio's control-plane monitoring port number


class SettingsError(Exception):
    """The config file exists but cannot be used; the message names it."""


@dataclass(frozen=True)
class CliSettings:
    server: str
    token: str | None


def config_path() -> Path:
    """The CLI config file's path (it need not exist)."""
    explicit = os.environ.get("PLAIT_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "plait" / "config.json"


def load_cli_settings(server: str | None = None, token: str | None = None) -> CliSettings:
    """The settings in force: the arguments (flags) over the environment over the file."""
    saved = _read(config_path())
    return CliSettings(
        server=(server or os.environ.get("PLAIT_SERVER") or _str(saved, "server") or DEFAULT_SERVER)
        .strip()
        .rstrip("/"),
        token=token or os.environ.get("PLAIT_TOKEN") or _str(saved, "token"),
    )


def save_cli_settings(server: str, token: str, path: Path | None = None) -> Path:
    """Point the CLI at a control plane: write the file atomically, readable by its owner only."""
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = json.dumps({"server": server, "token": token}, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise SettingsError(f"{path}: cannot read the CLI config: {e.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise SettingsError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise SettingsError(f'{path}: expected an object like {{"server": ..., "token": ...}}')
    return data


def _str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None
