"""The admin token that guards writes to the config API.

Created at the control plane's first start (`secrets.token_urlsafe(32)`: 256 random bits) in
`<data_dir>/admin-token` with mode 0600, written atomically so that two control planes starting
at once agree on one token, and re-read at every later start. A token file that group or others
can read is refused rather than used: the token is the only thing between them and the mesh.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
from pathlib import Path

__all__ = ["TOKEN_FILE", "TokenError", "check_token", "load_or_create_token"]

TOKEN_FILE = "admin-token"


class TokenError(Exception):
    """The token file is unusable (unsafe permissions, empty, unreadable); the message says why."""


def load_or_create_token(data_dir: str | os.PathLike[str]) -> str:
    """The admin token of this data directory, created on first use."""
    directory = Path(data_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / TOKEN_FILE
    if not path.exists():
        _create(path, secrets.token_urlsafe(32))
    return _read(path)


def _create(path: Path, token: str) -> None:
    """Write the token to a private temporary file, then link it into place.

    `os.link` fails if the file exists, so when two processes race, the first one's token wins
    and the second reads it; a crash never leaves a half-written token file behind.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another process won the race
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenError(
                f"{path}: the admin token file is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}` or delete it "
                "to create a new token"
            )
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenError(f"{path}: cannot read the admin token: {e}") from None
    if not token:
        raise TokenError(f"{path}: the admin token file is empty; delete it to create a new one")
    return token


def check_token(presented: str | None, token: str) -> bool:
    """Whether `presented` is the admin token, in time independent of where they differ."""
    if presented is None:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "replace"), token.encode("utf-8"))
